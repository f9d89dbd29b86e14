//! The real state machines inside the model: encoding abstract frames to real bytes, rebuilding a
//! real [`Owner`] or [`Replica`] from the inputs it received, and checking each step the model
//! takes against them.
//!
//! A model state keeps, next to each role's mirror, the log of inputs that role received (a
//! persistent list, cheap to share). To check a step, the real machine is rebuilt by replaying the
//! log (`Owner::new` / `Replica::new`, then every input, with real encoded frames and real chunk
//! bytes), given the same input, and its answer — frames byte for byte, events, errors — and its
//! public state after the step are compared with the mirror's. Any difference panics: it means the
//! mirror no longer describes the code.

use super::mirror::{self, Local, Mask, Mem, Msg, N};
use memsync_protocol::hash::{chunk_hash, hash_chunks, scan_changes, Summary};
use memsync_protocol::wire::MAX_BODY;
use memsync_protocol::{
    DirtySet, ErrorCode, Frame, Geometry, Owner, OwnerEvent, Replica, ReplicaEvent, Transmit,
    WireError,
};
use std::sync::{Arc, OnceLock};

/// Region name used on every stream.
pub const NAME: &str = "r";
/// Size of the last (partial) chunk: the model's region is one 4 KiB chunk and a short one, so the
/// partial-chunk paths of the code run too.
pub const LAST_CHUNK_LEN: u64 = 100;

/// The fixed geometry and the bytes and hashes of every chunk value.
pub struct Ctx {
    pub geom: Geometry,
    /// `fills[i][v]`: chunk `i` filled with value `v`'s byte.
    fills: [[Vec<u8>; 4]; N],
    /// `hashes[i][v]`: XXH3-64 of `fills[i][v]`.
    hashes: [[u64; 4]; N],
}

/// The byte a chunk of value `v` is filled with (value [`mirror::GARBAGE`] is 0xEE, what a lazy
/// replica's file held before any chunk arrived).
pub fn byte_of(v: u8) -> u8 {
    match v {
        0..=2 => v,
        _ => 0xEE,
    }
}

pub fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let geom = Geometry::new(4096 * (N as u64 - 1) + LAST_CHUNK_LEN, 12).expect("geometry");
        assert_eq!(geom.chunk_count(), N as u64);
        for (i, &len) in mirror::CHUNK_LEN.iter().enumerate() {
            assert_eq!(geom.chunk_len(i as u64) as u64, len);
        }
        let fills: [[Vec<u8>; 4]; N] = std::array::from_fn(|i| {
            std::array::from_fn(|v| vec![byte_of(v as u8); geom.chunk_len(i as u64)])
        });
        let hashes: [[u64; 4]; N] =
            std::array::from_fn(|i| std::array::from_fn(|v| chunk_hash(&fills[i][v])));
        for h in &hashes {
            for a in 0..4 {
                for b in 0..a {
                    assert_ne!(h[a], h[b], "chunk values must hash apart");
                }
                assert_ne!(h[a], 0, "no chunk value may hash to the ZERO wire hash");
            }
        }
        Ctx {
            geom,
            fills,
            hashes,
        }
    })
}

impl Ctx {
    pub fn fill(&self, index: u64, v: u8) -> &[u8] {
        &self.fills[index as usize][v as usize]
    }

    pub fn hash(&self, index: u64, v: u8) -> u64 {
        self.hashes[index as usize][v as usize]
    }

    /// The wire hash of a chunk of value `v` (0 for a zero chunk).
    pub fn wire_hash(&self, index: u64, v: u8) -> u64 {
        if v == 0 {
            0
        } else {
            self.hash(index, v)
        }
    }

