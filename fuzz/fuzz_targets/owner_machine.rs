//! An `Owner` (small geometry, arbitrary known hashes, arbitrary starting generation) fed
//! fuzzer-chosen frames from the replica side — STATE, HASHES, ACK, FETCH, FETCH_PART (byte ranges
//! inside, just past or far past the chunk), HANDOFF_ACK, ERROR, garbage bytes, and frames an owner
//! never accepts (PART, HANDOFF plain or POSTCOPY and STALE among them) — interleaved with
//! `on_dirty`, `mark_dirty`, `restart`, `begin_handoff`, `begin_postcopy`, `finish`, writes to the
//! owner's memory, hash scans and `poll_transmit` calls (a `Transmit::Chunk` is answered with
//! `encode_chunk` on the chunk's current bytes).
//!
//! Input: setup (chunk count, last chunk's length, memory fill, known hashes, starting generation,
//! durable/epoch bits), then ops, one byte each (mod 16) followed by its arguments: 0–3 a frame
//! from the replica, 4 raw length-prefixed bytes, 5 `on_dirty`, 6 `mark_dirty`, 7 `restart`,
//! 8 `begin_handoff`, 9–10 a few `poll_transmit`s, 11 a memory write, 12 a hash scan, 13 poll
//! until idle, 14 `begin_postcopy`, 15 then an odd byte `accept_postcopy_resume`, an even one
//! `finish` (the replica ended the stream).
//!
//! The harness keeps a model of spec/PROTOCOL.md §8.1 (STATE with the wrong chunk count is
//! BAD_GEOMETRY and changes nothing; STATE without DURABLE is NOT_DURABLE when the owner requires
//! durable ACKs, §8.4, and changes nothing either; STATE claiming generation 2^64 − 1 is PROTOCOL_VIOLATION;
//! otherwise it sets `acked` and the stream's `committed` to the replica's generation and raises G
//! to it; an owner whose G is above the replica's closes a round even when nothing is pending,
//! sending rule 4; `Owner::new` refuses G = 2^64 − 1) and checks every step against it:
//! - each `handle` outcome (event, or error code) is the predicted one: geometry checks (§5.14)
//!   first, then the §8.1 table (BAD_GEOMETRY for a wrong STATE chunk count, PROTOCOL_VIOLATION
//!   for HASHES out of order, an ACK outside `acked < g ≤ committed` where `committed` is the
//!   last generation whose COMMIT was sent on this stream, a wrong HANDOFF_ACK, and every frame
//!   not in the table); a FETCH_PART is, once its range passed the geometry check, exactly an
//!   urgent FETCH of its one chunk (§5.18);
//! - each `poll_transmit` is the predicted one (sending rules 1–4: OPEN first on a stream, fetched
//!   chunks urgent-first in FIFO order, none already sent on the stream — a FETCH of such a chunk
//!   queues nothing and a queued entry for one is dropped —, the lowest pending chunk of the round,
//!   COMMIT with the count and xxh3 summary recomputed here, HANDOFF when drained);
//! - `encode_chunk` produces a CHUNK header that decodes (with its payload) to the right index,
//!   flags and wire hash (ZERO exactly for all-zero bytes) and records the hash in `known`;
//! - and the listed invariants: `Transmit::Chunk` indices < chunk_count; every `Transmit::Frame`
//!   decodes; COMMIT generations strictly increase within a stream (and across streams);
//!   `acked() ≤ generation()`; `is_synced()` implies `backlog() == 0`; state(), generation(),
//!   acked(), backlog(), is_synced() and known_hashes() match the model.
//!
//! `restart` after HANDOFF went out is a probe (§8.6: state Probing, OPEN queued), which an ERROR
//! HANDED_OVER answers with HandedOff and a STATE like Opening's; it is refused once handed off.
//!
//! Post-copy handoffs (§8.10, design notes/postcopy-design.md): `begin_postcopy` is `begin_handoff`
//! (Streaming → Draining, else PROTOCOL_VIOLATION) with the post-copy flag set (`is_postcopy()`;
//! `begin_handoff` clears it). A post-copy Draining sends fetched chunks as usual but no round
//! chunk: a round in progress is cut and committed as far as it was sent (its unsent chunks back to
//! pending, COMMIT{G, count so far, summary so far}); else a commit still owed is made empty
//! (COMMIT{G+1, 0, xxh3 of nothing}); else, once ACK{G} came, one STALE per maximal run of pending
//! chunks at or after a cursor, in increasing order, then HANDOFF{G, POSTCOPY}. In HandingOff
//! (plain or post-copy) a FETCH or FETCH_PART that crossed HANDOFF is ignored (event None, nothing
//! queued). HANDOFF_ACK{G} then leads to Serving{G} (event HandedOff; the stream's sent-chunk set
//! and the fetch queues are emptied), where FETCH / FETCH_PART are queued as in Streaming and only
//! fetched chunks go out; ACK, STATE and the rest are PROTOCOL_VIOLATION. `finish()` is Some(G) and
//! HandedOff in Serving{G}, None (no change) elsewhere. `restart` from Serving{G} probes
//! (Probing{G}); there HANDOFF_ACK{G} resumes Serving{G} when the handoff was post-copy and is
//! PROTOCOL_VIOLATION otherwise. `accept_postcopy_resume` (Opening only, else INTERNAL; sets the
//! post-copy flag) lets a HANDOFF_ACK{g} answer that stream's OPEN (a restart withdraws it):
//! Serving{g}; without it a HANDOFF_ACK in Opening is PROTOCOL_VIOLATION (also after a post-copy
//! Draining whose stream broke before HANDOFF went out: nothing was offered). Safety check (§8.10
//! step 3): at HANDOFF{POSTCOPY} every pending chunk was named by a STALE on this stream after it
//! was last sent — unless the input reported changes after a STALE went out, which §8.10 step 1
//! rules out (the STALE cursor then skips chunks below it: see README, "Not findings").
//!
//! After an error or a PeerError the stream is dead: the harness restarts the owner (a new
//! stream), or stops if it may not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::{decode_exact, model, Input};
use memsync_protocol::hash::{chunk_hash, scan_changes};
use memsync_protocol::owner::MAX_GENERATION;
use memsync_protocol::wire::{ErrorCode, Frame, HashList, Hello, MAX_BODY};
use memsync_protocol::{DirtySet, Geometry, Owner, OwnerEvent, OwnerState, Transmit};
use std::collections::VecDeque;
use xxhash_rust::xxh3::xxh3_64;

