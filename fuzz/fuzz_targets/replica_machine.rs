//! A `Replica` fed a fuzzer-chosen sequence of frames from the owner side, checked step by step
//! against a model of spec/PROTOCOL.md §8.2–§8.3 kept by the harness.
//!
//! Input: a few setup bytes (initial committed generation, plain or MOUNT replica, negotiated
//! `max_body`, durable ACKs promised or not), then ops until the input ends: raw byte slices (length-prefixed, decoded, fed if
//! they decode), and mostly-well-formed frames built from the input — OPEN with a small geometry,
//! CHUNK (right or wrong hash, length, index; ZERO; FETCHED), COMMIT (right or wrong generation,
//! count, summary), HANDOFF, ERROR and frames a replica never accepts (HELLO, MOUNT, STATE,
//! HASHES, ACK, FETCH, FETCH_PART, HANDOFF_ACK, PART on the region stream); frames from a fetch
//! lane (`handle_lane`: CHUNK with or without FETCHED, PART — right or wrong hash, ZERO, inside or
//! past its chunk, of a requested chunk or not —, and other frames); plus the local API:
//! `local_state` (Hashes / Empty / Lazy, or a wrong hash count), `fetch` and `fetch_part`. On
//! `Opened` the harness answers with `local_state` chosen by the input (or defers it). Post-copy
//! (§8.10): STALE (inside the region or past it), HANDOFF{POSTCOPY} (at the committed generation
//! or not), FETCHED copies of missing chunks, `local_write` and `resume_postcopy`.
//!
//! Ops, one byte each (mod 16) followed by their arguments: 0 raw length-prefixed bytes, 1 OPEN,
//! 2–4 CHUNK, 5 COMMIT, 6 another frame (HANDOFF, ERROR, frames a replica never accepts),
//! 7 `local_state`, 8 `fetch`, 10 a fetch-lane frame, 11 `fetch_part`, 12 a post-copy frame
//! (STALE, HANDOFF with or without POSTCOPY, a FETCHED copy of a missing chunk), 13
//! `local_write`, 14 `resume_postcopy` (a missing set of the OPEN's chunk count or of another),
//! 9 and 15 check that nothing is queued.
//!
//! Asserts, besides no panic:
//! - each `handle` outcome (event kind, or error code) is the one the model predicts: geometry
//!   checks (§5.14) first, then the §8.2 table — HASH_MISMATCH, SUMMARY_MISMATCH (the summary is
//!   recomputed here with xxh3 over the concatenated records, §6), PROTOCOL_VIOLATION;
//! - every Write has `index < chunk_count`, the frame's index, and data (if Some) of exactly
//!   `chunk_len(index)` bytes whose xxh3 is the frame's hash; None only for ZERO chunks;
//! - Committed generations strictly increase, and `committed()` follows;
//! - an ACK is queued only right after Committed (exactly ACK{g}), HANDOFF_ACK{g} only right after
//!   BecameOwner{g}, nothing after any other frame;
//! - `local_state` queues STATE{committed, N} and HASHES covering 0..N in order with at most
//!   `(max_body − 8) / 8` entries each (or STATE EMPTY [LAZY]), DURABLE exactly when promised
//!   (§8.4); in a wrong state, or with the
//!   wrong number of hashes, it fails with INTERNAL and queues nothing;
//! - `fetch` queues only FETCH frames for missing chunks inside the region, with the URGENT flag
//!   asked for, one per run of missing chunks; an urgent fetch covers every missing chunk asked;
//!   a read-ahead (non-URGENT) FETCH never asks for a chunk a read-ahead already asked for (§8.3);
//! - `fetch_part` queues exactly FETCH_PART{index, offset, len} when the replica is lazy, the
//!   chunk missing and the bytes inside it (`len ≥ 1`), and nothing otherwise; the chunk then
//!   counts as requested (for lanes and for read-ahead);
//! - each `handle_lane` outcome is the one a model of §8.7 replica check 2 predicts: refused
//!   (PROTOCOL_VIOLATION) unless lazy and Receiving, then the geometry checks (§5.14), then
//!   PROTOCOL_VIOLATION for anything but a FETCHED CHUNK or a PART, or a chunk never requested,
//!   then HASH_MISMATCH; a valid frame is `Discard` once its chunk is present, else `Chunk` (the
//!   chunk's bytes, or None for ZERO) or `Part` (the part's range and bytes, inside its chunk);
//!   nothing from a lane changes the replica's state, makes a chunk present or queues a frame;
//!   after a lane error the lane is closed and gets no more frames (the region stream goes on);
//! - post-copy (§8.10): STALE in Receiving makes its chunks missing (an eager replica then
//!   tracks held chunks), event None, nothing queued; HANDOFF{g, postcopy} is accepted iff
//!   g = committed and (postcopy or nothing missing), and queues exactly HANDOFF_ACK{g}, then one
//!   background FETCH per maximal run of missing chunks in increasing order (state PostCopy), or
//!   nothing more (BecameOwner); in PostCopy, and in BecameOwner reached through it, a FETCHED
//!   CHUNK is verified (HASH_MISMATCH), dropped (None) when the chunk is held, else written, the
//!   last missing one making BecameOwner; any other frame there is PROTOCOL_VIOLATION (so a late
//!   copy never overwrites a chunk the new owner wrote); `local_write(i)` returns true and makes
//!   i held exactly in PostCopy with i missing (false, no change, for an index past the region),
//!   queuing nothing; `resume_postcopy` fails with INTERNAL outside AwaitLocal and BAD_GEOMETRY
//!   for a set of another chunk count, both changing nothing, else sets committed and takes
//!   ownership as a post-copy HANDOFF does; `fetch` works in PostCopy as for a lazy replica;
//! - state(), committed(), missing() and is_present() match the model;
//! - after any error or ERROR frame the harness stops feeding; everything transmitted decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::{decode_exact, model, name_from, Input};
use memsync_protocol::hash::chunk_hash;
use memsync_protocol::wire::{ErrorCode, Frame, HashList, Hello, MAX_BODY, MIN_MAX_BODY};
use memsync_protocol::{DirtySet, Geometry, LaneEvent, Local, Replica, ReplicaEvent, ReplicaState};
use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Err(ErrorCode),
    Opened,
    Write,
    Committed(u64),
    BecameOwner(u64),
    PeerError,
    /// STALE, or a late FETCHED copy of a chunk held already (§8.10).
    None,
}

