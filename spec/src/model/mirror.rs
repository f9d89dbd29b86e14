//! Abstract mirrors of [`memsync_protocol::Owner`] and [`memsync_protocol::Replica`].
//!
//! The real machines cannot be cloned or hashed, so the model checker keys its states by these
//! mirrors instead: each keeps exactly the fields of the real struct, in a compact form (a chunk's
//! bytes are one value, a dirty set is a bitmask, a running summary is the list of records it
//! hashed). Every transition the checker explores is also run on the real machines and compared
//! with the mirror's prediction (see [`super::real`]), so a mirror that drifts from the code fails
//! the check instead of silently checking something else.

use memsync_protocol::owner::MAX_GENERATION;
use memsync_protocol::ErrorCode;
use std::collections::VecDeque;

/// Chunks per region in the model.
pub const N: usize = 2;
/// The value of a chunk a lazy replica never received (its bytes are whatever the local file
/// held); owners never hold it.
pub const GARBAGE: u8 = 3;
/// A region's content: one fill value per chunk.
pub type Mem = [u8; N];
/// A set of chunks, one bit per chunk.
pub type Mask = u8;
/// Every chunk.
pub const ALL: Mask = (1 << N) - 1;
/// Bytes of each chunk: a full 4 KiB chunk and a short last one (the real geometry of
/// [`super::real::ctx`]).
pub const CHUNK_LEN: [u64; N] = [4096, 100];

/// One frame on a region stream, abstractly: chunk bytes and hashes are chunk values, a COMMIT
/// carries the records its summary hashes (count = their number).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Open {
        generation: u64,
    },
    State {
        empty: bool,
        lazy: bool,
        generation: u64,
        chunk_count: u64,
    },
    Hashes {
        first: u64,
        values: Vec<u8>,
    },
    /// A ZERO chunk when `value == 0`.
    Chunk {
        index: u64,
        value: u8,
        fetched: bool,
    },
    /// `records` are the `(index, value)` of the generation's round chunks in stream order (value 0
    /// stands for wire hash 0).
    Commit {
        generation: u64,
        records: Vec<(u64, u8)>,
    },
    Ack {
        generation: u64,
    },
    Fetch {
        first: u64,
        count: u32,
        urgent: bool,
    },
    /// An urgent FETCH of chunk `index` whose reader waits for bytes `offset .. offset + len`
    /// (FETCH_PARTS). The model has no fetch lane, so no PART ever answers it.
    FetchPart {
        index: u64,
        offset: u32,
        len: u32,
    },
    /// `postcopy`: the POSTCOPY flag (spec §8.10).
    Handoff {
        generation: u64,
        postcopy: bool,
    },
    HandoffAck {
        generation: u64,
    },
    /// Chunks `first .. first + count` are stale at the replica: not present from now on (a
    /// post-copy drain names what is pending with it, spec §8.10).
    Stale {
        first: u64,
        count: u32,
    },
    /// Not a frame: the replica ended the stream cleanly (QUIC FIN), once a post-copy new owner
    /// holds every chunk. Delivered after every frame it sent before; the owner calls `finish`.
    Fin,
}

impl Msg {
    /// The name PROTOCOL.md gives the frame type.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Open { .. } => "OPEN",
            Msg::State { .. } => "STATE",
            Msg::Hashes { .. } => "HASHES",
            Msg::Chunk { .. } => "CHUNK",
            Msg::Commit { .. } => "COMMIT",
            Msg::Ack { .. } => "ACK",
            Msg::Fetch { .. } => "FETCH",
            Msg::FetchPart { .. } => "FETCH_PART",
            Msg::Handoff { .. } => "HANDOFF",
            Msg::HandoffAck { .. } => "HANDOFF_ACK",
            Msg::Stale { .. } => "STALE",
            Msg::Fin => "FIN",
        }
    }

    /// Spec §5.14: chunk indices and ranges against a region of [`N`] chunks.
    fn check_geometry(&self) -> Result<(), ErrorCode> {
        let n = N as u64;
        let ok = match self {
            Msg::Chunk { index, .. } => *index < n,
            Msg::Hashes { first, values } => first + values.len() as u64 <= n,
            Msg::Fetch { first, count, .. } | Msg::Stale { first, count } => {
                first.checked_add(*count as u64).is_some_and(|e| e <= n)
            }
            Msg::FetchPart { index, offset, len } => {
                *index < n && *offset as u64 + *len as u64 <= CHUNK_LEN[*index as usize]
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(ErrorCode::OutOfRange)
        }
    }
}