const NAME: &str = "owned.mem";

/// What the model expects `poll_transmit` to return.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Open(u64),
    Chunk {
        index: u64,
        fetched: bool,
    },
    Commit {
        generation: u64,
        count: u32,
        summary: u64,
    },
    Handoff {
        generation: u64,
        postcopy: bool,
    },
    Stale {
        first: u64,
        count: u32,
    },
}

struct Harness {
    owner: Owner,
    geom: Geometry,
    mem: Vec<u8>,
    /// xxh3 of each chunk of `mem`, kept current on every write (hashing is most of the cost).
    mem_hashes: Vec<u64>,
    // The model.
    n: u64,
    known: Vec<u64>,
    pending: Vec<bool>,
    round: Vec<bool>,
    in_round: bool,
    needs_commit: bool,
    cursor: u64,
    records: Vec<u8>,
    count: u32,
    g: u64,
    acked: u64,
    /// The stream's `committed` (§8.1): the last generation whose COMMIT went out on this stream,
    /// initially the replica's STATE generation.
    committed: u64,
    state: OwnerState,
    /// OPEN queued by `new`/`restart`, with the generation it carries (G when it was queued).
    open_queued: Option<u64>,
    urgent: VecDeque<u64>,
    background: VecDeque<u64>,
    /// Chunks sent (any CHUNK) on this stream since it opened: a FETCH of one is answered by the
    /// copy in flight, so it is neither queued nor, if queued before it went out, sent again.
    on_stream: Vec<bool>,
    /// Whether a STATE without DURABLE is refused (§8.4), and whether the last STATE had it.
    require_durable: bool,
    durable: bool,
    /// The ownership epoch OPEN carries; a STATE must echo it (§8.8).
    epoch: Option<u64>,
    /// The handoff asked for is a post-copy one (§8.10): set by `begin_postcopy`, cleared by
    /// `begin_handoff`, kept across restarts (a probe's HANDOFF_ACK resumes Serving only then).
    postcopy: bool,
    /// In a post-copy Draining, the first chunk not yet considered for STALE (a cursor).
    stale_cursor: u64,
    /// `accept_postcopy_resume` was called in this stream's Opening: its OPEN may be answered
    /// HANDOFF_ACK by a new owner still fetching (§8.10, a restarted old owner). Only then is
    /// HANDOFF_ACK accepted in Opening; a restart clears it.
    resume_ok: bool,
    // Invariant tracking.
    /// Chunks named by a STALE on this stream and not sent since: at HANDOFF{POSTCOPY} every
    /// pending chunk must be one (else the new owner keeps an older copy, §8.10 safety).
    stale_named: Vec<bool>,
    /// The caller reported changes (`on_dirty`, `mark_dirty`, a scan) that made a chunk pending
    /// after a STALE went out in this post-copy Draining. §8.10 step 1 forbids it (writers are
    /// stopped and their last changes reported before the drain); the owner then leaves such a
    /// chunk out of STALE when it lies before the cursor, so the safety check is skipped.
    reported_after_stale: bool,
    last_commit_stream: Option<u64>,
    last_commit_ever: Option<u64>,
    /// Set when the input reached a known, reported bug and the harness stops (skip mode only).
    dead: bool,
}

