//! The replica role's state machine for one region stream, eager or lazy (spec/PROTOCOL.md §8.2,
//! §8.3).
//!
//! The replica answers OPEN with what it holds (its chunk hashes, or nothing), verifies every chunk
//! against its hash and every generation against its summary, and acknowledges a generation only
//! after the caller applied all of its chunks: writes are handed out as events in stream order,
//! and the ACK is queued only when COMMIT is handled, after every earlier write event.

use crate::dirty::DirtySet;
use crate::geometry::Geometry;
use crate::hash::{chunk_hash, Summary};
use crate::wire::{ErrorCode, Frame, HashList, WireError, MAX_BODY};
use std::collections::VecDeque;

/// Where the replica's side of the stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    /// Waiting for OPEN (after sending MOUNT, for a lazy mount).
    AwaitOpen,
    /// OPEN handled; waiting for the caller to describe the local copy ([`Replica::local_state`]).
    AwaitLocal,
    /// Receiving generations.
    Receiving,
    /// Ownership accepted in a post-copy HANDOFF (spec §8.10) while chunks were still missing:
    /// this peer owns the region and fetches them from the old owner on this stream. Readers and
    /// partial writers of a missing chunk wait for it; a chunk arriving after this peer wrote it
    /// whole ([`Replica::local_write`]) is dropped. Once none is missing: BecameOwner.
    PostCopy,
    /// Ownership accepted: the caller now runs an owner on this stream.
    BecameOwner,
}

/// What the replica holds locally when the region opens.
pub enum Local<'a> {
    /// The hash of every chunk held, indexed by chunk.
    Hashes(&'a [u64]),
    /// Nothing usable (a new replica); the owner will send everything.
    Empty,
    /// Nothing yet, and reads will FETCH chunks on demand while the owner pushes the rest.
    Lazy,
}

/// What a received frame asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplicaEvent<'a> {
    /// Nothing the caller needs to act on.
    None,
    /// The owner opened region `name` with this geometry; create or check the local copy, then call
    /// [`Replica::local_state`].
    Opened {
        /// Region name (spec §5.3).
        name: &'a str,
        /// The region's geometry, from OPEN's size and chunk shift.
        geometry: Geometry,
        /// The owner's generation counter from OPEN; informational.
        generation: u64,
        /// The owner's ownership epoch, where the EPOCH feature is negotiated: the caller admits
        /// or fences it (spec §8.8) before [`Replica::local_state`], whose STATE echoes it.
        epoch: Option<u64>,
    },
    /// Write chunk `index`: `data`, or zeros when `None`. Verified against its hash already.
    Write {
        /// Chunk index.
        index: u64,
        /// The chunk's bytes, or `None` for zeros.
        data: Option<&'a [u8]>,
    },
    /// Generation `generation` is complete and verified; its ACK is queued.
    Committed {
        /// The generation committed.
        generation: u64,
    },
    /// Ownership passed to this peer at `generation`; HANDOFF_ACK is queued.
    BecameOwner {
        /// The generation of the HANDOFF accepted.
        generation: u64,
    },
    /// The owner reported an error and will close the stream.
    PeerError {
        /// Error code (spec §7), kept raw.
        code: u32,
        /// The owner's human-readable reason.
        reason: &'a str,
    },
}

/// What a valid frame from a fetch lane (spec §8.7) asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneEvent<'a> {
    /// The region stream's copy arrived first: nothing to do.
    Discard,
    /// Show chunk `index` to readers: `data`, or zeros when `None`. Verified already.
    Chunk {
        /// Chunk index.
        index: u64,
        /// The chunk's bytes, or `None` for zeros.
        data: Option<&'a [u8]>,
    },
    /// Show bytes `offset .. offset + len` of chunk `index` to readers: `data`, or zeros when
    /// `None`. Verified already.
    Part {
        /// Chunk index.
        index: u64,
        /// Offset within the chunk of the first byte.
        offset: u32,
        /// Number of bytes.
        len: u32,
        /// The bytes, or `None` for zeros.
        data: Option<&'a [u8]>,
    },
}