struct Harness {
    replica: Replica,
    max_body: u32,
    /// Whether STATE promises durable ACKs (§8.4).
    durable: bool,
    /// The ownership epoch of the OPEN handled, which STATE echoes (§8.8).
    epoch: Option<u64>,
    // The model.
    state: ReplicaState,
    geom: Option<Geometry>,
    committed: u64,
    /// §6 summary input of the generation in progress: index ‖ wire hash records.
    records: Vec<u8>,
    count: u32,
    present: Option<Vec<bool>>,
    /// Chunks a non-URGENT FETCH (read-ahead) already asked for: §8.3 allows one each.
    read_ahead: Vec<bool>,
    /// Chunks any FETCH or FETCH_PART already asked for.
    requested: Vec<bool>,
    stopped: bool,
    /// The fetch lane failed (spec §8.7: the failure closes it); no more lane frames.
    lane_closed: bool,
    /// Ownership was taken in a post-copy HANDOFF (or `resume_postcopy`) with chunks missing:
    /// FETCHED copies are accepted in PostCopy and BecameOwner, and dropped once held (§8.10).
    postcopy: bool,
}

/// What `handle_lane` must answer.
#[derive(Debug, PartialEq, Eq)]
enum LaneExpect {
    Err(ErrorCode),
    Discard,
    Chunk,
    Part,
}

impl Harness {
    fn missing(&self) -> u64 {
        self.present
            .as_ref()
            .map_or(0, |p| p.iter().filter(|x| !**x).count() as u64)
    }

    fn predict(&self, frame: &Frame<'_>, bytes: &[u8]) -> Expect {
        use ReplicaState::*;
        if let Some(g) = &self.geom {
            if let Err(code) = model::geometry_check(bytes, g.size(), g.shift()) {
                return Expect::Err(code);
            }
        }
        let pv = Expect::Err(ErrorCode::ProtocolViolation);
        match (*frame, self.state) {
            (Frame::Error { .. }, _) => Expect::PeerError,
            (Frame::Open { .. }, AwaitOpen) => Expect::Opened,
            (
                Frame::Chunk {
                    hash,
                    zero,
                    payload,
                    ..
                },
                Receiving,
            ) => {
                if !zero && xxh3_64(payload) != hash {
                    Expect::Err(ErrorCode::HashMismatch)
                } else {
                    Expect::Write
                }
            }
            (
                Frame::Commit {
                    generation,
                    count,
                    summary,
                },
                Receiving,
            ) => {
                if generation <= self.committed {
                    pv
                } else if count != self.count || summary != xxh3_64(&self.records) {
                    Expect::Err(ErrorCode::SummaryMismatch)
                } else {
                    Expect::Committed(generation)
                }
            }
            (
                Frame::Handoff {
                    generation,
                    postcopy,
                },
                Receiving,
            ) => {
                if generation == self.committed && (postcopy || self.missing() == 0) {
                    Expect::BecameOwner(generation)
                } else {
                    pv
                }
            }
            (Frame::Stale { .. }, Receiving) => Expect::None,
            // §8.10: after a post-copy handoff only FETCHED copies arrive, verified, dropped when
            // the chunk is held (a late copy of a chunk this peer wrote or already received).
            (
                Frame::Chunk {
                    index,
                    hash,
                    zero,
                    fetched: true,
                    payload,
                },
                PostCopy | BecameOwner,
            ) if self.postcopy => {
                if !zero && xxh3_64(payload) != hash {
                    Expect::Err(ErrorCode::HashMismatch)
                } else if self.present.as_ref().expect("post-copy without present")[index as usize]
                {
                    Expect::None
                } else {
                    Expect::Write
                }
            }
            _ => pv,
        }
    }