fn bit(i: u64) -> Mask {
    1 << i
}

fn count(m: Mask) -> u64 {
    m.count_ones() as u64
}

/// The maximal runs of chunks in `m`, in increasing order (`DirtySet::runs`).
pub fn runs(m: Mask) -> Vec<std::ops::Range<u64>> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < N as u64 {
        if m & bit(i) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < N as u64 && m & bit(i) != 0 {
            i += 1;
        }
        v.push(start..i);
    }
    v
}

/// Mirror of [`memsync_protocol::OwnerState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerState {
    Opening,
    Reconciling { next: u64, replica_generation: u64 },
    Streaming,
    Draining,
    HandingOff { generation: u64 },
    Probing { generation: u64 },
    Serving { generation: u64 },
    HandedOff,
}

impl From<memsync_protocol::OwnerState> for OwnerState {
    fn from(s: memsync_protocol::OwnerState) -> Self {
        use memsync_protocol::OwnerState as R;
        match s {
            R::Opening => OwnerState::Opening,
            R::Reconciling {
                next,
                replica_generation,
            } => OwnerState::Reconciling {
                next,
                replica_generation,
            },
            R::Streaming => OwnerState::Streaming,
            R::Draining => OwnerState::Draining,
            R::HandingOff { generation } => OwnerState::HandingOff { generation },
            R::Probing { generation } => OwnerState::Probing { generation },
            R::HandedOff => OwnerState::HandedOff,
            R::Serving { generation } => OwnerState::Serving { generation },
        }
    }
}

/// Mirror of [`memsync_protocol::OwnerEvent`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnerEvent {
    None,
    Reconciled {
        differing: u64,
        replica_generation: u64,
    },
    Acked {
        generation: u64,
    },
    HandedOff {
        generation: u64,
    },
}

/// Mirror of [`memsync_protocol::Transmit`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transmit {
    Frame(Msg),
    Chunk { index: u64, fetched: bool },
}

/// Mirror of [`memsync_protocol::Owner`], field for field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// `K`: the value of each chunk as last sent (or confirmed held).
    pub known: Mem,
    pub pending: Mask,
    pub round: Mask,
    pub in_round: bool,
    pub needs_commit: bool,
    pub cursor: u64,
    pub summary: Vec<(u64, u8)>,
    pub generation: u64,
    /// The newest generation whose COMMIT went out on this stream (or that the replica reported).
    pub committed: u64,
    pub acked: u64,
    pub state: OwnerState,
    pub queued: VecDeque<Msg>,
    pub urgent: VecDeque<u64>,
    pub background: VecDeque<u64>,
    /// Chunks sent on this stream since it opened (round or FETCHED): a FETCH of one is answered
    /// by the copy in flight.
    pub on_stream: Mask,
    /// The handoff asked for is a post-copy one.
    pub postcopy: bool,
    /// In a post-copy Draining, the first chunk not yet named by STALE.
    pub stale_cursor: u64,
}