/// One region's replica side.
pub struct Replica {
    state: ReplicaState,
    geom: Option<Geometry>,
    /// Chunks held, for a lazy replica or one told of stale chunks (`None` when it holds every
    /// chunk).
    present: Option<DirtySet>,
    requested: Option<DirtySet>,
    summary: Summary,
    committed: u64,
    queued: VecDeque<Vec<u8>>,
    max_body: u32,
    durable: bool,
    /// The OPEN's ownership epoch, echoed in STATE (spec §8.8).
    epoch: Option<u64>,
    /// Ownership was taken with chunks missing (spec §8.10): copies of them may still arrive,
    /// and are dropped once the chunk is held, also after the last one arrived.
    postcopy: bool,
}

impl Replica {
    /// A replica that waits for the owner's OPEN. `committed` is the last generation it
    /// acknowledged before (0 when new).
    pub fn new(committed: u64) -> Self {
        Replica {
            state: ReplicaState::AwaitOpen,
            geom: None,
            present: None,
            requested: None,
            summary: Summary::new(),
            committed,
            queued: VecDeque::new(),
            max_body: MAX_BODY,
            durable: false,
            epoch: None,
            postcopy: false,
        }
    }

    /// A lazy replica that asks the owner for region `name` (queues MOUNT).
    pub fn mount(name: &str) -> Result<Self, WireError> {
        crate::wire::check_name(name)?;
        let mut r = Replica::new(0);
        r.queued.push_back(Frame::Mount { name }.to_vec());
        Ok(r)
    }