    /// Feeds one encoded frame (already known to decode) and checks everything about it.
    fn feed(&mut self, bytes: &[u8], local: &mut Input<'_>) {
        if self.stopped {
            return;
        }
        let frame = decode_exact(bytes);
        let expect = self.predict(&frame, bytes);
        let result = self.replica.handle(&frame);
        memsync_fuzz::trace!("handle {frame:?} -> {result:?}");
        let queued = self.drain();
        let event = match result {
            Err(e) => {
                assert_eq!(expect, Expect::Err(e.code), "{frame:?}: {e}");
                assert!(queued.is_empty(), "frames queued by a refused {frame:?}");
                self.stopped = true;
                return;
            }
            Ok(ev) => ev,
        };
        match event {
            ReplicaEvent::PeerError { code, reason } => {
                assert_eq!(expect, Expect::PeerError);
                assert_eq!(frame, Frame::Error { code, reason });
                assert!(queued.is_empty());
                self.stopped = true;
            }
            ReplicaEvent::Opened {
                name,
                geometry,
                generation,
                epoch,
            } => {
                assert_eq!(expect, Expect::Opened);
                let Frame::Open {
                    size,
                    generation: g,
                    chunk_shift,
                    name: n,
                    epoch: e,
                } = frame
                else {
                    unreachable!()
                };
                assert_eq!((name, generation, epoch), (n, g, e));
                self.epoch = epoch;
                assert_eq!((geometry.size(), geometry.shift()), (size, chunk_shift));
                assert!(queued.is_empty());
                self.geom = Some(geometry);
                self.state = ReplicaState::AwaitLocal;
                let sel = local.u8() % 4;
                if sel != 3 {
                    self.local_state(sel, local);
                }
            }
            ReplicaEvent::Write { index, data } => {
                assert_eq!(expect, Expect::Write);
                let Frame::Chunk {
                    index: fi,
                    hash,
                    zero,
                    fetched,
                    payload,
                } = frame
                else {
                    unreachable!()
                };
                let g = self.geom.expect("write before OPEN");
                assert_eq!(index, fi);
                assert!(index < g.chunk_count());
                match data {
                    None => assert!(zero, "None data for a non-ZERO chunk"),
                    Some(d) => {
                        assert!(!zero);
                        assert_eq!(d.len(), g.chunk_len(index));
                        assert_eq!(chunk_hash(d), hash);
                        assert_eq!(d, payload);
                    }
                }
                assert!(queued.is_empty(), "frames queued after a Write");
                if !fetched {
                    self.records.extend_from_slice(&index.to_le_bytes());
                    self.records.extend_from_slice(&hash.to_le_bytes());
                    self.count = self.count.saturating_add(1);
                }
                if let Some(p) = &mut self.present {
                    p[index as usize] = true;
                }
                if self.state == ReplicaState::PostCopy && self.missing() == 0 {
                    self.state = ReplicaState::BecameOwner;
                }
            }
            ReplicaEvent::Committed { generation } => {
                assert_eq!(expect, Expect::Committed(generation));
                assert!(
                    generation > self.committed,
                    "committed generations must increase"
                );
                assert_eq!(
                    queued,
                    vec![Frame::Ack { generation }.to_vec()],
                    "Committed must queue exactly its ACK"
                );
                self.committed = generation;
                self.records.clear();
                self.count = 0;
            }
            ReplicaEvent::BecameOwner { generation } => {
                assert_eq!(expect, Expect::BecameOwner(generation));
                self.take_ownership(generation, &queued);
            }
            ReplicaEvent::None => {
                assert_eq!(expect, Expect::None, "{frame:?}");
                assert!(queued.is_empty(), "frames queued after {frame:?}");
                if let Frame::Stale { first, count } = frame {
                    // The chunks become missing (an eager replica gets a present set: all).
                    let n = self.geom.expect("STALE before OPEN").chunk_count() as usize;
                    let p = self.present.get_or_insert_with(|| vec![true; n]);
                    for i in first..first + count as u64 {
                        p[i as usize] = false;
                    }
                    if self.requested.is_empty() {
                        self.requested = vec![false; n];
                        self.read_ahead = vec![false; n];
                    }
                }
            }
        }
        self.check_state();
    }