impl Harness {
    fn check(&self) {
        let o = &self.owner;
        assert_eq!(o.state(), self.state);
        assert_eq!(o.generation(), self.g);
        assert_eq!(o.durable(), self.durable);
        assert_eq!(o.acked(), self.acked);
        assert!(o.acked() <= o.generation(), "acked above generation");
        let backlog = (self.pending.iter().filter(|x| **x).count()
            + self.round.iter().filter(|x| **x).count()) as u64;
        assert_eq!(o.backlog(), backlog);
        let synced = self.state == OwnerState::Streaming
            && !self.in_round
            && !self.pending.contains(&true)
            && self.acked == self.g
            && self.urgent.is_empty()
            && self.background.is_empty();
        assert_eq!(o.is_synced(), synced);
        if o.is_synced() {
            assert_eq!(o.backlog(), 0, "synced with a backlog");
        }
        assert_eq!(o.known_hashes(), &self.known[..]);
        assert_eq!(o.is_postcopy(), self.postcopy);
    }

    /// Restarts on a new stream; false when the owner may not (it handed off).
    fn restart(&mut self) -> bool {
        let r = self.owner.restart();
        let next = match self.state {
            OwnerState::HandedOff => {
                assert_eq!(r.unwrap_err().code, ErrorCode::ProtocolViolation);
                self.check();
                return false;
            }
            OwnerState::HandingOff { generation }
            | OwnerState::Probing { generation }
            | OwnerState::Serving { generation } => OwnerState::Probing { generation },
            _ => OwnerState::Opening,
        };
        r.expect("restart");
        for i in 0..self.n as usize {
            self.pending[i] |= self.round[i];
            self.round[i] = false;
        }
        self.in_round = false;
        self.needs_commit = false;
        self.cursor = 0;
        self.records.clear();
        self.count = 0;
        self.acked = self.g;
        self.committed = self.g;
        self.urgent.clear();
        self.background.clear();
        self.on_stream.fill(false);
        self.stale_cursor = 0;
        self.stale_named.fill(false);
        self.reported_after_stale = false;
        self.resume_ok = false;
        self.state = next;
        self.open_queued = Some(self.g);
        self.last_commit_stream = None;
        self.check();
        true
    }

    /// Predicts and applies `handle`; returns the expected outcome.
    fn model_handle(&mut self, frame: &Frame<'_>, bytes: &[u8]) -> Result<OwnerEvent, ErrorCode> {
        use OwnerState::*;
        model::geometry_check(bytes, self.geom.size(), self.geom.shift())?;
        let pv = Err(ErrorCode::ProtocolViolation);
        // §5.18: for the region stream a FETCH_PART is FETCH{index, 1} with URGENT, in any state.
        let frame = match *frame {
            Frame::FetchPart { index, .. } => Frame::Fetch {
                first: index,
                count: 1,
                urgent: true,
            },
            f => f,
        };
        match (frame, self.state) {
            (Frame::Error { code, .. }, Probing { generation })
                if code == ErrorCode::HandedOver as u32 =>
            {
                self.state = HandedOff;
                Ok(OwnerEvent::HandedOff { generation })
            }
            // §8.10 recovery: the new owner still fetches after a post-copy handoff; only a
            // probe of a post-copy HANDOFF may be answered so.
            (Frame::HandoffAck { generation: g }, Probing { generation })
                if self.postcopy && g == generation =>
            {
                self.serve(generation);
                Ok(OwnerEvent::HandedOff { generation })
            }
            // A restarted old owner that allowed it (`accept_postcopy_resume`): the new owner
            // answers its OPEN as a probe, at the generation it took the region over at.
            (Frame::HandoffAck { generation }, Opening) if self.resume_ok => {
                self.serve(generation);
                Ok(OwnerEvent::HandedOff { generation })
            }
            (Frame::Error { code, reason }, _) => Ok(OwnerEvent::PeerError {
                code,
                reason: reason.to_owned(),
            }),
            (
                Frame::State {
                    empty,
                    durable,
                    generation,
                    chunk_count,
                    epoch,
                    ..
                },
                Opening | Probing { .. },
            ) => {
                if !empty && chunk_count != self.n {
                    return Err(ErrorCode::BadGeometry);
                }
                if epoch != self.epoch {
                    return pv;
                }
                if self.require_durable && !durable {
                    return Err(ErrorCode::NotDurable);
                }
                self.durable = durable;
                if generation >= MAX_GENERATION {
                    // §8.4: no round could follow a generation at the limit.
                    return pv;
                }
                self.g = self.g.max(generation);
                self.acked = generation;
                self.committed = generation;
                self.needs_commit = true;
                if empty {
                    let before = self.pending.iter().filter(|x| **x).count() as u64;
                    self.pending.fill(true);
                    self.state = Streaming;
                    Ok(OwnerEvent::Reconciled {
                        differing: self.n - before,
                        replica_generation: generation,
                    })
                } else {
                    self.state = Reconciling {
                        next: 0,
                        replica_generation: generation,
                    };
                    Ok(OwnerEvent::None)
                }
            }
            (
                Frame::Hashes { first, hashes },
                Reconciling {
                    next,
                    replica_generation,
                },
            ) => {
                if first != next {
                    return pv;
                }
                for (i, h) in (first..).zip(hashes.iter()) {
                    if self.known[i as usize] != h {
                        self.pending[i as usize] = true;
                    }
                }
                let next = first + hashes.len() as u64;
                if next == self.n {
                    self.state = Streaming;
                    Ok(OwnerEvent::Reconciled {
                        differing: self.pending.iter().filter(|x| **x).count() as u64,
                        replica_generation,
                    })
                } else {
                    self.state = Reconciling {
                        next,
                        replica_generation,
                    };
                    Ok(OwnerEvent::None)
                }
            }
            (Frame::Ack { generation }, Streaming | Draining | HandingOff { .. }) => {
                if generation <= self.acked || generation > self.committed {
                    return pv;
                }
                self.acked = generation;
                Ok(OwnerEvent::Acked { generation })
            }
            (
                Frame::Fetch {
                    first,
                    count,
                    urgent,
                },
                Streaming | Draining | Serving { .. },
            ) => {
                let q = if urgent {
                    &mut self.urgent
                } else {
                    &mut self.background
                };
                let room = (self.n as usize).saturating_sub(q.len());
                let on_stream = &self.on_stream;
                q.extend(
                    (first..first + count as u64)
                        .filter(|&i| !on_stream[i as usize])
                        .take(room),
                );
                Ok(OwnerEvent::None)
            }
            // A FETCH (or FETCH_PART) that crossed HANDOFF: ignored (§8.1, MODEL.md finding 3).
            (Frame::Fetch { .. }, HandingOff { .. }) => Ok(OwnerEvent::None),
            (Frame::HandoffAck { generation }, HandingOff { generation: g }) if generation == g => {
                if self.postcopy {
                    self.serve(generation);
                } else {
                    self.state = HandedOff;
                }
                Ok(OwnerEvent::HandedOff { generation })
            }
            _ => pv,
        }
    }

