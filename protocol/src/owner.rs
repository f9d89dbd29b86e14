//! The owner role's state machine for one region stream (spec/PROTOCOL.md §8.1).
//!
//! The owner opens the stream, reconciles with the replica's hashes, then streams generations:
//! each round sends the chunks marked dirty since the previous round and closes with a COMMIT that
//! the replica acknowledges. Chunk bytes never pass through here: [`Owner::poll_transmit`] names
//! the chunk to send, and the caller reads it from memory and calls [`Owner::encode_chunk`], which
//! hashes exactly the bytes that will travel.

use crate::dirty::DirtySet;
use crate::geometry::Geometry;
use crate::hash::{chunk_hash, is_zero, Summary, ZeroHashes};
use crate::wire::{chunk_header, ErrorCode, Frame, WireError, CHUNK_HEADER_LEN, HEADER_LEN};
use std::collections::VecDeque;

/// Generations stay below this (spec §8.4): an owner refuses to start from or adopt a generation at
/// or above it, and stops starting rounds when its counter reaches it (after 2^63 rounds), so a
/// number is never reused and the counter never wraps.
pub const MAX_GENERATION: u64 = 1 << 63;

/// Where the owner's side of the stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// OPEN sent; waiting for the replica's STATE.
    Opening,
    /// Receiving the replica's HASHES; `next` is the next chunk expected.
    Reconciling {
        /// The first chunk not yet described by HASHES.
        next: u64,
        /// The generation the replica reported in STATE.
        replica_generation: u64,
    },
    /// Sending generations.
    Streaming,
    /// A handoff was asked for: finishing and acknowledging the last generation first.
    Draining,
    /// HANDOFF sent for `generation`; this peer no longer writes the region.
    HandingOff {
        /// The generation HANDOFF named.
        generation: u64,
    },
    /// The stream broke in HandingOff and OPEN went out on a new one (a probe): the replica's
    /// answer tells whether it took ownership at `generation` (ERROR HANDED_OVER) or not (STATE:
    /// this peer owns the region again, writers still stopped, and reconciles as after Opening).
    Probing {
        /// The generation the lost HANDOFF named.
        generation: u64,
    },
    /// The replica accepted a post-copy HANDOFF at `generation` (spec §8.10): it owns the
    /// region, and this peer, writing nothing, answers its FETCHes of the chunks it still misses
    /// until it ends the stream ([`Owner::finish`]).
    Serving {
        /// The generation the HANDOFF named.
        generation: u64,
    },
    /// The replica accepted ownership; this stream now carries the reverse direction.
    HandedOff,
}

/// What the caller must send next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// An encoded control frame.
    Frame(Vec<u8>),
    /// Chunk `index`: read its bytes and pass them to [`Owner::encode_chunk`].
    Chunk {
        /// Chunk index.
        index: u64,
        /// Send it as FETCHED: an answer to FETCH, outside any generation.
        fetched: bool,
    },
}

/// What a received frame meant to the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerEvent {
    /// Nothing the caller needs to act on.
    None,
    /// Reconciliation finished; `differing` chunks will be sent.
    Reconciled {
        /// Number of chunks found to differ, to be sent.
        differing: u64,
        /// The generation the replica reported in STATE.
        replica_generation: u64,
    },
    /// The replica holds generation `generation`, verified.
    Acked {
        /// The generation acknowledged.
        generation: u64,
    },
    /// The replica accepted ownership at `generation`.
    HandedOff {
        /// The generation of the HANDOFF accepted.
        generation: u64,
    },
    /// The replica reported an error and will close the stream.
    PeerError {
        /// Error code (spec §7), kept raw.
        code: u32,
        /// The replica's human-readable reason.
        reason: String,
    },
}