    /// The model of accepting ownership at `generation` (HANDOFF, or `resume_postcopy`), checking
    /// what it queued: HANDOFF_ACK{generation}, then, with chunks missing (§8.10), one background
    /// FETCH per maximal run of them in increasing order (asked afresh: the old owner dropped
    /// its fetch queues on entering Serving), and the state PostCopy; else BecameOwner.
    fn take_ownership(&mut self, generation: u64, queued: &[Vec<u8>]) {
        let mut want = vec![Frame::HandoffAck { generation }.to_vec()];
        if self.missing() == 0 {
            self.state = ReplicaState::BecameOwner;
        } else {
            self.state = ReplicaState::PostCopy;
            self.postcopy = true;
            let p = self
                .present
                .as_ref()
                .expect("missing chunks without present");
            let n = p.len();
            self.requested.fill(false);
            let mut i = 0;
            while i < n {
                if p[i] {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < n && !p[i] {
                    self.requested[i] = true;
                    self.read_ahead[i] = true;
                    i += 1;
                }
                want.push(
                    Frame::Fetch {
                        first: start as u64,
                        count: (i - start) as u32,
                        urgent: false,
                    }
                    .to_vec(),
                );
            }
        }
        assert_eq!(
            queued.iter().map(|f| decode_exact(f)).collect::<Vec<_>>(),
            want.iter().map(|f| decode_exact(f)).collect::<Vec<_>>(),
            "taking ownership at {generation} queued the wrong frames"
        );
    }

    /// `local_write(index)`: in PostCopy, a missing chunk becomes held (true); anything else,
    /// including an index past the region, changes nothing (false). Nothing is queued.
    fn local_write(&mut self, input: &mut Input<'_>) {
        let n = self.geom.map_or(4, |g| g.chunk_count());
        let mode = input.u8();
        let index = match mode {
            0xff => input.u64(),
            m if m & 1 == 0 => {
                // The first missing chunk at or after a chosen one, if any.
                let from = input.below(n);
                self.present
                    .as_ref()
                    .and_then(|p| (from..n).chain(0..from).find(|&i| !p[i as usize]))
                    .unwrap_or(from)
            }
            _ => input.below(n + 1), // n itself is out of range
        };
        let want = self.state == ReplicaState::PostCopy
            && index < n
            && self.present.as_ref().is_some_and(|p| !p[index as usize]);
        let got = self.replica.local_write(index);
        memsync_fuzz::trace!("local_write({index}) in {:?} -> {got}", self.state);
        assert!(self.drain().is_empty(), "local_write queued frames");
        assert_eq!(got, want, "local_write({index}) in {:?}", self.state);
        if want {
            self.present.as_mut().unwrap()[index as usize] = true;
            if self.missing() == 0 {
                self.state = ReplicaState::BecameOwner;
            }
        }
        self.check_state();
    }

    /// `resume_postcopy(generation, missing)`: only in AwaitLocal (else INTERNAL), with a set of
    /// the OPEN's chunk count (else BAD_GEOMETRY), both queuing nothing and changing nothing;
    /// then committed = generation, held = all but `missing`, and ownership is taken as for a
    /// post-copy HANDOFF.
    fn resume_postcopy(&mut self, input: &mut Input<'_>) {
        let n = self.geom.map_or(4, |g| g.chunk_count());
        let generation = match input.u8() % 4 {
            0 => self.committed,
            1 => input.u8() as u64,
            2 => input.u64(),
            _ => self.committed.wrapping_add(1),
        };
        let cap = match input.u8() % 8 {
            0 => n + 1,
            1 => n - 1,
            _ => n,
        };
        let mut missing = DirtySet::new(cap);
        match input.u8() % 4 {
            0 => {}
            1 => missing.insert_range(0..cap),
            2 => {
                let mask = input.u64();
                for i in 0..cap {
                    if mask >> (i % 64) & 1 != 0 {
                        missing.insert(i);
                    }
                }
            }
            _ => {
                let s = input.below(cap + 1);
                missing.insert_range(s..s + input.below(cap + 1));
            }
        }
        let r = self.replica.resume_postcopy(generation, &missing);
        let queued = self.drain();
        memsync_fuzz::trace!(
            "resume_postcopy({generation}, {} of {cap} missing) in {:?} -> {r:?}",
            missing.count(),
            self.state
        );
        if self.state != ReplicaState::AwaitLocal {
            assert_eq!(r.unwrap_err().code, ErrorCode::Internal);
            assert!(queued.is_empty());
        } else if cap != n {
            assert_eq!(r.unwrap_err().code, ErrorCode::BadGeometry);
            assert!(queued.is_empty());
        } else {
            r.expect("resume_postcopy in AwaitLocal");
            self.committed = generation;
            self.present = Some((0..n).map(|i| !missing.contains(i)).collect());
            self.requested = vec![false; n as usize];
            self.read_ahead = vec![false; n as usize];
            self.take_ownership(generation, &queued);
        }
        self.check_state();
    }

    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.replica.poll_transmit() {
            decode_exact(&f);
            out.push(f);
        }
        out
    }

    fn check_state(&self) {
        assert_eq!(self.replica.state(), self.state);
        assert_eq!(self.replica.committed(), self.committed);
        assert_eq!(self.replica.geometry(), self.geom.as_ref());
        assert_eq!(self.replica.missing(), self.missing());
        if let (Some(p), Some(g)) = (&self.present, &self.geom) {
            for i in [0, g.chunk_count() / 2, g.chunk_count() - 1] {
                assert_eq!(self.replica.is_present(i), p[i as usize]);
            }
        }
    }

    /// `local_state`: 0 hashes, 1 empty, 2 lazy, 3 hashes of the wrong count.
    fn local_state(&mut self, sel: u8, input: &mut Input<'_>) {
        let n = self.geom.map_or(0, |g| g.chunk_count());
        let seed = input.u64();
        let hashes: Vec<u64> = match sel {
            0 => (0..n).map(|i| seed.wrapping_mul(i + 1)).collect(),
            3 => {
                let len = if n > 0 && input.bool() { n - 1 } else { n + 1 };
                (0..len).collect()
            }
            _ => vec![],
        };
        let local = match sel {
            0 | 3 => Local::Hashes(&hashes),
            1 => Local::Empty,
            _ => Local::Lazy,
        };
        let result = self.replica.local_state(local);
        let queued = self.drain();
        if self.state != ReplicaState::AwaitLocal || sel == 3 {
            assert_eq!(result.unwrap_err().code, ErrorCode::Internal);
            assert!(queued.is_empty());
            self.check_state();
            return;
        }
        result.expect("local_state in AwaitLocal");
        self.state = ReplicaState::Receiving;
        let state = decode_exact(&queued[0]);
        assert_eq!(
            state,
            Frame::State {
                empty: sel != 0,
                lazy: sel == 2,
                durable: self.durable,
                generation: self.committed,
                chunk_count: if sel == 0 { n } else { 0 },
                epoch: self.epoch,
            }
        );
        if sel == 0 {
            let per_frame = ((self.max_body as u64 - 8) / 8).max(1);
            let mut next = 0u64;
            for f in &queued[1..] {
                assert!(
                    f.len() - 8 <= self.max_body as usize,
                    "HASHES over max_body"
                );
                let Frame::Hashes { first, hashes: h } = decode_exact(f) else {
                    panic!("expected HASHES")
                };
                assert_eq!(first, next, "HASHES out of order");
                let k = h.len() as u64;
                assert!(
                    k == per_frame || first + k == n,
                    "short HASHES before the last"
                );
                assert!(h
                    .iter()
                    .eq(hashes[first as usize..(first + k) as usize].iter().copied()));
                next += k;
            }
            assert_eq!(next, n, "HASHES do not cover the region");
        } else {
            assert_eq!(queued.len(), 1);
        }
        if sel == 2 {
            self.present = Some(vec![false; n as usize]);
            self.read_ahead = vec![false; n as usize];
            self.requested = vec![false; n as usize];
        }
        self.check_state();
    }