    /// The region's bytes.
    pub fn bytes(&self, mem: &Mem) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.geom.size() as usize);
        for (i, &v) in mem.iter().enumerate() {
            out.extend_from_slice(self.fill(i as u64, v));
        }
        out
    }

    /// Chunk hashes of a region, computed by the protocol crate from its bytes.
    pub fn hashes_of(&self, mem: &Mem) -> Vec<u64> {
        let mut h = vec![0; N];
        hash_chunks(&self.geom, 0, &self.bytes(mem), &mut h);
        h
    }

    /// Encodes an abstract frame as the real codec does.
    pub fn encode(&self, msg: &Msg) -> Vec<u8> {
        match msg {
            &Msg::Open { generation } => Frame::Open {
                epoch: None,
                size: self.geom.size(),
                generation,
                chunk_shift: self.geom.shift(),
                name: NAME,
            }
            .to_vec(),
            &Msg::State {
                empty,
                lazy,
                generation,
                chunk_count,
            } => Frame::State {
                epoch: None,
                empty,
                lazy,
                durable: false,
                generation,
                chunk_count,
            }
            .to_vec(),
            Msg::Hashes { first, values } => {
                let hashes: Vec<u64> = (*first..)
                    .zip(values)
                    .map(|(i, &v)| self.hash(i, v))
                    .collect();
                let mut wire = Vec::new();
                memsync_protocol::wire::HashList::encode_into(&hashes, &mut wire);
                Frame::Hashes {
                    first: *first,
                    hashes: memsync_protocol::wire::HashList::from_wire(&wire).expect("hashes"),
                }
                .to_vec()
            }
            &Msg::Chunk {
                index,
                value,
                fetched,
            } => Frame::Chunk {
                index,
                hash: self.wire_hash(index, value),
                zero: value == 0,
                fetched,
                payload: if value == 0 {
                    &[]
                } else {
                    self.fill(index, value)
                },
            }
            .to_vec(),
            Msg::Commit {
                generation,
                records,
            } => {
                let mut s = Summary::new();
                for &(i, v) in records {
                    s.add(i, self.wire_hash(i, v));
                }
                Frame::Commit {
                    generation: *generation,
                    count: s.count(),
                    summary: s.digest(),
                }
                .to_vec()
            }
            &Msg::Ack { generation } => Frame::Ack { generation }.to_vec(),
            &Msg::Fetch {
                first,
                count,
                urgent,
            } => Frame::Fetch {
                first,
                count,
                urgent,
            }
            .to_vec(),
            &Msg::FetchPart { index, offset, len } => {
                Frame::FetchPart { index, offset, len }.to_vec()
            }
            &Msg::Handoff {
                generation,
                postcopy,
            } => Frame::Handoff {
                generation,
                postcopy,
            }
            .to_vec(),
            &Msg::HandoffAck { generation } => Frame::HandoffAck { generation }.to_vec(),
            &Msg::Stale { first, count } => Frame::Stale { first, count }.to_vec(),
            Msg::Fin => panic!("FIN ends a stream; it is not a frame"),
        }
    }

    /// The value of chunk `index` whose bytes are `data` (panics on bytes that are no fill).
    fn value_of(&self, index: u64, data: &[u8]) -> u8 {
        let h = chunk_hash(data);
        let v = (0..4u8)
            .find(|&v| self.hash(index, v) == h)
            .unwrap_or_else(|| panic!("chunk {index} holds bytes of no model value"));
        assert_eq!(data, self.fill(index, v), "chunk {index} is not a fill");
        v
    }
}

fn code(r: Result<(), WireError>) -> Result<(), ErrorCode> {
    r.map_err(|e| e.code)
}

/// A persistent list of inputs, newest last; clones share their prefix.
#[derive(Clone, Debug)]
pub struct Log<T>(Option<Arc<(T, Log<T>)>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(None)
    }
}

impl<T: Clone> Log<T> {
    pub fn push(&self, item: T) -> Log<T> {
        Log(Some(Arc::new((item, self.clone()))))
    }

    /// The inputs, oldest first.
    pub fn items(&self) -> Vec<T> {
        let mut v = Vec::new();
        let mut cur = self;
        while let Some(node) = &cur.0 {
            v.push(node.0.clone());
            cur = &node.1;
        }
        v.reverse();
        v
    }
}