/// One region's owner side. Lives across reconnects: call [`Owner::restart`] for a new stream.
pub struct Owner {
    geom: Geometry,
    name: String,
    zero: ZeroHashes,
    /// Hash of each chunk as last sent to (or confirmed held by) the replica.
    known: Vec<u64>,
    /// Chunks changed since they were last sent, not yet in a round.
    pending: DirtySet,
    /// Chunks of the round in progress not yet sent.
    round: DirtySet,
    in_round: bool,
    /// A generation must be closed even if nothing is pending: after reconciliation (so the
    /// generation names the reconciled content) and after FETCHED chunks sent outside a round.
    needs_commit: bool,
    cursor: u64,
    summary: Summary,
    generation: u64,
    /// The newest generation whose COMMIT went out on this stream (or that the replica reported).
    committed: u64,
    acked: u64,
    state: OwnerState,
    queued: VecDeque<Vec<u8>>,
    urgent: VecDeque<u64>,
    background: VecDeque<u64>,
    /// Chunks sent on this stream since it opened. A FETCH of one of them is already answered
    /// by the copy in flight (spec §8.3): sending it again would only repeat bytes.
    on_stream: DirtySet,
    bytes_sent: u64,
    /// Refuse a replica whose STATE does not promise durable ACKs (spec §8.4).
    require_durable: bool,
    /// The handoff asked for is a post-copy one (spec §8.10): Draining sends no more round
    /// chunks, STALE names what is pending, HANDOFF carries POSTCOPY, and HANDOFF_ACK leads to
    /// Serving.
    postcopy: bool,
    /// In a post-copy Draining, the first chunk not yet named by STALE.
    stale_cursor: u64,
    /// This OPEN may be answered with HANDOFF_ACK ([`Owner::accept_postcopy_resume`]).
    resume_ok: bool,
    /// The replica on this stream promised durable ACKs.
    durable: bool,
    /// The ownership epoch OPEN carries, where the EPOCH feature is negotiated (spec §8.8).
    epoch: Option<u64>,
}