    fn fetch(&mut self, input: &mut Input<'_>) {
        let n = self.geom.map_or(4, |g| g.chunk_count());
        let first = match input.u8() {
            0xff => input.u64(),
            _ => input.below(n + 3),
        };
        let count = match input.u8() {
            0 => input.u32(),
            c => c as u32 % 16,
        };
        let urgent = input.bool();
        self.replica.fetch(first, count, urgent);
        let queued = self.drain();
        memsync_fuzz::trace!(
            "fetch({first}, {count}, urgent {urgent}) in {:?} -> {:?}",
            self.state,
            queued.iter().map(|f| decode_exact(f)).collect::<Vec<_>>()
        );
        let Some(present) = &self.present else {
            assert!(queued.is_empty(), "an eager replica fetched");
            return;
        };
        if !matches!(
            self.state,
            ReplicaState::Receiving | ReplicaState::PostCopy | ReplicaState::BecameOwner
        ) {
            assert!(queued.is_empty());
            return;
        }
        let end = first.saturating_add(count as u64).min(n);
        let requested_before = self.requested.clone();
        let mut covered = vec![false; n as usize];
        let mut last_end = None;
        for f in &queued {
            let Frame::Fetch {
                first: s,
                count: c,
                urgent: u,
            } = decode_exact(f)
            else {
                panic!("fetch queued a non-FETCH frame")
            };
            assert_eq!(u, urgent);
            assert!(
                c >= 1 && s >= first && s + c as u64 <= end,
                "FETCH outside the ask"
            );
            if let Some(e) = last_end {
                assert!(s > e, "FETCH ranges overlap, are unordered or not maximal");
            }
            for i in s..s + c as u64 {
                assert!(!present[i as usize], "FETCH of a present chunk {i}");
                covered[i as usize] = true;
                if !urgent {
                    assert!(
                        !self.read_ahead[i as usize],
                        "read-ahead FETCH asks again for chunk {i} (§8.3: at most once)"
                    );
                    assert!(
                        !requested_before[i as usize],
                        "read-ahead of requested chunk {i}"
                    );
                    self.read_ahead[i as usize] = true;
                }
                self.requested[i as usize] = true;
            }
            // A run ends at a present chunk, the end of the ask, or (read-ahead) a chunk already
            // requested.
            let e = s + c as u64;
            assert!(
                e == end || present[e as usize] || (!urgent && requested_before[e as usize]),
                "FETCH run cut short"
            );
            last_end = Some(e);
        }
        for i in first..end {
            let want = !present[i as usize] && (urgent || !requested_before[i as usize]);
            assert_eq!(covered[i as usize], want, "chunk {i} (urgent {urgent})");
        }
    }
}

impl Harness {
    fn fetch_part(&mut self, input: &mut Input<'_>) {
        let n = self.geom.map_or(4, |g| g.chunk_count());
        let index = match input.u8() {
            0xff => input.u64(),
            _ => input.below(n + 1),
        };
        let len_of = match self.geom {
            Some(g) if index < n => g.chunk_len(index) as u64,
            _ => 4096,
        };
        let (offset, len) = match input.u8() % 4 {
            0 | 1 => {
                let offset = input.below(len_of);
                (offset as u32, 1 + input.below(len_of - offset) as u32)
            }
            2 => {
                let offset = input.below(len_of + 1);
                (offset as u32, (len_of - offset + 1) as u32)
            }
            _ => (input.u32(), input.u32()), // len 0 among them
        };
        self.replica.fetch_part(index, offset, len);
        let queued = self.drain();
        memsync_fuzz::trace!(
            "fetch_part({index}, {offset}, {len}) in {:?} -> {:?}",
            self.state,
            queued.iter().map(|f| decode_exact(f)).collect::<Vec<_>>()
        );
        let inside = self.geom.is_some_and(|g| {
            index < g.chunk_count()
                && len > 0
                && offset as u64 + len as u64 <= g.chunk_len(index) as u64
        });
        match &self.present {
            Some(p) if inside && !p[index as usize] => {
                assert_eq!(
                    queued,
                    vec![Frame::FetchPart { index, offset, len }.to_vec()],
                    "fetch_part of a missing chunk queues exactly its FETCH_PART"
                );
                self.requested[index as usize] = true;
            }
            _ => assert!(queued.is_empty(), "fetch_part queued {queued:?}"),
        }
        self.check_state();
    }