    /// Serving after a post-copy HANDOFF_ACK (§8.10): what went out before answers no FETCH now
    /// (the new owner asks exactly for the chunks whose copies are stale), queues start empty.
    fn serve(&mut self, generation: u64) {
        self.state = OwnerState::Serving { generation };
        self.on_stream.fill(false);
        self.urgent.clear();
        self.background.clear();
    }

    /// Feeds one frame; false when the stream died and the owner may not restart.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let frame = decode_exact(bytes);
        let got = self.owner.handle(&frame);
        memsync_fuzz::trace!("handle {frame:?} in {:?} -> {got:?}", self.state);
        let want = self.model_handle(&frame, bytes);
        match (got, want) {
            (Ok(e), Ok(w)) => {
                assert_eq!(e, w, "{frame:?}");
                self.check();
                if matches!(e, OwnerEvent::PeerError { .. }) {
                    return self.restart();
                }
                true
            }
            (Err(e), Err(code)) => {
                assert_eq!(e.code, code, "{frame:?}: {e}");
                self.check();
                self.restart()
            }
            (got, want) => panic!(
                "{frame:?} in {:?}: owner {got:?}, model {want:?}",
                self.state
            ),
        }
    }

    fn model_poll(&mut self) -> Option<Next> {
        use OwnerState::*;
        if let Some(g) = self.open_queued.take() {
            return Some(Next::Open(g));
        }
        // Fetched chunks go out in Serving too (§8.10), and nothing else does.
        if !matches!(self.state, Streaming | Draining | Serving { .. }) {
            return None;
        }
        while let Some(index) = self
            .urgent
            .pop_front()
            .or_else(|| self.background.pop_front())
        {
            if self.on_stream[index as usize] {
                continue;
            }
            return Some(Next::Chunk {
                index,
                fetched: true,
            });
        }
        if !matches!(self.state, Streaming | Draining) {
            return None;
        }
        if self.postcopy && self.state == Draining {
            return self.model_postcopy_drain();
        }
        if !self.in_round
            && (self.pending.contains(&true) || self.needs_commit)
            && self.g < MAX_GENERATION
        {
            std::mem::swap(&mut self.round, &mut self.pending);
            self.pending.fill(false);
            self.in_round = true;
            self.needs_commit = false;
            self.cursor = 0;
            self.g += 1; // below MAX_GENERATION, checked above
            self.records.clear();
            self.count = 0;
        }
        if self.in_round {
            if let Some(i) = (self.cursor..self.n).find(|&i| self.round[i as usize]) {
                self.cursor = i + 1;
                return Some(Next::Chunk {
                    index: i,
                    fetched: false,
                });
            }
            self.in_round = false;
            return Some(Next::Commit {
                generation: self.g,
                count: self.count,
                summary: xxh3_64(&self.records),
            });
        }
        if self.state == Draining && self.acked == self.g {
            self.state = HandingOff { generation: self.g };
            return Some(Next::Handoff {
                generation: self.g,
                postcopy: false,
            });
        }
        None
    }

    /// §8.10, a post-copy Draining: no round chunk goes out. (1) A round in progress is cut: its
    /// unsent chunks go back to pending and COMMIT{G} names what was sent; (2) else a commit still
    /// owed is an empty round COMMIT{G+1, 0, xxh3("")}; (3) else, once G is acknowledged, one
    /// STALE per maximal run of pending chunks from the cursor on, in increasing order, then
    /// HANDOFF{G, POSTCOPY}.
    fn model_postcopy_drain(&mut self) -> Option<Next> {
        if self.in_round {
            for i in 0..self.n as usize {
                self.pending[i] |= self.round[i];
                self.round[i] = false;
            }
            self.in_round = false;
            return Some(Next::Commit {
                generation: self.g,
                count: self.count,
                summary: xxh3_64(&self.records),
            });
        }
        if self.needs_commit && self.g < MAX_GENERATION {
            self.needs_commit = false;
            self.g += 1;
            self.records.clear();
            self.count = 0;
            return Some(Next::Commit {
                generation: self.g,
                count: 0,
                summary: xxh3_64(&[]),
            });
        }
        if self.acked != self.g {
            return None;
        }
        let start = (self.stale_cursor..self.n)
            .find(|&i| self.pending[i as usize] && (i == 0 || !self.pending[i as usize - 1]));
        if let Some(first) = start {
            let end = (first..self.n)
                .find(|&i| !self.pending[i as usize])
                .unwrap_or(self.n);
            self.stale_cursor = end;
            for i in first..end {
                self.stale_named[i as usize] = true;
            }
            return Some(Next::Stale {
                first,
                count: (end - first) as u32,
            });
        }
        self.state = OwnerState::HandingOff { generation: self.g };
        Some(Next::Handoff {
            generation: self.g,
            postcopy: true,
        })
    }

    /// One `poll_transmit`, checked; false when there was nothing to send.
    fn poll(&mut self) -> bool {
        let t = self.owner.poll_transmit();
        let want = self.model_poll();
        memsync_fuzz::trace!(
            "poll -> {:?} (model {want:?})",
            t.as_ref().map(|t| match t {
                Transmit::Frame(b) => format!("{:?}", decode_exact(b)),
                c => format!("{c:?}"),
            })
        );
        match t {
            None => {
                assert_eq!(want, None);
                self.check();
                false
            }
            Some(Transmit::Frame(bytes)) => {
                let f = decode_exact(&bytes);
                match f {
                    Frame::Open {
                        size,
                        generation,
                        chunk_shift,
                        name,
                        epoch,
                    } => {
                        assert_eq!(want, Some(Next::Open(generation)));
                        assert_eq!(epoch, self.epoch);
                        assert_eq!((size, chunk_shift), (self.geom.size(), self.geom.shift()));
                        assert_eq!(name, NAME);
                    }
                    Frame::Commit {
                        generation,
                        count,
                        summary,
                    } => {
                        assert_eq!(
                            want,
                            Some(Next::Commit {
                                generation,
                                count,
                                summary
                            }),
                            "COMMIT differs from the model"
                        );
                        if let Some(l) = self.last_commit_stream {
                            assert!(generation > l, "COMMIT generations not increasing");
                        }
                        if let Some(l) = self.last_commit_ever {
                            assert!(generation > l, "COMMIT generation reused");
                        }
                        self.last_commit_stream = Some(generation);
                        self.last_commit_ever = Some(generation);
                        self.committed = generation;
                    }
                    Frame::Handoff {
                        generation,
                        postcopy,
                    } => {
                        assert_eq!(
                            want,
                            Some(Next::Handoff {
                                generation,
                                postcopy
                            })
                        );
                        assert_eq!(
                            generation, self.acked,
                            "HANDOFF of an unacknowledged generation"
                        );
                        if postcopy && !self.reported_after_stale {
                            // §8.10 safety: the replica takes ownership holding, for every chunk
                            // not named STALE since it was last sent, the owner's frozen bytes.
                            for i in 0..self.n as usize {
                                assert!(
                                    !self.pending[i] || self.stale_named[i],
                                    "HANDOFF{{POSTCOPY}} with chunk {i} pending and not named STALE"
                                );
                            }
                        }
                    }
                    Frame::Stale { first, count } => {
                        assert_eq!(want, Some(Next::Stale { first, count }));
                        assert!(count >= 1 && first + count as u64 <= self.n);
                    }
                    f => panic!("the owner sent {f:?}"),
                }
                self.check();
                true
            }
            Some(Transmit::Chunk { index, fetched }) => {
                assert!(index < self.n, "chunk index {index} out of range");
                assert_eq!(want, Some(Next::Chunk { index, fetched }));
                let data = self.mem[self.geom.range(index)].to_vec();
                let (hdr, with_payload) = self.owner.encode_chunk(index, fetched, &data);
                let h = self.mem_hashes[index as usize];
                let zero = data.iter().all(|b| *b == 0);
                let wire_hash = if zero { 0 } else { h };
                assert_eq!(with_payload, !zero);
                let mut f = hdr.to_vec();
                if with_payload {
                    f.extend_from_slice(&data);
                }
                assert_eq!(
                    decode_exact(&f),
                    Frame::Chunk {
                        index,
                        hash: wire_hash,
                        zero,
                        fetched,
                        payload: if zero { &[] } else { &data },
                    }
                );
                // The model's encode_chunk.
                self.on_stream[index as usize] = true;
                self.stale_named[index as usize] = false;
                self.known[index as usize] = h;
                if fetched {
                    self.pending[index as usize] = false;
                    if self.in_round && index >= self.cursor {
                        self.round[index as usize] = false;
                    }
                    if !self.in_round {
                        self.needs_commit = true;
                    }
                } else {
                    self.round[index as usize] = false;
                    self.records.extend_from_slice(&index.to_le_bytes());
                    self.records.extend_from_slice(&wire_hash.to_le_bytes());
                    self.count = self.count.saturating_add(1);
                }
                self.check();
                true
            }
        }
    }
}