impl Owner {
    /// `Owner::new(geom, name, hashes(known), generation)` (the model never starts an owner at
    /// or above [`MAX_GENERATION`], which `Owner::new` refuses).
    pub fn new(known: Mem, generation: u64) -> Owner {
        assert!(generation < MAX_GENERATION);
        Owner {
            known,
            pending: 0,
            round: 0,
            in_round: false,
            needs_commit: false,
            cursor: 0,
            summary: Vec::new(),
            generation,
            committed: generation,
            acked: generation,
            state: OwnerState::Opening,
            queued: VecDeque::from([Msg::Open { generation }]),
            urgent: VecDeque::new(),
            background: VecDeque::new(),
            on_stream: 0,
            postcopy: false,
            stale_cursor: 0,
        }
    }

    pub fn restart(&mut self) -> Result<(), ErrorCode> {
        let next = match self.state {
            OwnerState::HandedOff => return Err(ErrorCode::ProtocolViolation),
            OwnerState::HandingOff { generation }
            | OwnerState::Probing { generation }
            | OwnerState::Serving { generation } => OwnerState::Probing { generation },
            _ => OwnerState::Opening,
        };
        self.pending |= std::mem::take(&mut self.round);
        self.in_round = false;
        self.needs_commit = false;
        self.cursor = 0;
        self.summary.clear();
        self.acked = self.generation;
        self.committed = self.generation;
        self.queued.clear();
        self.urgent.clear();
        self.background.clear();
        self.on_stream = 0;
        self.stale_cursor = 0;
        self.state = next;
        self.queued.push_back(Msg::Open {
            generation: self.generation,
        });
        Ok(())
    }

    pub fn backlog(&self) -> u64 {
        count(self.pending) + count(self.round)
    }

    pub fn is_synced(&self) -> bool {
        self.state == OwnerState::Streaming
            && !self.in_round
            && self.pending == 0
            && self.acked == self.generation
            && self.urgent.is_empty()
            && self.background.is_empty()
    }

    /// `on_dirty` and `mark_dirty` alike.
    pub fn dirty(&mut self, chunks: Mask) {
        self.pending |= chunks & ALL;
    }