    fn predict_lane(&self, frame: &Frame<'_>, bytes: &[u8]) -> LaneExpect {
        let pv = LaneExpect::Err(ErrorCode::ProtocolViolation);
        let (Some(g), Some(present), ReplicaState::Receiving) =
            (&self.geom, &self.present, self.state)
        else {
            return pv;
        };
        if let Err(code) = model::geometry_check(bytes, g.size(), g.shift()) {
            return LaneExpect::Err(code);
        }
        let (index, hash, zero, payload, part) = match *frame {
            Frame::Chunk {
                index,
                hash,
                zero,
                fetched: true,
                payload,
            } => (index, hash, zero, payload, false),
            Frame::Part {
                index,
                hash,
                zero,
                payload,
                ..
            } => (index, hash, zero, payload, true),
            _ => return pv,
        };
        if !self.requested[index as usize] {
            return pv;
        }
        if !zero && xxh3_64(payload) != hash {
            return LaneExpect::Err(ErrorCode::HashMismatch);
        }
        if present[index as usize] {
            LaneExpect::Discard
        } else if part {
            LaneExpect::Part
        } else {
            LaneExpect::Chunk
        }
    }

    /// Feeds one encoded frame to `handle_lane`, as if it arrived on the region stream's lane.
    fn feed_lane(&mut self, bytes: &[u8]) {
        if self.stopped || self.lane_closed {
            return;
        }
        let frame = decode_exact(bytes);
        let expect = self.predict_lane(&frame, bytes);
        let result = self.replica.handle_lane(&frame);
        memsync_fuzz::trace!("handle_lane {frame:?} -> {result:?}");
        assert!(self.drain().is_empty(), "a lane frame queued frames");
        match result {
            Err(e) => {
                assert_eq!(expect, LaneExpect::Err(e.code), "{frame:?}: {e}");
                self.lane_closed = true;
            }
            Ok(LaneEvent::Discard) => assert_eq!(expect, LaneExpect::Discard, "{frame:?}"),
            Ok(LaneEvent::Chunk { index, data }) => {
                assert_eq!(expect, LaneExpect::Chunk, "{frame:?}");
                let Frame::Chunk {
                    index: fi,
                    hash,
                    zero,
                    payload,
                    ..
                } = frame
                else {
                    unreachable!()
                };
                let g = self.geom.expect("lane chunk before OPEN");
                assert_eq!(index, fi);
                match data {
                    None => assert!(zero, "None data for a non-ZERO lane copy"),
                    Some(d) => {
                        assert!(!zero);
                        assert_eq!(d.len(), g.chunk_len(index));
                        assert_eq!(chunk_hash(d), hash);
                        assert_eq!(d, payload);
                    }
                }
            }
            Ok(LaneEvent::Part {
                index,
                offset,
                len,
                data,
            }) => {
                assert_eq!(expect, LaneExpect::Part, "{frame:?}");
                let Frame::Part {
                    index: fi,
                    offset: fo,
                    len: fl,
                    hash,
                    zero,
                    payload,
                } = frame
                else {
                    unreachable!()
                };
                let g = self.geom.expect("part before OPEN");
                assert_eq!((index, offset, len), (fi, fo, fl));
                assert!(len >= 1);
                assert!(
                    offset as u64 + len as u64 <= g.chunk_len(index) as u64,
                    "part outside its chunk"
                );
                match data {
                    None => assert!(zero, "None data for a non-ZERO part"),
                    Some(d) => {
                        assert!(!zero);
                        assert_eq!(d.len(), len as usize);
                        assert_eq!(chunk_hash(d), hash);
                        assert_eq!(d, payload);
                    }
                }
            }
        }
        // A lane changes nothing for the protocol: no chunk becomes present.
        self.check_state();
    }
}

/// A frame as a fetch lane may carry it: a CHUNK (FETCHED or not, as `chunk` makes it), a PART,
/// or a frame that never travels on a lane.
fn lane_frame(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    match input.u8() % 4 {
        0 => chunk(h, input),
        1 | 2 => part(h, input),
        _ => {
            let g = input.u64();
            match input.u8() % 3 {
                0 => Frame::Lane { stream: g }.to_vec(),
                1 => Frame::FetchPart {
                    index: g % 8,
                    offset: 0,
                    len: 1,
                }
                .to_vec(),
                _ => Frame::Commit {
                    generation: g,
                    count: 0,
                    summary: 0,
                }
                .to_vec(),
            }
        }
    }
}