fn frame_from_replica(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let n = h.n;
    match input.u8() % 9 {
        0 => {
            let flags = input.u8();
            let empty = flags & 1 != 0;
            let chunk_count = match (empty, flags >> 1 & 3) {
                (true, _) => 0,
                (false, 0) => input.u64(),
                (false, 1) => n + 1,
                _ => n,
            };
            let generation = match flags >> 3 & 1 {
                0 => input.u8() as u64,
                _ => input.u64(),
            };
            let epoch = match flags >> 4 & 3 {
                0 => None,
                1 => h.epoch,
                2 => Some(h.epoch.unwrap_or(1) + 1),
                _ => Some(1),
            };
            Frame::State {
                empty,
                lazy: flags & 0x40 != 0,
                durable: flags & 0x80 != 0,
                generation,
                chunk_count,
                epoch,
            }
            .to_vec()
        }
        1 => {
            let first = match (input.u8() & 3, h.state) {
                (0, _) => input.below(n + 2),
                (1, _) => input.u64(),
                (_, OwnerState::Reconciling { next, .. }) => next,
                _ => 0,
            };
            let k = 1 + input.below(24);
            let mode = input.u8();
            let hs: Vec<u64> = (0..k)
                .map(|j| {
                    let i = first.wrapping_add(j);
                    match (mode >> (j % 4 * 2)) & 3 {
                        0 | 1 if i < n => h.known[i as usize],
                        2 if i < n => h.mem_hashes[i as usize],
                        _ => input.u64(),
                    }
                })
                .collect();
            let mut wire = Vec::new();
            HashList::encode_into(&hs, &mut wire);
            Frame::Hashes {
                first,
                hashes: HashList::from_wire(&wire).unwrap(),
            }
            .to_vec()
        }
        2 | 3 => {
            let generation = match input.u8() % 6 {
                0 => h.acked.wrapping_add(1),
                1 => h.committed,
                2 => h.g,
                3 => h.g.wrapping_add(1),
                4 => h.acked,
                _ => input.u64(),
            };
            Frame::Ack { generation }.to_vec()
        }
        4 => {
            let (first, count) = if input.u8() == 0xff {
                (input.u64(), input.u32().max(1))
            } else {
                (input.below(n + 1), 1 + input.below(8) as u32)
            };
            Frame::Fetch {
                first,
                count,
                urgent: input.bool(),
            }
            .to_vec()
        }
        5 => {
            let generation = match (input.bool(), h.state) {
                (
                    true,
                    OwnerState::HandingOff { generation }
                    | OwnerState::Probing { generation }
                    | OwnerState::Serving { generation },
                ) => generation,
                (true, OwnerState::Opening) => h.g,
                _ => input.u64(),
            };
            Frame::HandoffAck { generation }.to_vec()
        }
        6 => Frame::Error {
            // HANDED_OVER often: the answer that settles a probe (§8.6).
            code: if input.bool() {
                ErrorCode::HandedOver as u32
            } else {
                input.u32()
            },
            reason: "replica failed",
        }
        .to_vec(),
        8 => {
            let (index, offset, len) = byte_range(h, input);
            Frame::FetchPart { index, offset, len }.to_vec()
        }
        _ => {
            // Frames an owner never accepts, some of which fail geometry checks first.
            let g = input.u64();
            match input.u8() % 7 {
                0 => Frame::Hello(Hello::default()).to_vec(),
                1 => Frame::Mount { name: NAME }.to_vec(),
                2 => Frame::Open {
                    epoch: None,
                    size: h.geom.size(),
                    generation: g,
                    chunk_shift: h.geom.shift(),
                    name: NAME,
                }
                .to_vec(),
                3 => Frame::Commit {
                    generation: g,
                    count: 0,
                    summary: 0,
                }
                .to_vec(),
                // HANDOFF, plain or POSTCOPY, and STALE: owner-to-replica frames (STALE inside or
                // past the region, which the geometry check refuses first).
                4 => match g & 3 {
                    0 | 1 => Frame::Handoff {
                        generation: g,
                        postcopy: g & 1 != 0,
                    }
                    .to_vec(),
                    2 => Frame::Stale {
                        first: (g >> 8) % n,
                        count: 1 + (g >> 16) as u32 % 4,
                    }
                    .to_vec(),
                    _ => Frame::Stale {
                        first: g >> 2,
                        count: (g >> 32) as u32 | 1,
                    }
                    .to_vec(),
                },
                5 => {
                    let (index, offset, len) = byte_range(h, input);
                    let payload = vec![input.u8() | 1; (len as usize).min(4096)];
                    if payload.len() == len as usize && input.bool() {
                        Frame::Part {
                            index,
                            offset,
                            len,
                            hash: chunk_hash(&payload),
                            zero: false,
                            payload: &payload,
                        }
                        .to_vec()
                    } else {
                        Frame::Part {
                            index,
                            offset,
                            len,
                            hash: 0,
                            zero: true,
                            payload: &[],
                        }
                        .to_vec()
                    }
                }
                _ => {
                    let index = input.below(n + 1);
                    let len = if index < n {
                        h.geom.chunk_len(index)
                    } else {
                        7
                    };
                    let payload = vec![input.u8() | 1; len];
                    Frame::Chunk {
                        index,
                        hash: chunk_hash(&payload),
                        zero: false,
                        fetched: false,
                        payload: &payload,
                    }
                    .to_vec()
                }
            }
        }
    }
}