    pub fn begin_handoff(&mut self) -> Result<(), ErrorCode> {
        match self.state {
            OwnerState::Streaming => {
                self.state = OwnerState::Draining;
                self.postcopy = false;
                Ok(())
            }
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    pub fn begin_postcopy(&mut self) -> Result<(), ErrorCode> {
        match self.state {
            OwnerState::Streaming => {
                self.state = OwnerState::Draining;
                self.postcopy = true;
                self.stale_cursor = 0;
                Ok(())
            }
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    pub fn finish(&mut self) -> Option<u64> {
        match self.state {
            OwnerState::Serving { generation } => {
                self.state = OwnerState::HandedOff;
                Some(generation)
            }
            _ => None,
        }
    }

    fn serve(&mut self, generation: u64) {
        self.state = OwnerState::Serving { generation };
        self.on_stream = 0;
        self.urgent.clear();
        self.background.clear();
    }

    fn adopt_replica_generation(&mut self, replica: u64) -> Result<(), ErrorCode> {
        if replica >= MAX_GENERATION {
            return Err(ErrorCode::ProtocolViolation);
        }
        if replica > self.generation {
            self.generation = replica;
        }
        self.acked = replica;
        self.committed = replica;
        self.needs_commit = true;
        Ok(())
    }

    pub fn handle(&mut self, msg: &Msg) -> Result<OwnerEvent, ErrorCode> {
        msg.check_geometry()?;
        // FETCH_PART is an urgent FETCH of its one chunk (spec §5.18).
        let as_fetch;
        let msg = match *msg {
            Msg::FetchPart { index, .. } => {
                as_fetch = Msg::Fetch {
                    first: index,
                    count: 1,
                    urgent: true,
                };
                &as_fetch
            }
            _ => msg,
        };
        match (msg, self.state) {
            // A FETCH that crossed HANDOFF is dropped (MODEL.md finding 3).
            (&Msg::Fetch { .. }, OwnerState::HandingOff { .. }) => Ok(OwnerEvent::None),
            (&Msg::HandoffAck { generation: g }, OwnerState::Probing { generation })
                if self.postcopy && g == generation =>
            {
                self.serve(generation);
                Ok(OwnerEvent::HandedOff { generation })
            }
            // HANDOFF_ACK in Opening is taken only after `accept_postcopy_resume` (a restarted
            // `peer migrate`), which the model does not call: owners are not restarted in
            // post-copy configurations, so here it is a violation, as in the core.
            (
                &Msg::State {
                    empty,
                    generation,
                    chunk_count,
                    ..
                },
                OwnerState::Opening | OwnerState::Probing { .. },
            ) => {
                if !empty && chunk_count != N as u64 {
                    return Err(ErrorCode::BadGeometry);
                }
                self.adopt_replica_generation(generation)?;
                if empty {
                    let before = count(self.pending);
                    self.pending = ALL;
                    self.state = OwnerState::Streaming;
                    return Ok(OwnerEvent::Reconciled {
                        differing: count(self.pending) - before,
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
                Msg::Hashes { first, values },
                OwnerState::Reconciling {
                    next,
                    replica_generation,
                },
            ) => {
                if *first != next {
                    return Err(ErrorCode::ProtocolViolation);
                }
                for (i, &v) in (*first..).zip(values) {
                    if self.known[i as usize] != v {
                        self.pending |= bit(i);
                    }
                }
                let next = first + values.len() as u64;
                if next == N as u64 {
                    self.state = OwnerState::Streaming;
                    return Ok(OwnerEvent::Reconciled {
                        differing: count(self.pending),
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
                &Msg::Ack { generation },
                OwnerState::Streaming | OwnerState::Draining | OwnerState::HandingOff { .. },
            ) => {
                if generation <= self.acked || generation > self.committed {
                    return Err(ErrorCode::ProtocolViolation);
                }
                self.acked = generation;
                Ok(OwnerEvent::Acked { generation })
            }
            (
                &Msg::Fetch {
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
                let room = N.saturating_sub(q.len());
                let on_stream = self.on_stream;
                q.extend(
                    (first..first + count as u64)
                        .filter(|&i| on_stream & bit(i) == 0)
                        .take(room),
                );
                Ok(OwnerEvent::None)
            }
            (&Msg::HandoffAck { generation }, OwnerState::HandingOff { generation: g })
                if generation == g =>
            {
                if self.postcopy {
                    self.serve(generation);
                } else {
                    self.state = OwnerState::HandedOff;
                }
                Ok(OwnerEvent::HandedOff { generation })
            }
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
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
            if self.on_stream & bit(index) != 0 {
                continue;
            }
            return Some(Transmit::Chunk {
                index,
                fetched: true,
            });
        }
        if !matches!(self.state, OwnerState::Streaming | OwnerState::Draining) {
            return None;
        }
        if self.postcopy && self.state == OwnerState::Draining {
            return self.poll_postcopy_drain();
        }
        if !self.in_round
            && (self.pending != 0 || self.needs_commit)
            && self.generation < MAX_GENERATION
        {
            self.round = std::mem::take(&mut self.pending);
            self.in_round = true;
            self.needs_commit = false;
            self.cursor = 0;
            self.generation += 1;
            self.summary.clear();
        }
        if self.in_round {
            if let Some(index) = (self.cursor..N as u64).find(|&i| self.round & bit(i) != 0) {
                self.cursor = index + 1;
                return Some(Transmit::Chunk {
                    index,
                    fetched: false,
                });
            }
            self.in_round = false;
            self.committed = self.generation;
            return Some(Transmit::Frame(Msg::Commit {
                generation: self.generation,
                records: self.summary.clone(),
            }));
        }
        if self.state == OwnerState::Draining && self.acked == self.generation {
            self.state = OwnerState::HandingOff {
                generation: self.generation,
            };
            return Some(Transmit::Frame(Msg::Handoff {
                generation: self.generation,
                postcopy: false,
            }));
        }
        None
    }

    fn poll_postcopy_drain(&mut self) -> Option<Transmit> {
        if self.in_round {
            self.pending |= std::mem::take(&mut self.round);
            self.in_round = false;
            self.committed = self.generation;
            return Some(Transmit::Frame(Msg::Commit {
                generation: self.generation,
                records: self.summary.clone(),
            }));
        }
        if self.needs_commit && self.generation < MAX_GENERATION {
            self.needs_commit = false;
            self.generation += 1;
            self.committed = self.generation;
            self.summary.clear();
            return Some(Transmit::Frame(Msg::Commit {
                generation: self.generation,
                records: Vec::new(),
            }));
        }
        if self.acked != self.generation {
            return None;
        }
        if let Some(run) = runs(self.pending)
            .into_iter()
            .find(|r| r.start >= self.stale_cursor)
        {
            self.stale_cursor = run.end;
            return Some(Transmit::Frame(Msg::Stale {
                first: run.start,
                count: (run.end - run.start) as u32,
            }));
        }
        self.state = OwnerState::HandingOff {
            generation: self.generation,
        };
        Some(Transmit::Frame(Msg::Handoff {
            generation: self.generation,
            postcopy: true,
        }))
    }

    /// Whether [`Owner::poll_transmit`] would return something (without its effects), or drop
    /// FETCH entries of chunks already sent on this stream: its only effect when it returns
    /// nothing, and one the model must take so that the owner can become synced.
    pub fn would_transmit(&self) -> bool {
        let fetches = !self.urgent.is_empty() || !self.background.is_empty();
        !self.queued.is_empty()
            || match self.state {
                OwnerState::Serving { .. } => fetches,
                OwnerState::Draining if self.postcopy => {
                    fetches
                        || self.in_round
                        || self.needs_commit && self.generation < MAX_GENERATION
                        || self.acked == self.generation
                }
                OwnerState::Streaming | OwnerState::Draining => {
                    fetches
                        || self.in_round
                        || (self.pending != 0 || self.needs_commit)
                            && self.generation < MAX_GENERATION
                        || self.state == OwnerState::Draining && self.acked == self.generation
                }
                _ => false,
            }
    }

    /// `encode_chunk(index, fetched, bytes)` for a chunk whose bytes are the fill `value`.
    pub fn encode_chunk(&mut self, index: u64, fetched: bool, value: u8) -> Msg {
        self.on_stream |= bit(index);
        self.known[index as usize] = value;
        if fetched {
            self.pending &= !bit(index);
            if self.in_round && index >= self.cursor {
                self.round &= !bit(index);
            }
            if !self.in_round {
                self.needs_commit = true;
            }
        } else {
            self.round &= !bit(index);
            self.summary.push((index, value));
        }
        Msg::Chunk {
            index,
            value,
            fetched,
        }
    }
}

/// Mirror of [`memsync_protocol::ReplicaState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaState {
    AwaitOpen,
    AwaitLocal,
    Receiving,
    PostCopy,
    BecameOwner,
}

impl From<memsync_protocol::ReplicaState> for ReplicaState {
    fn from(s: memsync_protocol::ReplicaState) -> Self {
        use memsync_protocol::ReplicaState as R;
        match s {
            R::AwaitOpen => ReplicaState::AwaitOpen,
            R::AwaitLocal => ReplicaState::AwaitLocal,
            R::Receiving => ReplicaState::Receiving,
            R::BecameOwner => ReplicaState::BecameOwner,
            R::PostCopy => ReplicaState::PostCopy,
        }
    }
}

/// Mirror of [`memsync_protocol::ReplicaEvent`] (`Write` carries the chunk's value; 0 is
/// `data: None`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaEvent {
    None,
    Opened {
        generation: u64,
    },
    Write {
        index: u64,
        value: u8,
    },
    Committed {
        generation: u64,
    },
    BecameOwner {
        generation: u64,
    },
    /// Not an event of the core: what `local_write` answered (whether the chunk was missing).
    LocalWrite {
        was_missing: bool,
    },
}

/// Mirror of [`memsync_protocol::Local`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Local {
    Hashes(Mem),
    Empty,
    Lazy,
}

/// Mirror of [`memsync_protocol::Replica`], field for field (`geom` is known once OPEN was
/// handled; the geometry itself is fixed in the model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    pub state: ReplicaState,
    pub geom: bool,
    pub present: Option<Mask>,
    pub requested: Option<Mask>,
    pub summary: Vec<(u64, u8)>,
    pub committed: u64,
    pub queued: VecDeque<Msg>,
    /// Ownership was taken with chunks missing (post-copy): copies of them may still arrive,
    /// and are dropped once the chunk is held.
    pub postcopy: bool,
}

impl Replica {
    pub fn new(committed: u64) -> Replica {
        Replica {
            state: ReplicaState::AwaitOpen,
            geom: false,
            present: None,
            requested: None,
            summary: Vec::new(),
            committed,
            queued: VecDeque::new(),
            postcopy: false,
        }
    }

    pub fn is_present(&self, index: u64) -> bool {
        self.present.is_none_or(|p| p & bit(index) != 0)
    }

    pub fn missing(&self) -> u64 {
        match (self.present, self.geom) {
            (Some(p), true) => N as u64 - count(p),
            _ => 0,
        }
    }

    pub fn local_state(&mut self, local: Local) -> Result<(), ErrorCode> {
        if !(self.state == ReplicaState::AwaitLocal && self.geom) {
            return Err(ErrorCode::Internal);
        }
        match local {
            Local::Hashes(values) => {
                self.queued.push_back(Msg::State {
                    empty: false,
                    lazy: false,
                    generation: self.committed,
                    chunk_count: N as u64,
                });
                // One HASHES frame: N hashes fit in any max_body.
                self.queued.push_back(Msg::Hashes {
                    first: 0,
                    values: values.to_vec(),
                });
            }
            Local::Empty | Local::Lazy => {
                let lazy = local == Local::Lazy;
                if lazy {
                    self.present = Some(0);
                    self.requested = Some(0);
                }
                self.queued.push_back(Msg::State {
                    empty: true,
                    lazy,
                    generation: self.committed,
                    chunk_count: 0,
                });
            }
        }
        self.state = ReplicaState::Receiving;
        Ok(())
    }

    /// `fetch_part`: an urgent FETCH_PART of chunk `index`, unless it is present or the bytes are
    /// not inside it.
    pub fn fetch_part(&mut self, index: u64, offset: u32, len: u32) {
        let (Some(present), Some(requested), true) = (self.present, &mut self.requested, self.geom)
        else {
            return;
        };
        let inside =
            index < N as u64 && len > 0 && offset as u64 + len as u64 <= CHUNK_LEN[index as usize];
        if !inside || present & bit(index) != 0 {
            return;
        }
        *requested |= bit(index);
        self.queued.push_back(Msg::FetchPart { index, offset, len });
    }

    pub fn fetch(&mut self, first: u64, count: u32, urgent: bool) {
        let (Some(present), Some(requested), true) = (self.present, &mut self.requested, self.geom)
        else {
            return;
        };
        let end = first.saturating_add(count as u64).min(N as u64);
        let mut i = first;
        while i < end {
            if present & bit(i) != 0 || (*requested & bit(i) != 0 && !urgent) {
                i += 1;
                continue;
            }
            let start = i;
            while i < end && present & bit(i) == 0 && (urgent || *requested & bit(i) == 0) {
                *requested |= bit(i);
                i += 1;
            }
            self.queued.push_back(Msg::Fetch {
                first: start,
                count: (i - start) as u32,
                urgent,
            });
        }
    }

    pub fn handle(&mut self, msg: &Msg) -> Result<ReplicaEvent, ErrorCode> {
        if self.geom {
            msg.check_geometry()?;
        }
        match (msg, self.state) {
            (&Msg::Open { generation }, ReplicaState::AwaitOpen) => {
                self.geom = true;
                self.state = ReplicaState::AwaitLocal;
                Ok(ReplicaEvent::Opened { generation })
            }
            (
                &Msg::Chunk {
                    index,
                    value,
                    fetched,
                },
                ReplicaState::Receiving,
            ) => {
                if !fetched {
                    self.summary.push((index, value));
                }
                if let Some(p) = &mut self.present {
                    *p |= bit(index);
                }
                Ok(ReplicaEvent::Write { index, value })
            }
            (
                Msg::Commit {
                    generation,
                    records,
                },
                ReplicaState::Receiving,
            ) => {
                if *generation <= self.committed {
                    return Err(ErrorCode::ProtocolViolation);
                }
                if *records != self.summary {
                    return Err(ErrorCode::SummaryMismatch);
                }
                self.summary.clear();
                self.committed = *generation;
                self.queued.push_back(Msg::Ack {
                    generation: *generation,
                });
                Ok(ReplicaEvent::Committed {
                    generation: *generation,
                })
            }
            (
                &Msg::Handoff {
                    generation,
                    postcopy,
                },
                ReplicaState::Receiving,
            ) => {
                if generation != self.committed || (!postcopy && self.missing() != 0) {
                    return Err(ErrorCode::ProtocolViolation);
                }
                self.take_ownership(generation);
                Ok(ReplicaEvent::BecameOwner { generation })
            }
            (&Msg::Stale { first, count }, ReplicaState::Receiving) => {
                let present = self.present.get_or_insert(ALL);
                for i in first..first + count as u64 {
                    *present &= !bit(i);
                }
                self.requested.get_or_insert(0);
                Ok(ReplicaEvent::None)
            }
            (
                &Msg::Chunk {
                    index,
                    value,
                    fetched: true,
                },
                ReplicaState::PostCopy | ReplicaState::BecameOwner,
            ) if self.postcopy => {
                if self.is_present(index) {
                    return Ok(ReplicaEvent::None);
                }
                self.arrived(index);
                Ok(ReplicaEvent::Write { index, value })
            }
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    fn take_ownership(&mut self, generation: u64) {
        self.queued.push_back(Msg::HandoffAck { generation });
        if self.missing() == 0 {
            self.state = ReplicaState::BecameOwner;
            return;
        }
        self.state = ReplicaState::PostCopy;
        self.postcopy = true;
        if let Some(r) = &mut self.requested {
            *r = 0;
        }
        let Some(present) = self.present else {
            return;
        };
        for run in runs(ALL & !present) {
            self.fetch(run.start, (run.end - run.start) as u32, false);
        }
    }

    fn arrived(&mut self, index: u64) {
        if let Some(p) = &mut self.present {
            *p |= bit(index);
        }
        if self.state == ReplicaState::PostCopy && self.missing() == 0 {
            self.state = ReplicaState::BecameOwner;
        }
    }

    pub fn local_write(&mut self, index: u64) -> bool {
        let inside = self.geom && index < N as u64;
        if self.state != ReplicaState::PostCopy || !inside || self.is_present(index) {
            return false;
        }
        self.arrived(index);
        true
    }

    /// `resume_postcopy(generation, missing)` (the model's region always has [`N`] chunks, so the
    /// core's geometry check of `missing` cannot fail here).
    pub fn resume_postcopy(&mut self, generation: u64, missing: Mask) -> Result<(), ErrorCode> {
        if !(self.state == ReplicaState::AwaitLocal && self.geom) {
            return Err(ErrorCode::Internal);
        }
        self.present = Some(ALL & !missing);
        self.requested = Some(0);
        self.committed = generation;
        self.take_ownership(generation);
        Ok(())
    }

    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.queued.pop_front()
    }
}