/// A PART: of a requested chunk or any, bytes inside the chunk or past its end, ZERO or not,
/// right or wrong hash.
fn part(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let g = h
        .geom
        .unwrap_or_else(|| Geometry::new(8 * 4096, 12).unwrap());
    let n = g.chunk_count();
    let mode = input.u8();
    let index = match mode >> 6 {
        0 => {
            // The first requested chunk at or after a chosen one, if any.
            let from = input.below(n) as usize;
            (from..h.requested.len())
                .chain(0..from.min(h.requested.len()))
                .find(|&i| h.requested[i])
                .unwrap_or(from) as u64
        }
        1 => input.u64(),
        _ => input.below(n + 1), // n itself is out of range
    };
    let len_of = if index < n {
        g.chunk_len(index) as u64
    } else {
        4096
    };
    let (offset, len) = if mode & 4 != 0 {
        // One byte past the chunk's end.
        let offset = input.below(len_of + 1);
        (offset as u32, (len_of - offset + 1) as u32)
    } else {
        let offset = input.below(len_of);
        (offset as u32, 1 + input.below(len_of - offset) as u32)
    };
    if mode & 1 != 0 {
        return Frame::Part {
            index,
            offset,
            len,
            hash: 0,
            zero: true,
            payload: &[],
        }
        .to_vec();
    }
    let fill = input.u8();
    let mut payload = vec![fill; len as usize];
    let head = input.bytes(4);
    let k = head.len().min(payload.len());
    payload[..k].copy_from_slice(&head[..k]);
    let mut hash = chunk_hash(&payload);
    if mode & 2 != 0 {
        hash ^= 1 + input.u8() as u64;
    }
    Frame::Part {
        index,
        offset,
        len,
        hash,
        zero: false,
        payload: &payload,
    }
    .to_vec()
}

/// Frames of a post-copy handoff (§8.10): STALE inside the region or anywhere, HANDOFF{POSTCOPY}
/// at the committed generation, HANDOFF of another generation with or without POSTCOPY, and a
/// FETCHED copy (right or wrong hash, or ZERO) of a missing chunk.
fn postcopy_frame(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let g = h
        .geom
        .unwrap_or_else(|| Geometry::new(8 * 4096, 12).unwrap());
    let n = g.chunk_count();
    match input.u8() % 6 {
        0 | 1 => {
            let first = input.below(n);
            let count = 1 + input.below((n - first).min(16)) as u32;
            Frame::Stale { first, count }.to_vec()
        }
        2 => {
            let (first, count) = if input.u8() == 0xff {
                (input.u64(), input.u32().max(1))
            } else {
                (input.below(n + 2), 1 + input.below(n + 2) as u32)
            };
            Frame::Stale { first, count }.to_vec()
        }
        3 => Frame::Handoff {
            generation: h.committed,
            postcopy: true,
        }
        .to_vec(),
        4 => Frame::Handoff {
            generation: match input.u8() % 3 {
                0 => h.committed.wrapping_sub(1),
                1 => h.committed.wrapping_add(1),
                _ => input.u64(),
            },
            postcopy: input.bool(),
        }
        .to_vec(),
        _ => {
            let mode = input.u8();
            let from = input.below(n);
            let index = h
                .present
                .as_ref()
                .and_then(|p| (from..n).chain(0..from).find(|&i| !p[i as usize]))
                .unwrap_or(from);
            if mode & 1 != 0 {
                return Frame::Chunk {
                    index,
                    hash: 0,
                    zero: true,
                    fetched: true,
                    payload: &[],
                }
                .to_vec();
            }
            let mut payload = vec![input.u8(); g.chunk_len(index)];
            payload[0] = input.u8();
            let mut hash = chunk_hash(&payload);
            if mode & 2 != 0 {
                hash ^= 1;
            }
            Frame::Chunk {
                index,
                hash,
                zero: false,
                fetched: true,
                payload: &payload,
            }
            .to_vec()
        }
    }
}

/// A well-formed OPEN with a small geometry.
fn open(input: &mut Input<'_>) -> Vec<u8> {
    let shift = 12 + input.below(5) as u8;
    let cs = 1u64 << shift;
    let big = input.u8() == 0xff;
    let chunks = 1 + input.below(if big { 20_000 } else { 64 });
    let size = (chunks - 1) * cs + 1 + input.u16() as u64 % cs;
    let generation = match input.u8() {
        0 => input.u64(),
        g => g as u64,
    };
    let name_len = 1 + input.below(16) as usize;
    let name = name_from(input.bytes(name_len), 255);
    // From a bit of the generation, so that no more input is read and older inputs keep theirs.
    let epoch = (!big && generation & 0x40 != 0).then_some(1 + (generation & 0x3f));
    Frame::Open {
        size,
        generation,
        chunk_shift: shift,
        name: &name,
        epoch,
    }
    .to_vec()
}

fn chunk(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let g = h
        .geom
        .unwrap_or_else(|| Geometry::new(8 * 4096, 12).unwrap());
    let n = g.chunk_count();
    let mode = input.u8();
    let index = if mode & 0x80 != 0 {
        input.u64()
    } else {
        input.below(n + 1) // n itself is out of range
    };
    let (zero, fetched, bad_hash, bad_len) =
        (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0, mode & 8 != 0);
    if zero {
        return Frame::Chunk {
            index,
            hash: 0,
            zero: true,
            fetched,
            payload: &[],
        }
        .to_vec();
    }
    let mut len = if index < n {
        g.chunk_len(index)
    } else {
        1 + input.below(64) as usize
    };
    if bad_len {
        len = if len > 1 && input.bool() {
            len - 1
        } else {
            len + 1
        };
    }
    let fill = input.u8();
    let mut payload = vec![fill; len];
    let head = input.bytes(4);
    payload[..head.len().min(len)].copy_from_slice(&head[..head.len().min(len)]);
    let mut hash = chunk_hash(&payload);
    if bad_hash {
        hash ^= 1 + input.u8() as u64;
    }
    Frame::Chunk {
        index,
        hash,
        zero: false,
        fetched,
        payload: &payload,
    }
    .to_vec()
}