/// A chunk and a byte range for FETCH_PART or PART (`len ≥ 1`, so the frame encodes validly):
/// mostly inside the chunk, sometimes ending one byte past it, sometimes anything (an index past
/// the region, `offset + len` overflowing u32).
fn byte_range(h: &Harness, input: &mut Input<'_>) -> (u64, u32, u32) {
    let mode = input.u8();
    let index = if mode & 0x80 != 0 {
        input.u64()
    } else {
        input.below(h.n + 1) // n itself is out of range
    };
    let len_of = if index < h.n {
        h.geom.chunk_len(index) as u64
    } else {
        4096
    };
    match mode % 4 {
        0 | 1 => {
            let offset = input.below(len_of);
            (
                index,
                offset as u32,
                1 + input.below(len_of - offset) as u32,
            )
        }
        2 => {
            let offset = input.below(len_of + 1);
            (index, offset as u32, (len_of - offset + 1) as u32)
        }
        _ => (index, input.u32(), input.u32().max(1)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    // Up to 80 chunks, so that dirty sets span two 64-bit words.
    let n = 1 + input.below(80);
    let size = (n - 1) * 4096 + 1 + input.u16() as u64 % 4096;
    let geom = Geometry::new(size, 12).unwrap();
    let seed = input.u8();
    let zero_mask = input.u64();
    let mut mem = vec![0u8; size as usize];
    for i in 0..n {
        if zero_mask >> (i % 64) & 1 == 0 {
            let fill = seed.wrapping_mul(i as u8 + 1) | 1;
            mem[geom.range(i)].fill(fill);
        }
    }
    let mem_hashes: Vec<u64> = (0..n).map(|i| chunk_hash(&mem[geom.range(i)])).collect();
    let known_mode = input.u8();
    let known_seed = input.u64();
    let known: Vec<u64> = (0..n)
        .map(|i| match known_mode % 3 {
            0 => mem_hashes[i as usize],
            1 => known_seed.wrapping_mul(i + 1),
            _ if known_seed >> (i % 64) & 1 == 0 => mem_hashes[i as usize],
            _ => known_seed ^ i,
        })
        .collect();
    let generation = match input.u8() % 4 {
        0 => 0,
        1 => input.u8() as u64,
        2 => input.u64(),
        _ => MAX_GENERATION + 1 - input.u8() as u64,
    };
    // From a bit the known hashes leave unused, so that older inputs keep their meaning.
    let require_durable = known_mode & 0x80 != 0;
    let epoch = (known_mode & 0x40 != 0).then_some(1 + (known_seed >> 60));
    let owner = match Owner::new(geom, NAME, known.clone(), generation) {
        Ok(mut o) => {
            o.set_require_durable(require_durable);
            o.set_epoch(epoch).expect("set_epoch before OPEN went out");
            o
        }
        Err(e) => {
            assert!(generation >= MAX_GENERATION, "{e}");
            assert_eq!(e.code, ErrorCode::ProtocolViolation);
            return;
        }
    };
    assert!(
        generation < MAX_GENERATION,
        "Owner::new accepted generation {generation} at or above MAX_GENERATION"
    );
    let mut h = Harness {
        owner,
        geom,
        mem,
        mem_hashes,
        n,
        known,
        pending: vec![false; n as usize],
        round: vec![false; n as usize],
        in_round: false,
        needs_commit: false,
        cursor: 0,
        records: vec![],
        count: 0,
        g: generation,
        acked: generation,
        committed: generation,
        state: OwnerState::Opening,
        open_queued: Some(generation),
        urgent: VecDeque::new(),
        background: VecDeque::new(),
        on_stream: vec![false; n as usize],
        require_durable,
        durable: false,
        epoch,
        postcopy: false,
        stale_cursor: 0,
        resume_ok: false,
        stale_named: vec![false; n as usize],
        reported_after_stale: false,
        last_commit_stream: None,
        last_commit_ever: None,
        dead: false,
    };
    h.check();

    for _ in 0..512 {
        if input.is_empty() || h.dead {
            break;
        }
        let pending_before = h.pending.clone();
        match input.u8() % 16 {
            0..=3 => {
                let f = frame_from_replica(&h, &mut input);
                if !h.feed(&f) {
                    return;
                }
            }
            4 => {
                let len = input.u16() as usize;
                let raw = input.bytes(len);
                if let Ok(Some((_, used))) = Frame::decode(raw, MAX_BODY) {
                    let bytes = raw[..used].to_vec();
                    if !h.feed(&bytes) {
                        return;
                    }
                }
            }
            5 => {
                let cap = match input.u8() % 4 {
                    0 => input.below(2 * n + 70),
                    _ => n,
                };
                let mut d = if input.u8() == 0xff {
                    DirtySet::full(cap)
                } else {
                    DirtySet::new(cap)
                };
                for _ in 0..input.below(8) {
                    d.insert(input.below(cap + 1));
                }
                for i in d.iter() {
                    if i < n {
                        h.pending[i as usize] = true;
                    }
                }
                h.owner.on_dirty(&d);
                h.check();
            }
            6 => {
                let range = if input.u8() == 0xff {
                    input.u64()..input.u64()
                } else {
                    let s = input.below(n + 2);
                    s..s + input.below(n + 2)
                };
                for i in range.start..range.end.min(n) {
                    h.pending[i as usize] = true;
                }
                h.owner.mark_dirty(range);
                h.check();
            }
            7 => {
                memsync_fuzz::trace!("restart");
                if !h.restart() {
                    return;
                }
            }
            8 => {
                let r = h.owner.begin_handoff();
                if h.state == OwnerState::Streaming {
                    r.expect("begin_handoff in Streaming");
                    h.state = OwnerState::Draining;
                    h.postcopy = false;
                } else {
                    assert_eq!(r.unwrap_err().code, ErrorCode::ProtocolViolation);
                }
                h.check();
            }
            9 | 10 => {
                for _ in 0..1 + input.below(32) {
                    if !h.poll() {
                        break;
                    }
                }
            }
            11 => {
                let i = input.below(n);
                let r = h.geom.range(i);
                let byte = if input.bool() { 0 } else { input.u8() };
                let at = r.start + input.below(r.len() as u64) as usize;
                let end = (at + 1 + input.u16() as usize).min(r.end);
                h.mem[at..end].fill(byte);
                h.mem_hashes[i as usize] = chunk_hash(&h.mem[r]);
            }
            12 => {
                let mut d = DirtySet::new(n);
                scan_changes(&h.geom, 0, &h.mem, h.owner.known_hashes(), &mut d);
                for i in 0..n {
                    if h.mem_hashes[i as usize] != h.known[i as usize] {
                        assert!(d.contains(i));
                        h.pending[i as usize] = true;
                    } else {
                        assert!(!d.contains(i));
                    }
                }
                h.owner.on_dirty(&d);
                h.check();
            }
            13 => {
                let mut budget = 4 * n + 64;
                while budget > 0 && h.poll() {
                    budget -= 1;
                }
            }
            14 => {
                memsync_fuzz::trace!("begin_postcopy");
                let r = h.owner.begin_postcopy();
                if h.state == OwnerState::Streaming {
                    r.expect("begin_postcopy in Streaming");
                    h.state = OwnerState::Draining;
                    h.postcopy = true;
                    h.stale_cursor = 0;
                    h.reported_after_stale = false;
                } else {
                    assert_eq!(r.unwrap_err().code, ErrorCode::ProtocolViolation);
                }
                h.check();
            }
            _ if input.bool() => {
                // A restarted old owner lets its OPEN be answered HANDOFF_ACK (§8.10).
                let r = h.owner.accept_postcopy_resume();
                memsync_fuzz::trace!("accept_postcopy_resume in {:?} -> {r:?}", h.state);
                if h.state == OwnerState::Opening {
                    r.expect("accept_postcopy_resume in Opening");
                    h.postcopy = true;
                    h.resume_ok = true;
                } else {
                    assert_eq!(r.unwrap_err().code, ErrorCode::Internal);
                }
                h.check();
            }
            _ => {
                // The replica ended the stream cleanly (FIN): the end of a post-copy handoff
                // in Serving, too early anywhere else.
                let r = h.owner.finish();
                memsync_fuzz::trace!("finish in {:?} -> {r:?}", h.state);
                match h.state {
                    OwnerState::Serving { generation } => {
                        assert_eq!(r, Some(generation));
                        h.state = OwnerState::HandedOff;
                    }
                    _ => assert_eq!(r, None),
                }
                h.check();
            }
        }
        if h.state == OwnerState::Draining
            && h.postcopy
            && h.stale_cursor > 0
            && (0..n as usize).any(|i| h.pending[i] && !pending_before[i])
        {
            h.reported_after_stale = true;
        }
    }
});