/// One call the harness makes on an owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnerInput {
    /// `poll_transmit`, and for a chunk `encode_chunk` with its bytes read from `mem` just then.
    Poll {
        mem: Mem,
    },
    /// `handle` of this frame (encoded and decoded by the real codec).
    Handle(Msg),
    /// A precise detector's report: `mark_dirty` of the chunk range.
    Mark(Mask),
    /// A hash scan of the region `mem`: `scan_changes` against `known_hashes`, then `on_dirty`.
    Scan {
        mem: Mem,
    },
    Restart,
    BeginHandoff,
    BeginPostcopy,
    /// The replica ended the stream cleanly: `finish`.
    Finish,
}

/// What an owner answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerOutput {
    Transmit(Option<Msg>),
    Event(Result<mirror::OwnerEvent, ErrorCode>),
    Unit(Result<(), ErrorCode>),
    /// What `finish` answered.
    Finished(Option<u64>),
}

/// One call the harness makes on a replica; whatever it queues is drained after each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaInput {
    Handle(Msg),
    Local(Local),
    Fetch {
        first: u64,
        count: u32,
        urgent: bool,
    },
    FetchPart {
        index: u64,
        offset: u32,
        len: u32,
    },
    /// `local_write(index)`: the new owner wrote the chunk (whole, if it was missing).
    LocalWrite(u64),
    /// `resume_postcopy(generation, missing)` instead of `local_state` after OPEN.
    ResumePostcopy {
        generation: u64,
        missing: Mask,
    },
}

/// What a replica answered, and the frames it queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaOutput {
    pub result: Result<mirror::ReplicaEvent, ErrorCode>,
    pub sent: Vec<Msg>,
}

/// How a role was created, and every input since.
#[derive(Clone, Debug)]
pub struct OwnerLog {
    pub known: Mem,
    pub generation: u64,
    pub inputs: Log<OwnerInput>,
}

#[derive(Clone, Debug)]
pub struct ReplicaLog {
    pub committed: u64,
    pub inputs: Log<ReplicaInput>,
}

/// Runs one input on the mirror owner.
pub fn mirror_owner_step(m: &mut mirror::Owner, input: &OwnerInput) -> OwnerOutput {
    match input {
        OwnerInput::Poll { mem } => OwnerOutput::Transmit(m.poll_transmit().map(|t| match t {
            mirror::Transmit::Frame(f) => f,
            mirror::Transmit::Chunk { index, fetched } => {
                m.encode_chunk(index, fetched, mem[index as usize])
            }
        })),
        OwnerInput::Handle(msg) => OwnerOutput::Event(m.handle(msg)),
        OwnerInput::Mark(mask) => {
            m.dirty(*mask);
            OwnerOutput::Unit(Ok(()))
        }
        OwnerInput::Scan { mem } => {
            let changed = (0..N)
                .filter(|&i| mem[i] != m.known[i])
                .fold(0, |a, i| a | 1 << i);
            m.dirty(changed);
            OwnerOutput::Unit(Ok(()))
        }
        OwnerInput::Restart => OwnerOutput::Unit(m.restart()),
        OwnerInput::BeginHandoff => OwnerOutput::Unit(m.begin_handoff()),
        OwnerInput::BeginPostcopy => OwnerOutput::Unit(m.begin_postcopy()),
        OwnerInput::Finish => OwnerOutput::Finished(m.finish()),
    }
}