fn commit(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let sel = input.u8();
    let generation = match sel % 4 {
        0 => h.committed.wrapping_add(1),
        1 => h.committed.wrapping_add(1 + input.u8() as u64),
        2 => h.committed,
        _ => input.u64(),
    };
    let (mut count, mut summary) = (h.count, xxh3_64(&h.records));
    match (sel >> 2) % 8 {
        0 => count = count.wrapping_add(1),
        1 => summary ^= 1,
        2 => {
            count = input.u32();
            summary = input.u64();
        }
        _ => {}
    }
    Frame::Commit {
        generation,
        count,
        summary,
    }
    .to_vec()
}

/// Frames an owner sends that the model decides on, and frames a replica never accepts.
fn other(h: &Harness, input: &mut Input<'_>) -> Vec<u8> {
    let n = h.geom.map_or(4, |g| g.chunk_count());
    let g = input.u64();
    match input.u8() % 12 {
        0 => Frame::Handoff {
            generation: h.committed,
            postcopy: false,
        }
        .to_vec(),
        1 => Frame::Handoff {
            generation: g,
            postcopy: g & 1 != 0,
        }
        .to_vec(),
        2 => {
            let reason = name_from(input.bytes(8), 8);
            Frame::Error {
                code: g as u32,
                reason: &reason,
            }
            .to_vec()
        }
        3 => Frame::Hello(Hello::default()).to_vec(),
        4 => Frame::Mount { name: "r" }.to_vec(),
        5 => Frame::State {
            epoch: None,
            empty: false,
            lazy: false,
            durable: false,
            generation: g,
            chunk_count: n,
        }
        .to_vec(),
        6 => {
            let hs = [g, 1, 2];
            let k = 1 + input.below(3) as usize;
            let mut wire = Vec::new();
            HashList::encode_into(&hs[..k], &mut wire);
            Frame::Hashes {
                first: input.below(n + 1),
                hashes: HashList::from_wire(&wire).unwrap(),
            }
            .to_vec()
        }
        7 => Frame::Ack { generation: g }.to_vec(),
        8 => Frame::Fetch {
            first: input.below(n + 1),
            count: 1 + input.below(4) as u32,
            urgent: input.bool(),
        }
        .to_vec(),
        9 => Frame::HandoffAck { generation: g }.to_vec(),
        10 => Frame::FetchPart {
            index: input.below(n + 1),
            offset: 0,
            len: 1,
        }
        .to_vec(),
        _ => part(h, input), // on the region stream: never accepted
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let committed = match setup & 3 {
        0 => 0,
        1 => input.u8() as u64,
        2 => input.u64(),
        _ => u64::MAX - input.u8() as u64,
    };
    let mount = setup & 4 != 0;
    let mut replica = if mount {
        Replica::mount("r-1.img").unwrap()
    } else {
        Replica::new(committed)
    };
    let max_body = match (setup >> 3) % 3 {
        0 => MAX_BODY,
        1 => MIN_MAX_BODY,
        _ => MIN_MAX_BODY + input.u32() % (MAX_BODY - MIN_MAX_BODY + 1),
    };
    if max_body != MAX_BODY {
        replica.set_max_body(max_body);
    }
    let durable = setup & 0x80 != 0;
    replica.set_durable(durable);
    let mut h = Harness {
        replica,
        max_body,
        durable,
        epoch: None,
        state: ReplicaState::AwaitOpen,
        geom: None,
        committed: if mount { 0 } else { committed },
        records: vec![],
        count: 0,
        present: None,
        read_ahead: vec![],
        requested: vec![],
        stopped: false,
        lane_closed: false,
        postcopy: false,
    };
    let first = h.drain();
    if mount {
        assert_eq!(first, vec![Frame::Mount { name: "r-1.img" }.to_vec()]);
    } else {
        assert!(first.is_empty());
    }
    h.check_state();

    for _ in 0..512 {
        if input.is_empty() || h.stopped {
            break;
        }
        match input.u8() % 16 {
            0 => {
                let len = input.u16() as usize;
                let raw = input.bytes(len);
                if let Ok(Some((_, used))) = Frame::decode(raw, MAX_BODY) {
                    let bytes = raw[..used].to_vec();
                    h.feed(&bytes, &mut input);
                }
            }
            1 => {
                let f = open(&mut input);
                h.feed(&f, &mut input);
            }
            2..=4 => {
                let f = chunk(&h, &mut input);
                h.feed(&f, &mut input);
            }
            5 => {
                let f = commit(&h, &mut input);
                h.feed(&f, &mut input);
            }
            6 => {
                let f = other(&h, &mut input);
                h.feed(&f, &mut input);
            }
            7 => {
                let sel = input.u8() % 4;
                h.local_state(sel, &mut input);
            }
            8 => h.fetch(&mut input),
            10 => {
                let f = lane_frame(&h, &mut input);
                h.feed_lane(&f);
            }
            11 => h.fetch_part(&mut input),
            12 => {
                let f = postcopy_frame(&h, &mut input);
                h.feed(&f, &mut input);
            }
            13 => h.local_write(&mut input),
            14 => h.resume_postcopy(&mut input),
            _ => {
                assert!(h.drain().is_empty(), "frames queued with no cause");
            }
        }
    }
});