impl Owner {
    /// An owner of a region whose chunk hashes are `known` (the owner's current content as last
    /// hashed), whose last generation was `generation`. Queues OPEN.
    pub fn new(
        geom: Geometry,
        name: &str,
        known: Vec<u64>,
        generation: u64,
    ) -> Result<Self, WireError> {
        crate::wire::check_name(name)?;
        if known.len() as u64 != geom.chunk_count() {
            return Err(WireError::new(
                ErrorCode::Internal,
                "known hashes do not match the geometry",
            ));
        }
        if generation >= MAX_GENERATION {
            return Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("generation {generation} leaves no room for another round"),
            ));
        }
        let n = geom.chunk_count();
        let mut o = Owner {
            zero: ZeroHashes::new(&geom),
            geom,
            name: name.to_owned(),
            known,
            pending: DirtySet::new(n),
            round: DirtySet::new(n),
            in_round: false,
            needs_commit: false,
            cursor: 0,
            summary: Summary::new(),
            generation,
            committed: generation,
            acked: generation,
            state: OwnerState::Opening,
            queued: VecDeque::new(),
            urgent: VecDeque::new(),
            background: VecDeque::new(),
            on_stream: DirtySet::new(n),
            bytes_sent: 0,
            require_durable: false,
            postcopy: false,
            stale_cursor: 0,
            resume_ok: false,
            durable: false,
            epoch: None,
        };
        o.queue_open();
        Ok(o)
    }

    fn queue_open(&mut self) {
        self.queued.push_back(
            Frame::Open {
                size: self.geom.size(),
                generation: self.generation,
                chunk_shift: self.geom.shift(),
                name: &self.name,
                epoch: self.epoch,
            }
            .to_vec(),
        );
    }

    /// Starts over on a new stream after the old one broke: chunks of the unfinished round go
    /// back to pending, reconciliation will find whatever the replica missed, and the replica's
    /// STATE says which generation it holds. Queues OPEN. After a HANDOFF whose answer was lost
    /// the OPEN is a probe ([`OwnerState::Probing`]): whether the other side took ownership is
    /// unknown until it answers, and the caller must keep its writers stopped (spec/PROTOCOL.md
    /// §8.6). Refused once handed off.
    pub fn restart(&mut self) -> Result<(), WireError> {
        let next = match self.state {
            OwnerState::HandedOff => {
                return Err(WireError::new(
                    ErrorCode::ProtocolViolation,
                    "ownership was handed to the replica; this peer must not resume as owner",
                ))
            }
            OwnerState::HandingOff { generation }
            | OwnerState::Probing { generation }
            | OwnerState::Serving { generation } => OwnerState::Probing { generation },
            _ => OwnerState::Opening,
        };
        let rest = self.round.take();
        self.pending.union_with(&rest);
        self.in_round = false;
        self.needs_commit = false;
        self.cursor = 0;
        self.summary.reset();
        self.acked = self.generation;
        self.committed = self.generation;
        self.queued.clear();
        self.urgent.clear();
        self.background.clear();
        self.on_stream.clear();
        self.stale_cursor = 0;
        self.resume_ok = false;
        self.state = next;
        self.queue_open();
        Ok(())
    }

    /// Whether the handoff asked for (or offered, or taken) is a post-copy one (spec §8.10).
    pub fn is_postcopy(&self) -> bool {
        self.postcopy
    }

    /// Lets the OPEN just queued be answered with HANDOFF_ACK: this peer may have handed the
    /// region over in a post-copy handoff it no longer remembers (its process was restarted),
    /// and the new owner, still fetching, answers the OPEN as it answers a probe (spec §8.10).
    /// Only in Opening, where the POSTCOPY feature is negotiated; the caller's writers must
    /// still be stopped, since what it serves must be what it froze.
    pub fn accept_postcopy_resume(&mut self) -> Result<(), WireError> {
        if self.state != OwnerState::Opening {
            return Err(WireError::new(
                ErrorCode::Internal,
                "accept_postcopy_resume called after OPEN was answered",
            ));
        }
        self.postcopy = true;
        self.resume_ok = true;
        Ok(())
    }

    /// The region's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the owner's side of the stream stands.
    pub fn state(&self) -> OwnerState {
        self.state
    }

    /// Hash of each chunk as last sent; the hash detector compares the region against these.
    pub fn known_hashes(&self) -> &[u64] {
        &self.known
    }

    /// The newest generation started.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Refuses, with NOT_DURABLE, a replica that does not promise to acknowledge only what is on
    /// its stable storage (STATE flag DURABLE, spec §8.4): its ACKs then mean durable.
    pub fn set_require_durable(&mut self, require: bool) {
        self.require_durable = require;
    }

    /// Sends `epoch`, this owner's ownership epoch (never 0), in OPEN: only where the EPOCH
    /// feature is negotiated (spec §8.8). Call it before the first frame goes out; it queues
    /// OPEN again with the epoch.
    pub fn set_epoch(&mut self, epoch: Option<u64>) -> Result<(), WireError> {
        if epoch == Some(0) {
            return Err(WireError::new(ErrorCode::Internal, "ownership epoch 0"));
        }
        if !matches!(self.state, OwnerState::Opening | OwnerState::Probing { .. }) {
            return Err(WireError::new(
                ErrorCode::Internal,
                "set_epoch called after OPEN was answered",
            ));
        }
        self.epoch = epoch;
        self.queued.clear();
        self.queue_open();
        Ok(())
    }

    /// The ownership epoch OPEN carries; a peer taking a handoff of it owns the next (spec §8.8).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Whether the replica on this stream acknowledges only what is on its stable storage.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// The newest generation the replica acknowledged on this stream.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Chunks changed (or found different by reconciliation) and not yet in a round.
    pub fn pending(&self) -> &DirtySet {
        &self.pending
    }

    /// Chunks waiting to be sent (pending plus the rest of the round).
    pub fn backlog(&self) -> u64 {
        self.pending.count() + self.round.count()
    }

    /// Bytes of CHUNK frames encoded so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// True when the replica acknowledged everything and nothing is waiting: the replica matches
    /// the owner as of the last detector report.
    pub fn is_synced(&self) -> bool {
        self.state == OwnerState::Streaming
            && !self.in_round
            && self.pending.is_empty()
            && self.acked == self.generation
            && self.urgent.is_empty()
            && self.background.is_empty()
    }

    /// Adds the detector's report of changed chunks.
    pub fn on_dirty(&mut self, dirty: &DirtySet) {
        self.pending.union_with(dirty);
    }

    /// Marks chunks dirty by index range (for precise detectors).
    pub fn mark_dirty(&mut self, chunks: std::ops::Range<u64>) {
        self.pending.insert_range(chunks);
    }

    /// Asks for a handoff: the owner finishes sending and waits for the last acknowledgement,
    /// then offers ownership. The caller must have stopped writers and reported their last
    /// changes with [`Owner::on_dirty`] first.
    pub fn begin_handoff(&mut self) -> Result<(), WireError> {
        match self.state {
            OwnerState::Streaming => {
                self.state = OwnerState::Draining;
                self.postcopy = false;
                Ok(())
            }
            s => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("cannot hand off in state {s:?}"),
            )),
        }
    }

    /// Asks for a post-copy handoff (spec §8.10): the round in progress is cut short and
    /// committed as far as it was sent, and once that is acknowledged, STALE names every chunk
    /// still pending and HANDOFF{POSTCOPY} offers ownership. After HANDOFF_ACK this owner serves
    /// the new owner's FETCHes ([`OwnerState::Serving`]). Only where the POSTCOPY feature is
    /// negotiated; the caller must have stopped writers and reported their last changes first.
    pub fn begin_postcopy(&mut self) -> Result<(), WireError> {
        match self.state {
            OwnerState::Streaming => {
                self.state = OwnerState::Draining;
                self.postcopy = true;
                self.stale_cursor = 0;
                Ok(())
            }
            s => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("cannot hand off in state {s:?}"),
            )),
        }
    }

    /// The replica ended the stream cleanly. In [`OwnerState::Serving`] that is the end of a
    /// post-copy handoff: the new owner holds every chunk (spec §8.10), and this returns the
    /// handoff's generation. Anywhere else the stream ended too early: `None`.
    pub fn finish(&mut self) -> Option<u64> {
        match self.state {
            OwnerState::Serving { generation } => {
                self.state = OwnerState::HandedOff;
                Some(generation)
            }
            _ => None,
        }
    }

    /// Handles one frame from the replica.
    pub fn handle(&mut self, frame: &Frame<'_>) -> Result<OwnerEvent, WireError> {
        frame.check_geometry(&self.geom)?;
        // FETCH_PART is an urgent FETCH of its chunk here; which bytes the reader waits for
        // matters only to the fetch lane (spec §8.7).
        let frame = match (*frame, self.state) {
            (
                Frame::FetchPart { index, .. },
                OwnerState::Streaming | OwnerState::Draining | OwnerState::Serving { .. },
            ) => Frame::Fetch {
                first: index,
                count: 1,
                urgent: true,
            },
            (f, _) => f,
        };
        match (frame, self.state) {
            // The probe's answer: the replica took ownership before the stream broke.
            (Frame::Error { code, .. }, OwnerState::Probing { generation })
                if code == ErrorCode::HandedOver as u32 =>
            {
                self.state = OwnerState::HandedOff;
                Ok(OwnerEvent::HandedOff { generation })
            }
            // The probe's answer from a new owner still fetching after a post-copy handoff at
            // `generation`: serve it again (spec §8.10, recovery).
            (Frame::HandoffAck { generation: g }, OwnerState::Probing { generation })
                if self.postcopy && g == generation =>
            {
                self.serve(generation);
                Ok(OwnerEvent::HandedOff { generation })
            }
            // A restarted old owner's OPEN, answered by a new owner still fetching.
            (Frame::HandoffAck { generation }, OwnerState::Opening) if self.resume_ok => {
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
                // A probe answered with STATE: the replica did not take ownership (it answers
                // OPEN only once no older stream can deliver the lost HANDOFF, spec §8.6).
                OwnerState::Opening | OwnerState::Probing { .. },
            ) => {
                if !empty && chunk_count != self.geom.chunk_count() {
                    return Err(WireError::new(
                        ErrorCode::BadGeometry,
                        format!(
                            "replica announces {chunk_count} chunks, region has {}",
                            self.geom.chunk_count()
                        ),
                    ));
                }
                if epoch != self.epoch {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "STATE names ownership epoch {epoch:?}, the OPEN {:?}",
                            self.epoch
                        ),
                    ));
                }
                if self.require_durable && !durable {
                    return Err(WireError::new(
                        ErrorCode::NotDurable,
                        "durable acknowledgements are required, and the replica acknowledges \
                         generations before they reach its stable storage",
                    ));
                }
                self.durable = durable;
                self.adopt_replica_generation(generation)?;
                if empty {
                    let before = self.pending.count();
                    self.pending.insert_range(0..self.geom.chunk_count());
                    self.state = OwnerState::Streaming;
                    return Ok(OwnerEvent::Reconciled {
                        differing: self.pending.count() - before,
                        replica_generation: generation,
                    });
                }
                self.state = OwnerState::Reconciling {
                    next: 0,
                    replica_generation: generation,
                };
                Ok(OwnerEvent::None)
            }
            (
                Frame::Hashes { first, hashes },
                OwnerState::Reconciling {
                    next,
                    replica_generation,
                },
            ) => {
                if first != next {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!("HASHES from chunk {first}, expected {next}"),
                    ));
                }
                for (i, h) in (first..).zip(hashes.iter()) {
                    if self.known[i as usize] != h {
                        self.pending.insert(i);
                    }
                }
                let next = first + hashes.len() as u64;
                if next == self.geom.chunk_count() {
                    self.state = OwnerState::Streaming;
                    return Ok(OwnerEvent::Reconciled {
                        differing: self.pending.count(),
                        replica_generation,
                    });
                }
                self.state = OwnerState::Reconciling {
                    next,
                    replica_generation,
                };
                Ok(OwnerEvent::None)
            }
            (
                Frame::Ack { generation },
                OwnerState::Streaming | OwnerState::Draining | OwnerState::HandingOff { .. },
            ) => {
                let committed = self.committed;
                if generation <= self.acked || generation > committed {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "ACK of generation {generation}; acknowledged {}, committed {committed}",
                            self.acked
                        ),
                    ));
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
                OwnerState::Streaming | OwnerState::Draining | OwnerState::Serving { .. },
            ) => {
                let q = if urgent {
                    &mut self.urgent
                } else {
                    &mut self.background
                };
                // Bounded: at most one queued entry per chunk per queue is useful, so cap the
                // queue at the chunk count and drop what would overflow (the replica re-asks).
                // Chunks already sent on this stream are on their way: not queued again.
                let room = (self.geom.chunk_count() as usize).saturating_sub(q.len());
                let on_stream = &self.on_stream;
                q.extend(
                    (first..first + count as u64)
                        .filter(|&i| !on_stream.contains(i))
                        .take(room),
                );
                Ok(OwnerEvent::None)
            }
            // A FETCH that crossed HANDOFF (a replica's read just before it took the handoff):
            // dropped. A post-copy new owner asks again for every chunk it lacks, and after a
            // plain handoff it lacks none (spec §8.1, MODEL.md finding 3).
            (Frame::Fetch { .. } | Frame::FetchPart { .. }, OwnerState::HandingOff { .. }) => {
                Ok(OwnerEvent::None)
            }
            (Frame::HandoffAck { generation }, OwnerState::HandingOff { generation: g })
                if generation == g =>
            {
                if self.postcopy {
                    self.serve(generation);
                } else {
                    self.state = OwnerState::HandedOff;
                }
                Ok(OwnerEvent::HandedOff { generation })
            }
            (f, s) => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "frame type {:#04x} unexpected in owner state {s:?}",
                    f.kind()
                ),
            )),
        }
    }

    /// Enters Serving after a post-copy HANDOFF_ACK: nothing sent before it answers a FETCH any
    /// more (the chunks the new owner asks for are exactly those whose copies it holds are stale).
    fn serve(&mut self, generation: u64) {
        self.state = OwnerState::Serving { generation };
        self.on_stream.clear();
        self.urgent.clear();
        self.background.clear();
    }

    /// Takes the generation the replica reports holding: numbering continues above it, and the
    /// next round is committed even when empty. Reconciliation (and any FETCHED chunk that landed
    /// outside a round before the stream broke) may have changed what the replica holds without a
    /// COMMIT naming it; the new generation names the reconciled content, so an ACK or a HANDOFF
    /// after a reconnect always describes the bytes the replica holds (MODEL.md, findings 1-2).
    /// The last generation numbers can never be followed by a round, so a replica claiming them
    /// is refused (spec §8.4).
    fn adopt_replica_generation(&mut self, replica: u64) -> Result<(), WireError> {
        if replica >= MAX_GENERATION {
            return Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("replica claims generation {replica}; no round can follow it"),
            ));
        }
        if replica > self.generation {
            self.generation = replica;
        }
        self.acked = replica;
        self.committed = replica;
        self.needs_commit = true;
        Ok(())
    }

    /// The next frame or fetched chunk to send, if any, but never a round's chunk or anything
    /// that starts or ends a round: for a sender that paces rounds (a rate limit) and still
    /// answers FETCHes at once. [`Owner::poll_transmit`] returns these first, too.
    pub fn poll_fetched(&mut self) -> Option<Transmit> {
        if let Some(f) = self.queued.pop_front() {
            return Some(Transmit::Frame(f));
        }
        if !matches!(
            self.state,
            OwnerState::Streaming | OwnerState::Draining | OwnerState::Serving { .. }
        ) {
            return None;
        }
        while let Some(index) = self
            .urgent
            .pop_front()
            .or_else(|| self.background.pop_front())
        {
            // Asked for twice (urgently after read-ahead), or sent since it was asked for.
            if self.on_stream.contains(index) {
                continue;
            }
            return Some(Transmit::Chunk {
                index,
                fetched: true,
            });
        }
        None
    }

    /// The next thing to send, if any. Fetched chunks overtake the round in progress; a new round
    /// starts when the previous one is committed and changes are pending.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.poll_fetched() {
            return Some(t);
        }
        if !matches!(self.state, OwnerState::Streaming | OwnerState::Draining) {
            return None;
        }
        if self.postcopy && self.state == OwnerState::Draining {
            return self.poll_postcopy_drain();
        }
        if !self.in_round
            && (!self.pending.is_empty() || self.needs_commit)
            && self.generation < MAX_GENERATION
        {
            self.round = self.pending.take();
            self.in_round = true;
            self.needs_commit = false;
            self.cursor = 0;
            self.generation += 1; // below MAX_GENERATION, checked above

            self.summary.reset();
        }
        if self.in_round {
            if let Some(index) = self.round.next_set(self.cursor) {
                self.cursor = index + 1;
                return Some(Transmit::Chunk {
                    index,
                    fetched: false,
                });
            }
            return Some(self.close_round());
        }
        if self.state == OwnerState::Draining && self.acked == self.generation {
            return Some(self.offer());
        }
        None
    }

    /// HANDOFF{G} (with POSTCOPY after a post-copy drain) → HandingOff(G).
    fn offer(&mut self) -> Transmit {
        self.state = OwnerState::HandingOff {
            generation: self.generation,
        };
        Transmit::Frame(
            Frame::Handoff {
                generation: self.generation,
                postcopy: self.postcopy,
            }
            .to_vec(),
        )
    }

    /// Ends the round of generation G with its COMMIT, of the chunks sent in it.
    fn close_round(&mut self) -> Transmit {
        self.in_round = false;
        self.committed = self.generation;
        Transmit::Frame(
            Frame::Commit {
                generation: self.generation,
                count: self.summary.count(),
                summary: self.summary.digest(),
            }
            .to_vec(),
        )
    }

    /// Draining for a post-copy handoff: the round in progress ends where it is, with a COMMIT of
    /// what it sent (the rest goes back to pending); a commit still owed is made, empty; once
    /// every COMMIT is acknowledged, STALE names each run of pending chunks, then HANDOFF.
    fn poll_postcopy_drain(&mut self) -> Option<Transmit> {
        if self.in_round {
            let rest = self.round.take();
            self.pending.union_with(&rest);
            return Some(self.close_round());
        }
        if self.needs_commit && self.generation < MAX_GENERATION {
            self.needs_commit = false;
            self.generation += 1;
            self.summary.reset();
            return Some(self.close_round());
        }
        if self.acked != self.generation {
            return None;
        }
        // A run is at most MAX_CHUNKS (2^24) long, so its count fits STALE's u32.
        if let Some(first) = self.pending.next_set(self.stale_cursor) {
            let end = self.pending.next_clear(first);
            self.stale_cursor = end;
            return Some(Transmit::Frame(
                Frame::Stale {
                    first,
                    count: (end - first) as u32,
                }
                .to_vec(),
            ));
        }
        Some(self.offer())
    }

    /// Records that chunk `index` is sent with bytes `data` (read by the caller just now) and
    /// returns its CHUNK frame header and whether `data` must follow it (false for a zero chunk).
    pub fn encode_chunk(
        &mut self,
        index: u64,
        fetched: bool,
        data: &[u8],
    ) -> ([u8; HEADER_LEN + CHUNK_HEADER_LEN], bool) {
        debug_assert_eq!(data.len(), self.geom.chunk_len(index));
        let h = chunk_hash(data);
        let zero = h == self.zero.of(index) && is_zero(data);
        self.on_stream.insert(index);
        let wire_hash = if zero { 0 } else { h };
        self.known[index as usize] = h;
        if fetched {
            // Fresh bytes now supersede any pending resend of this chunk. Outside a round they
            // belong to no generation yet: close one (even empty) after them, so the next
            // generation, and a HANDOFF naming it, covers them (spec §8.3, MODEL.md finding 1).
            self.pending.remove(index);
            if self.in_round && index >= self.cursor {
                self.round.remove(index);
            }
            if !self.in_round {
                self.needs_commit = true;
            }
        } else {
            self.round.remove(index);
            self.summary.add(index, wire_hash);
        }
        let payload = if zero { 0 } else { data.len() };
        self.bytes_sent += (HEADER_LEN + CHUNK_HEADER_LEN + payload) as u64;
        (
            chunk_header(index, wire_hash, zero, fetched, payload),
            !zero,
        )
    }
}