/// Runs one input on the mirror replica.
pub fn mirror_replica_step(m: &mut mirror::Replica, input: &ReplicaInput) -> ReplicaOutput {
    let result = match input {
        ReplicaInput::Handle(msg) => m.handle(msg),
        ReplicaInput::Local(l) => m.local_state(*l).map(|()| mirror::ReplicaEvent::None),
        &ReplicaInput::Fetch {
            first,
            count,
            urgent,
        } => {
            m.fetch(first, count, urgent);
            Ok(mirror::ReplicaEvent::None)
        }
        &ReplicaInput::FetchPart { index, offset, len } => {
            m.fetch_part(index, offset, len);
            Ok(mirror::ReplicaEvent::None)
        }
        &ReplicaInput::LocalWrite(index) => Ok(mirror::ReplicaEvent::LocalWrite {
            was_missing: m.local_write(index),
        }),
        &ReplicaInput::ResumePostcopy {
            generation,
            missing,
        } => m
            .resume_postcopy(generation, missing)
            .map(|()| mirror::ReplicaEvent::None),
    };
    let mut sent = Vec::new();
    while let Some(f) = m.poll_transmit() {
        sent.push(f);
    }
    ReplicaOutput { result, sent }
}

/// A real owner's answer, in raw form.
enum RealOwnerOut {
    Transmit(Option<Vec<u8>>),
    Event(Result<OwnerEvent, WireError>),
    Unit(Result<(), WireError>),
    Finished(Option<u64>),
}

fn real_owner_step(o: &mut Owner, input: &OwnerInput) -> RealOwnerOut {
    let c = ctx();
    match input {
        OwnerInput::Poll { mem } => RealOwnerOut::Transmit(o.poll_transmit().map(|t| match t {
            Transmit::Frame(f) => f,
            Transmit::Chunk { index, fetched } => {
                let data = c.fill(index, mem[index as usize]);
                let (hdr, with_payload) = o.encode_chunk(index, fetched, data);
                let mut f = hdr.to_vec();
                if with_payload {
                    f.extend_from_slice(data);
                }
                f
            }
        })),
        OwnerInput::Handle(msg) => {
            let bytes = c.encode(msg);
            let (frame, used) = Frame::decode(&bytes, MAX_BODY)
                .expect("decodes")
                .expect("whole frame");
            assert_eq!(used, bytes.len());
            RealOwnerOut::Event(o.handle(&frame))
        }
        OwnerInput::Mark(mask) => {
            let first = mask.trailing_zeros() as u64;
            let end = 8 - mask.leading_zeros() as u64;
            assert_eq!(
                (first..end).fold(0u8, |a, i| a | 1 << i),
                *mask,
                "a precise report is one chunk range"
            );
            o.mark_dirty(first..end);
            RealOwnerOut::Unit(Ok(()))
        }
        OwnerInput::Scan { mem } => {
            let mut d = DirtySet::new(N as u64);
            scan_changes(&c.geom, 0, &c.bytes(mem), o.known_hashes(), &mut d);
            o.on_dirty(&d);
            RealOwnerOut::Unit(Ok(()))
        }
        OwnerInput::Restart => RealOwnerOut::Unit(o.restart()),
        OwnerInput::BeginHandoff => RealOwnerOut::Unit(o.begin_handoff()),
        OwnerInput::BeginPostcopy => RealOwnerOut::Unit(o.begin_postcopy()),
        OwnerInput::Finish => RealOwnerOut::Finished(o.finish()),
    }
}