    /// Limits HASHES frames to the peer's negotiated body size.
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body;
    }

    /// Promises durable acknowledgements in STATE (flag DURABLE, spec §8.4): the caller then puts
    /// every write of a generation on stable storage after [`ReplicaEvent::Committed`] and before
    /// it sends the ACK that event queued. Only where the DURABLE feature is negotiated.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Where the replica's side of the stream stands.
    pub fn state(&self) -> ReplicaState {
        self.state
    }

    /// The region's geometry, once OPEN was handled.
    pub fn geometry(&self) -> Option<&Geometry> {
        self.geom.as_ref()
    }

    /// The last generation acknowledged.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Whether chunk `index` is held (always true for an eager replica).
    pub fn is_present(&self, index: u64) -> bool {
        self.present.as_ref().is_none_or(|p| p.contains(index))
    }

    /// The chunks not held (none when every chunk is, or before OPEN).
    pub fn missing_set(&self) -> DirtySet {
        match (&self.present, &self.geom) {
            (Some(p), _) => p.complement(),
            (None, g) => DirtySet::new(g.map_or(0, |g| g.chunk_count())),
        }
    }

    /// Chunks still missing: a lazy replica's not yet received, a post-copy one's stale.
    pub fn missing(&self) -> u64 {
        match (&self.present, &self.geom) {
            (Some(p), Some(g)) => g.chunk_count() - p.count(),
            _ => 0,
        }
    }

    /// The generation the local copy holds, as the caller persisted it (after
    /// [`ReplicaEvent::Opened`], before [`Replica::local_state`]): STATE reports it, and later
    /// COMMITs must be above it.
    pub fn set_committed(&mut self, generation: u64) -> Result<(), WireError> {
        if self.state != ReplicaState::AwaitLocal {
            return Err(WireError::new(
                ErrorCode::Internal,
                "set_committed called outside AwaitLocal",
            ));
        }
        self.committed = generation;
        Ok(())
    }

    /// The geometry OPEN announced, while the caller is to describe the local copy (AwaitLocal);
    /// else an error naming `call`, made at the wrong time.
    fn opened(&self, call: &str) -> Result<Geometry, WireError> {
        match (self.state, self.geom) {
            (ReplicaState::AwaitLocal, Some(g)) => Ok(g),
            _ => Err(WireError::new(
                ErrorCode::Internal,
                format!("{call} called before OPEN"),
            )),
        }
    }

    /// Describes the local copy after [`ReplicaEvent::Opened`]; queues STATE and HASHES.
    pub fn local_state(&mut self, local: Local<'_>) -> Result<(), WireError> {
        let geom = self.opened("local_state")?;
        let n = geom.chunk_count();
        match local {
            Local::Hashes(hashes) => {
                if hashes.len() as u64 != n {
                    return Err(WireError::new(
                        ErrorCode::Internal,
                        "local hashes do not match the geometry",
                    ));
                }
                self.queued.push_back(
                    Frame::State {
                        empty: false,
                        lazy: false,
                        durable: self.durable,
                        generation: self.committed,
                        epoch: self.epoch,
                        chunk_count: n,
                    }
                    .to_vec(),
                );
                let per_frame = (self.max_body.saturating_sub(8) as usize / 8).max(1);
                let mut wire = Vec::new();
                for (k, part) in hashes.chunks(per_frame).enumerate() {
                    HashList::encode_into(part, &mut wire);
                    self.queued.push_back(
                        Frame::Hashes {
                            first: (k * per_frame) as u64,
                            hashes: HashList::from_wire(&wire).expect("whole hashes"),
                        }
                        .to_vec(),
                    );
                }
            }
            Local::Empty | Local::Lazy => {
                let lazy = matches!(local, Local::Lazy);
                if lazy {
                    self.present = Some(DirtySet::new(n));
                    self.requested = Some(DirtySet::new(n));
                }
                self.queued.push_back(
                    Frame::State {
                        empty: true,
                        lazy,
                        durable: self.durable,
                        generation: self.committed,
                        epoch: self.epoch,
                        chunk_count: 0,
                    }
                    .to_vec(),
                );
            }
        }
        self.state = ReplicaState::Receiving;
        Ok(())
    }

    /// For a lazy replica: asks urgently for chunk `index`, whose reader waits for bytes
    /// `offset .. offset + len` of it (FETCH_PART): the owner may send those first, as a PART on
    /// the fetch lane. Only when the peer negotiated FETCH_PARTS; nothing if the chunk is held or
    /// the range is not inside it.
    pub fn fetch_part(&mut self, index: u64, offset: u32, len: u32) {
        let (Some(present), Some(requested), Some(geom)) =
            (&self.present, &mut self.requested, &self.geom)
        else {
            return;
        };
        let inside = index < geom.chunk_count()
            && len > 0
            && offset as u64 + len as u64 <= geom.chunk_len(index) as u64;
        if !inside || present.contains(index) {
            return;
        }
        requested.insert(index);
        self.queued
            .push_back(Frame::FetchPart { index, offset, len }.to_vec());
    }

    /// For a lazy replica: asks for chunks `first..first+count` not yet held or requested. Urgent
    /// requests are for blocked readers and overtake everything the owner has queued.
    pub fn fetch(&mut self, first: u64, count: u32, urgent: bool) {
        let (Some(present), Some(requested), Some(geom)) =
            (&self.present, &mut self.requested, &self.geom)
        else {
            return;
        };
        let end = first.saturating_add(count as u64).min(geom.chunk_count());
        let mut i = first;
        while i < end {
            if present.contains(i) || (requested.contains(i) && !urgent) {
                i += 1;
                continue;
            }
            let start = i;
            // A non-urgent run also ends at a chunk already requested: read-ahead asks for each
            // chunk at most once (spec §8.3).
            while i < end && !present.contains(i) && (urgent || !requested.contains(i)) {
                requested.insert(i);
                i += 1;
            }
            self.queued.push_back(
                Frame::Fetch {
                    first: start,
                    count: (i - start) as u32,
                    urgent,
                }
                .to_vec(),
            );
        }
    }

    /// Handles one frame from the owner.
    pub fn handle<'a>(&mut self, frame: &Frame<'a>) -> Result<ReplicaEvent<'a>, WireError> {
        if let Some(g) = &self.geom {
            frame.check_geometry(g)?;
        }
        match (*frame, self.state) {
            (Frame::Error { code, reason }, _) => Ok(ReplicaEvent::PeerError { code, reason }),
            (
                Frame::Open {
                    size,
                    generation,
                    chunk_shift,
                    name,
                    epoch,
                },
                ReplicaState::AwaitOpen,
            ) => {
                let geometry = Geometry::new(size, chunk_shift)?;
                self.geom = Some(geometry);
                self.epoch = epoch;
                self.state = ReplicaState::AwaitLocal;
                Ok(ReplicaEvent::Opened {
                    name,
                    geometry,
                    generation,
                    epoch,
                })
            }
            (
                Frame::Chunk {
                    index,
                    hash,
                    zero,
                    fetched,
                    payload,
                },
                ReplicaState::Receiving,
            ) => {
                verify(index, hash, zero, payload, "chunk")?;
                if !fetched {
                    self.summary.add(index, hash);
                }
                if let Some(p) = &mut self.present {
                    p.insert(index);
                }
                Ok(ReplicaEvent::Write {
                    index,
                    data: (!zero).then_some(payload),
                })
            }
            (
                Frame::Commit {
                    generation,
                    count,
                    summary,
                },
                ReplicaState::Receiving,
            ) => {
                if generation <= self.committed {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "COMMIT of generation {generation}, already at {}",
                            self.committed
                        ),
                    ));
                }
                if count != self.summary.count() || summary != self.summary.digest() {
                    return Err(WireError::new(
                        ErrorCode::SummaryMismatch,
                        format!(
                            "generation {generation}: {count} chunks announced, {} received, or summary differs",
                            self.summary.count()
                        ),
                    ));
                }
                self.summary.reset();
                self.committed = generation;
                self.queued.push_back(Frame::Ack { generation }.to_vec());
                Ok(ReplicaEvent::Committed { generation })
            }
            (
                Frame::Handoff {
                    generation,
                    postcopy,
                },
                ReplicaState::Receiving,
            ) => {
                if generation != self.committed || (!postcopy && self.missing() != 0) {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "HANDOFF at generation {generation}, but this replica holds {} with {} chunks missing",
                            self.committed,
                            self.missing()
                        ),
                    ));
                }
                self.take_ownership(generation);
                Ok(ReplicaEvent::BecameOwner { generation })
            }
            (Frame::Stale { first, count }, ReplicaState::Receiving) => {
                let n = self.geom.map_or(0, |g| g.chunk_count());
                let present = self.present.get_or_insert_with(|| DirtySet::full(n));
                // Checked against the geometry above.
                for i in first..first + count as u64 {
                    present.remove(i);
                }
                self.requested.get_or_insert_with(|| DirtySet::new(n));
                Ok(ReplicaEvent::None)
            }
            // The old owner's answer to a FETCH after a post-copy handoff: applied unless this
            // peer holds the chunk already (it wrote it whole, or an earlier copy arrived); a
            // late copy never overwrites the new owner's write (spec §8.10).
            (
                Frame::Chunk {
                    index,
                    hash,
                    zero,
                    fetched: true,
                    payload,
                },
                ReplicaState::PostCopy | ReplicaState::BecameOwner,
            ) if self.postcopy => {
                verify(index, hash, zero, payload, "chunk")?;
                if self.is_present(index) {
                    return Ok(ReplicaEvent::None);
                }
                self.arrived(index);
                Ok(ReplicaEvent::Write {
                    index,
                    data: (!zero).then_some(payload),
                })
            }
            (f, s) => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "frame type {:#04x} unexpected in replica state {s:?}",
                    f.kind()
                ),
            )),
        }
    }

    /// Handles a frame that arrived on a fetch lane of this region stream, after the lane's LANE
    /// frame (spec §8.7). Only verified FETCHED chunks and parts of chunks that this lazy replica
    /// asked for are accepted. They are to be shown while no copy of the chunk has arrived on the
    /// region stream, and discarded after: the region stream's copies are newer than everything
    /// on the lane. Nothing from a lane makes a chunk present for the protocol; the region
    /// stream's copy of it follows.
    pub fn handle_lane<'a>(&mut self, frame: &Frame<'a>) -> Result<LaneEvent<'a>, WireError> {
        let (Some(geom), Some(present), Some(requested), ReplicaState::Receiving) =
            (&self.geom, &self.present, &self.requested, self.state)
        else {
            return Err(WireError::new(
                ErrorCode::ProtocolViolation,
                "a fetch lane serves only a lazy replica that is receiving",
            ));
        };
        frame.check_geometry(geom)?;
        let (index, hash, zero, payload, part) = match *frame {
            Frame::Chunk {
                index,
                hash,
                zero,
                fetched: true,
                payload,
            } => (index, hash, zero, payload, None),
            Frame::Part {
                index,
                offset,
                len,
                hash,
                zero,
                payload,
            } => (index, hash, zero, payload, Some((offset, len))),
            _ => {
                return Err(WireError::new(
                    ErrorCode::ProtocolViolation,
                    format!(
                        "frame type {:#04x} on a fetch lane; only FETCHED chunks and parts travel there",
                        frame.kind()
                    ),
                ))
            }
        };
        if !requested.contains(index) {
            return Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("lane copy of chunk {index}, which was never fetched"),
            ));
        }
        verify(index, hash, zero, payload, "lane copy of chunk")?;
        if present.contains(index) {
            return Ok(LaneEvent::Discard);
        }
        let data = (!zero).then_some(payload);
        Ok(match part {
            None => LaneEvent::Chunk { index, data },
            Some((offset, len)) => LaneEvent::Part {
                index,
                offset,
                len,
                data,
            },
        })
    }

    /// Accepts ownership at `generation`: queues HANDOFF_ACK and, after a post-copy HANDOFF with
    /// chunks missing, a background FETCH of each run of them (spec §8.10).
    fn take_ownership(&mut self, generation: u64) {
        self.queued
            .push_back(Frame::HandoffAck { generation }.to_vec());
        if self.missing() == 0 {
            self.state = ReplicaState::BecameOwner;
            return;
        }
        self.state = ReplicaState::PostCopy;
        self.postcopy = true;
        if let Some(r) = &mut self.requested {
            r.clear();
        }
        // A run is at most MAX_CHUNKS (2^24) long, so its count fits FETCH's u32.
        for run in self.missing_set().runs() {
            self.fetch(run.start, (run.end - run.start) as u32, false);
        }
    }

    /// Chunk `index` is held from now on; in PostCopy, the last one makes this peer a complete
    /// owner.
    fn arrived(&mut self, index: u64) {
        if let Some(p) = &mut self.present {
            p.insert(index);
        }
        if self.state == ReplicaState::PostCopy && self.missing() == 0 {
            self.state = ReplicaState::BecameOwner;
        }
    }

    /// In PostCopy: this peer, the owner now, wrote chunk `index` whole (or wrote into it after
    /// it arrived): it is held, and a copy still on its way from the old owner is dropped. Returns
    /// whether it was missing. The caller writes a part of a missing chunk only after the chunk
    /// arrived.
    pub fn local_write(&mut self, index: u64) -> bool {
        let inside = self.geom.is_some_and(|g| index < g.chunk_count());
        if self.state != ReplicaState::PostCopy || !inside || self.is_present(index) {
            return false;
        }
        self.arrived(index);
        true
    }

    /// Resumes a post-copy handoff at `generation` on a new stream (spec §8.10, recovery): the old
    /// owner's OPEN (its probe) was answered by this peer, which took ownership at `generation`
    /// and still misses `missing`. Called after [`ReplicaEvent::Opened`] instead of
    /// [`Replica::local_state`]; queues HANDOFF_ACK{generation} and the FETCHes of what is
    /// missing. The OPEN's geometry must be the region's, with `missing` of its chunk count.
    pub fn resume_postcopy(
        &mut self,
        generation: u64,
        missing: &DirtySet,
    ) -> Result<(), WireError> {
        let geom = self.opened("resume_postcopy")?;
        let n = geom.chunk_count();
        if missing.capacity() != n {
            return Err(WireError::new(
                ErrorCode::BadGeometry,
                format!(
                    "the region taken over has {} chunks, the OPEN {n}",
                    missing.capacity()
                ),
            ));
        }
        self.present = Some(missing.complement());
        self.requested = Some(DirtySet::new(n));
        self.committed = generation;
        self.take_ownership(generation);
        Ok(())
    }

    /// The next encoded frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.queued.pop_front()
    }
}

/// HASH_MISMATCH unless `payload` (of chunk `index`, `what` naming it in the reason) hashes to
/// `hash`; a ZERO chunk carries no payload to check.
fn verify(index: u64, hash: u64, zero: bool, payload: &[u8], what: &str) -> Result<(), WireError> {
    if !zero && chunk_hash(payload) != hash {
        return Err(WireError::new(
            ErrorCode::HashMismatch,
            format!("{what} {index} does not match its hash"),
        ));
    }
    Ok(())
}