fn real_replica_step(r: &mut Replica, input: &ReplicaInput) -> ReplicaOutputRaw {
    let c = ctx();
    let result = match input {
        ReplicaInput::Handle(msg) => {
            let bytes = c.encode(msg);
            let (frame, used) = Frame::decode(&bytes, MAX_BODY)
                .expect("decodes")
                .expect("whole frame");
            assert_eq!(used, bytes.len());
            r.handle(&frame).map(|e| match e {
                ReplicaEvent::None => mirror::ReplicaEvent::None,
                ReplicaEvent::Opened {
                    name,
                    geometry,
                    generation,
                    epoch,
                } => {
                    assert_eq!((name, epoch), (NAME, None));
                    assert_eq!(geometry, c.geom);
                    mirror::ReplicaEvent::Opened { generation }
                }
                ReplicaEvent::Write { index, data } => {
                    let range = c.geom.range(index);
                    let value = match data {
                        None => 0,
                        Some(d) => {
                            assert_eq!(d.len(), range.len(), "payload is the chunk's length");
                            c.value_of(index, d)
                        }
                    };
                    mirror::ReplicaEvent::Write { index, value }
                }
                ReplicaEvent::Committed { generation } => {
                    mirror::ReplicaEvent::Committed { generation }
                }
                ReplicaEvent::BecameOwner { generation } => {
                    mirror::ReplicaEvent::BecameOwner { generation }
                }
                ReplicaEvent::PeerError { code, reason } => {
                    panic!("no ERROR frame is ever sent in the model: {code} {reason}")
                }
            })
        }
        ReplicaInput::Local(l) => {
            let hashes;
            let local = match l {
                Local::Hashes(mem) => {
                    hashes = c.hashes_of(mem);
                    memsync_protocol::Local::Hashes(&hashes)
                }
                Local::Empty => memsync_protocol::Local::Empty,
                Local::Lazy => memsync_protocol::Local::Lazy,
            };
            r.local_state(local).map(|()| mirror::ReplicaEvent::None)
        }
        &ReplicaInput::Fetch {
            first,
            count,
            urgent,
        } => {
            r.fetch(first, count, urgent);
            Ok(mirror::ReplicaEvent::None)
        }
        &ReplicaInput::FetchPart { index, offset, len } => {
            r.fetch_part(index, offset, len);
            Ok(mirror::ReplicaEvent::None)
        }
        &ReplicaInput::LocalWrite(index) => Ok(mirror::ReplicaEvent::LocalWrite {
            was_missing: r.local_write(index),
        }),
        &ReplicaInput::ResumePostcopy {
            generation,
            missing,
        } => {
            let mut set = DirtySet::new(N as u64);
            for i in (0..N as u64).filter(|&i| missing & 1 << i != 0) {
                set.insert(i);
            }
            r.resume_postcopy(generation, &set)
                .map(|()| mirror::ReplicaEvent::None)
        }
    };
    let mut sent = Vec::new();
    while let Some(f) = r.poll_transmit() {
        sent.push(f);
    }
    ReplicaOutputRaw { result, sent }
}

struct ReplicaOutputRaw {
    result: Result<mirror::ReplicaEvent, WireError>,
    sent: Vec<Vec<u8>>,
}

fn owner_event(e: OwnerEvent) -> mirror::OwnerEvent {
    match e {
        OwnerEvent::None => mirror::OwnerEvent::None,
        OwnerEvent::Reconciled {
            differing,
            replica_generation,
        } => mirror::OwnerEvent::Reconciled {
            differing,
            replica_generation,
        },
        OwnerEvent::Acked { generation } => mirror::OwnerEvent::Acked { generation },
        OwnerEvent::HandedOff { generation } => mirror::OwnerEvent::HandedOff { generation },
        OwnerEvent::PeerError { code, reason } => {
            panic!("no ERROR frame is ever sent in the model: {code} {reason}")
        }
    }
}

/// Rebuilds the real owner a log describes.
pub fn build_owner(log: &OwnerLog) -> Owner {
    let c = ctx();
    let mut o = Owner::new(c.geom, NAME, c.hashes_of(&log.known), log.generation).expect("owner");
    for input in log.inputs.items() {
        real_owner_step(&mut o, &input);
    }
    o
}

/// Rebuilds the real replica a log describes.
pub fn build_replica(log: &ReplicaLog) -> Replica {
    let mut r = Replica::new(log.committed);
    for input in log.inputs.items() {
        real_replica_step(&mut r, &input);
    }
    r
}

/// Panics unless the real owner's public state is the mirror's.
fn compare_owner(o: &Owner, m: &mirror::Owner, what: &dyn Fn() -> String) {
    let c = ctx();
    let known: Vec<u64> = (0..N as u64)
        .map(|i| c.hash(i, m.known[i as usize]))
        .collect();
    let real = (
        mirror::OwnerState::from(o.state()),
        o.generation(),
        o.acked(),
        o.backlog(),
        o.is_synced(),
        o.known_hashes().to_vec(),
        o.is_postcopy(),
    );
    let mine = (
        m.state,
        m.generation,
        m.acked,
        m.backlog(),
        m.is_synced(),
        known,
        m.postcopy,
    );
    assert_eq!(real, mine, "real owner differs from its mirror {}", what());
}

fn compare_replica(r: &Replica, m: &mirror::Replica, what: &dyn Fn() -> String) {
    let real = (
        mirror::ReplicaState::from(r.state()),
        r.committed(),
        r.missing(),
        (0..N as u64).map(|i| r.is_present(i)).collect::<Vec<_>>(),
    );
    let mine = (
        m.state,
        m.committed,
        m.missing(),
        (0..N as u64).map(|i| m.is_present(i)).collect::<Vec<_>>(),
    );
    assert_eq!(
        real,
        mine,
        "real replica differs from its mirror {}",
        what()
    );
}

/// Checks one owner step against the real machine: rebuilds it from `log` (which must describe
/// `before`), runs `input`, and compares the answer with `out` and the state with `after`.
pub fn check_owner_step(
    log: &OwnerLog,
    before: &mirror::Owner,
    input: &OwnerInput,
    out: &OwnerOutput,
    after: &mirror::Owner,
) {
    let c = ctx();
    let what = || {
        format!(
            "after {input:?} from {before:?} (log {:?})",
            log.inputs.items()
        )
    };
    let mut o = build_owner(log);
    compare_owner(&o, before, &|| format!("when rebuilt: {}", what()));
    let real = real_owner_step(&mut o, input);
    match (real, out) {
        (RealOwnerOut::Transmit(r), OwnerOutput::Transmit(m)) => assert_eq!(
            r,
            m.as_ref().map(|m| c.encode(m)),
            "real owner sent other bytes {}",
            what()
        ),
        (RealOwnerOut::Event(r), OwnerOutput::Event(m)) => assert_eq!(
            &r.map(owner_event).map_err(|e| e.code),
            m,
            "real owner answered otherwise {}",
            what()
        ),
        (RealOwnerOut::Unit(r), OwnerOutput::Unit(m)) => {
            assert_eq!(&code(r), m, "real owner answered otherwise {}", what())
        }
        (RealOwnerOut::Finished(r), OwnerOutput::Finished(m)) => {
            assert_eq!(&r, m, "real owner answered otherwise {}", what())
        }
        _ => unreachable!("answers of one input have one kind"),
    }
    compare_owner(&o, after, &what);
    // What the owner would send next: the model only explores sends its mirror offers, so the
    // real machine must offer exactly those (this copy is thrown away after).
    let real_next = o.poll_transmit().map(|t| match t {
        Transmit::Frame(f) => Err(f),
        Transmit::Chunk { index, fetched } => Ok((index, fetched)),
    });
    let mine_next = after.clone().poll_transmit().map(|t| match t {
        mirror::Transmit::Frame(f) => Err(c.encode(&f)),
        mirror::Transmit::Chunk { index, fetched } => Ok((index, fetched)),
    });
    assert_eq!(
        real_next,
        mine_next,
        "real owner would send something else next {}",
        what()
    );
}

/// As [`check_owner_step`], for a replica.
pub fn check_replica_step(
    log: &ReplicaLog,
    before: &mirror::Replica,
    input: &ReplicaInput,
    out: &ReplicaOutput,
    after: &mirror::Replica,
) {
    let c = ctx();
    let what = || {
        format!(
            "after {input:?} from {before:?} (log {:?})",
            log.inputs.items()
        )
    };
    let mut r = build_replica(log);
    compare_replica(&r, before, &|| format!("when rebuilt: {}", what()));
    let real = real_replica_step(&mut r, input);
    assert_eq!(
        real.result.map_err(|e| e.code),
        out.result,
        "real replica answered otherwise {}",
        what()
    );
    let sent: Vec<Vec<u8>> = out.sent.iter().map(|m| c.encode(m)).collect();
    assert_eq!(real.sent, sent, "real replica sent other bytes {}", what());
    compare_replica(&r, after, &what);
}
