//! Ownership epochs and fencing (PROTOCOL.md §8.8) as a `stateright` model: three peers, the
//! region streams between them with their frames in flight, writes, a handoff, a promotion and
//! lost connections. Each peer decides on OPENs with the real [`memsync_protocol::epoch`]
//! functions; the model keeps only what fencing is about (who writes under which epoch, which
//! chunk reaches which replica), not chunk contents or generations, which the system model checks.
//! MODEL.md, "Fencing", describes it.

use memsync_protocol::epoch::{self, Admission, Holder, Record};
use stateright::{Checker, Model, Property};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// The peers: A owns the region at first, at epoch 1; B and C replicate it.
pub const PEERS: usize = 3;
pub const PEER_NAMES: [&str; PEERS] = ["A", "B", "C"];

pub const P_ONE_OWNER_PER_EPOCH: &str = "at most one owner per epoch";
pub const P_NO_FENCED_CHUNK: &str =
    "a fenced owner's chunk never reaches a replica of a newer epoch";

/// The design as the spec asks, or deliberately broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Correct,
    /// Replicas compare epoch counters alone, without the owner's identity: two peers that mint
    /// the same counter (a promotion while the old owner hands off elsewhere) are one epoch.
    BareCounters,
    /// A replica that admits a newer epoch keeps the older epoch's stream (breaks §8.2, "One
    /// stream per region and owner").
    KeepOlderStreams,
}

/// Bounds of the exploration.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub writes: u8,
    pub losses: u8,
    pub handoffs: u8,
    pub promotions: u8,
}

/// A frame in flight on a region stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Frame {
    Open(u64),
    Chunk,
    Handoff,
    /// The replica's STATE: it admitted the OPEN.
    State,
    HandoffAck,
    /// ERROR FENCED or HANDED_OVER: the owner stops owning (§8.8), or the probe learns the handoff
    /// completed (§8.6).
    Fenced,
    /// Any other refusal (FORBIDDEN, PROTOCOL_VIOLATION): the stream ends, nothing else.
    Refused,
}

/// A region stream from an owner to a replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stream {
    /// The owner's epoch counter, sent in OPEN.
    epoch: u64,
    /// The replica admitted it (sent STATE).
    admitted: bool,
    /// The owner received STATE: it streams chunks.
    streaming: bool,
    to_replica: VecDeque<Frame>,
    to_owner: VecDeque<Frame>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Each peer's record of the region (§8.8), or none.
    records: [Option<Record<u8>>; PEERS],
    /// The epoch counter each peer owns the region at, as it believes, and writes under.
    owning: [Option<u64>; PEERS],
    /// The replica the peer sent HANDOFF to; it stopped writing (HandingOff, or Probing after a
    /// loss, until that replica answers).
    handing: [Option<usize>; PEERS],
    /// `streams[o][r]`: the stream from owner o to replica r.
    streams: [[Option<Stream>; PEERS]; PEERS],
    /// Every (epoch as replicas compare it, owner) that owned the region.
    owners: BTreeSet<((u64, u8), u8)>,
    /// A replica applied a chunk of an epoch older than its record.
    fenced_chunk_applied: bool,
    writes: u8,
    losses: u8,
    handoffs: u8,
    promotions: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Owner o opens a stream to r (or probes it, after a lost HANDOFF).
    Open(usize, usize),
    /// Owner o writes; the chunk goes on every stream it streams on.
    Write(usize),
    /// Owner o offers r the region (HANDOFF).
    Handoff(usize, usize),
    /// The next frame from o reaches r.
    ToReplica(usize, usize),
    /// The next frame from r reaches o.
    ToOwner(usize, usize),
    /// The connection between o and r is lost, with the stream's frames in flight.
    Lose(usize, usize),
    /// An operator promotes r, its owner declared lost (it ends every stream into r first).
    Promote(usize),
}

#[derive(Clone)]
pub struct Fencing {
    pub variant: Variant,
    pub bounds: Bounds,
}

impl Fencing {
    /// How replicas compare the epoch (c, owner) in this variant.
    fn key(&self, counter: u64, owner: u8) -> (u64, u8) {
        match self.variant {
            Variant::BareCounters => (counter, 0),
            _ => (counter, owner),
        }
    }

    /// The record's epoch as replicas compare it, `me` holding it if it owns the region.
    fn record_key(&self, r: &Record<u8>, me: u8) -> (u64, u8) {
        match r.holder {
            Holder::Peer(p) => self.key(r.epoch, p),
            Holder::Here | Holder::Promoted { .. } => self.key(r.epoch, me),
        }
    }

    /// The real decision (§8.8), with identities erased where the variant compares counters only.
    fn admit(&self, record: Option<&Record<u8>>, me: u8, who: u8, c: u64) -> Admission<u8> {
        if self.variant != Variant::BareCounters {
            return epoch::admit(record, me, who, c);
        }
        let erase = |r: &Record<u8>| Record {
            holder: match r.holder {
                Holder::Peer(_) => Holder::Peer(()),
                Holder::Here => Holder::Here,
                Holder::Promoted { .. } => Holder::Promoted { lost: () },
            },
            epoch: r.epoch,
        };
        match epoch::admit(record.map(erase).as_ref(), (), (), c) {
            Admission::Same => Admission::Same,
            Admission::Adopt(_) => Admission::Adopt(Record {
                holder: Holder::Peer(who),
                epoch: c,
            }),
            Admission::Refuse(code, _) => {
                Admission::Refuse(code, epoch::Refusal::Taken { owner: who })
            }
        }
    }

    /// `peer` owns the region from now on at `counter`: it streams under that epoch only, on new
    /// streams (its streams of an older epoch, e.g. one it handed off on, end).
    fn owns(&self, s: &mut State, peer: usize, counter: u64) {
        s.owning[peer] = Some(counter);
        s.handing[peer] = None;
        s.streams[peer] = Default::default();
        s.owners.insert((self.key(counter, peer as u8), peer as u8));
    }

    /// Ends every stream into `r` other than the one from `except`.
    fn end_streams_into(s: &mut State, r: usize, except: Option<usize>) {
        for (o, row) in s.streams.iter_mut().enumerate() {
            if Some(o) != except {
                row[r] = None;
            }
        }
    }

    /// Checks every property over all reachable states with stateright; returns the number of
    /// states and, for each property violated, a shortest path to a violation.
    pub fn check(self) -> (usize, Vec<(&'static str, Vec<String>)>) {
        let checker = self.checker().spawn_bfs().join();
        let states = checker.unique_state_count();
        let model = checker.model();
        let mut found: Vec<_> = checker
            .discoveries()
            .into_keys()
            .map(|name| (name, model.shortest_violation(name)))
            .collect();
        found.sort();
        (states, found)
    }

    /// A shortest path to a state that violates `property` (stateright's discovery paths are not
    /// always the shortest), in words.
    fn shortest_violation(&self, property: &str) -> Vec<String> {
        let holds = self
            .properties()
            .into_iter()
            .find(|p| p.name == property)
            .expect("a property of the model")
            .condition;
        let init = self.init_states().remove(0);
        let mut parent: HashMap<State, Option<(State, Action)>> =
            HashMap::from([(init.clone(), None)]);
        let mut queue = VecDeque::from([init]);
        while let Some(s) = queue.pop_front() {
            if !holds(self, &s) {
                let mut steps = Vec::new();
                let mut at = &s;
                while let Some(Some((before, a))) = parent.get(at) {
                    steps.push(describe(a));
                    at = before;
                }
                steps.reverse();
                return steps;
            }
            let mut actions = Vec::new();
            self.actions(&s, &mut actions);
            for a in actions {
                if let Some(next) = self.next_state(&s, a) {
                    if !parent.contains_key(&next) {
                        parent.insert(next.clone(), Some((s.clone(), a)));
                        queue.push_back(next);
                    }
                }
            }
        }
        unreachable!("stateright found a violation of {property}")
    }
}

/// One step, in words.
pub fn describe(a: &Action) -> String {
    let n = |p: &usize| PEER_NAMES[*p];
    match a {
        Action::Open(o, r) => format!("{} opens a stream to {}", n(o), n(r)),
        Action::Write(o) => format!("{} writes", n(o)),
        Action::Handoff(o, r) => format!("{} sends HANDOFF to {}", n(o), n(r)),
        Action::ToReplica(o, r) => format!("{}'s next frame reaches {}", n(o), n(r)),
        Action::ToOwner(o, r) => format!("{}'s next answer reaches {}", n(r), n(o)),
        Action::Lose(o, r) => format!("the connection {}–{} is lost", n(o), n(r)),
        Action::Promote(r) => format!("{} is promoted", n(r)),
    }
}

impl Model for Fencing {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut s = State {
            records: [None; PEERS],
            owning: [None; PEERS],
            handing: [None; PEERS],
            streams: Default::default(),
            owners: BTreeSet::new(),
            fenced_chunk_applied: false,
            writes: 0,
            losses: 0,
            handoffs: 0,
            promotions: 0,
        };
        self.owns(&mut s, 0, epoch::FIRST);
        vec![s]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let b = &self.bounds;
        for o in 0..PEERS {
            for r in (0..PEERS).filter(|r| *r != o) {
                let stream = &s.streams[o][r];
                if s.owning[o].is_some() && stream.is_none() {
                    actions.push(Action::Open(o, r));
                }
                if let Some(st) = stream {
                    if !st.to_replica.is_empty() {
                        actions.push(Action::ToReplica(o, r));
                    }
                    if !st.to_owner.is_empty() {
                        actions.push(Action::ToOwner(o, r));
                    }
                    if s.losses < b.losses {
                        actions.push(Action::Lose(o, r));
                    }
                    if st.streaming && s.handing[o].is_none() && s.handoffs < b.handoffs {
                        actions.push(Action::Handoff(o, r));
                    }
                }
            }
            let streams = s.streams[o].iter().flatten().any(|st| st.streaming);
            if s.owning[o].is_some() && s.handing[o].is_none() && streams && s.writes < b.writes {
                actions.push(Action::Write(o));
            }
            let held = matches!(
                s.records[o],
                Some(Record {
                    holder: Holder::Peer(_),
                    ..
                })
            );
            if held && s.promotions < b.promotions {
                actions.push(Action::Promote(o));
            }
        }
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut s = s.clone();
        match action {
            Action::Open(o, r) => {
                let epoch = s.owning[o]?;
                s.streams[o][r] = Some(Stream {
                    epoch,
                    admitted: false,
                    streaming: false,
                    to_replica: VecDeque::from([Frame::Open(epoch)]),
                    to_owner: VecDeque::new(),
                });
            }
            Action::Write(o) => {
                s.writes += 1;
                for st in s.streams[o].iter_mut().flatten().filter(|st| st.streaming) {
                    st.to_replica.push_back(Frame::Chunk);
                }
            }
            Action::Handoff(o, r) => {
                s.handoffs += 1;
                s.handing[o] = Some(r);
                s.streams[o][r]
                    .as_mut()?
                    .to_replica
                    .push_back(Frame::Handoff);
            }
            Action::Lose(o, r) => {
                s.losses += 1;
                s.streams[o][r] = None;
            }
            Action::Promote(r) => {
                s.promotions += 1;
                let record = epoch::promoted(s.records[r].as_ref()?)?;
                s.records[r] = Some(record);
                Self::end_streams_into(&mut s, r, None);
                self.owns(&mut s, r, record.epoch);
            }
            Action::ToReplica(o, r) => {
                let st = s.streams[o][r].as_mut()?;
                let frame = st.to_replica.pop_front()?;
                let epoch = st.epoch;
                match frame {
                    Frame::Open(c) => {
                        match self.admit(s.records[r].as_ref(), r as u8, o as u8, c) {
                            Admission::Same => {
                                let st = s.streams[o][r].as_mut()?;
                                st.admitted = true;
                                st.to_owner.push_back(Frame::State);
                            }
                            Admission::Adopt(record) => {
                                if self.variant != Variant::KeepOlderStreams {
                                    Self::end_streams_into(&mut s, r, Some(o));
                                }
                                s.records[r] = Some(record);
                                // A peer that owned the region and admits a newer epoch no longer
                                // owns it.
                                s.owning[r] = None;
                                s.handing[r] = None;
                                let st = s.streams[o][r].as_mut()?;
                                st.admitted = true;
                                st.to_owner.push_back(Frame::State);
                            }
                            Admission::Refuse(code, _) => {
                                let fenced = matches!(
                                    code,
                                    memsync_protocol::ErrorCode::Fenced
                                        | memsync_protocol::ErrorCode::HandedOver
                                );
                                let st = s.streams[o][r].as_mut()?;
                                st.to_replica.clear();
                                st.to_owner.push_back(if fenced {
                                    Frame::Fenced
                                } else {
                                    Frame::Refused
                                });
                            }
                        }
                    }
                    Frame::Chunk => {
                        if st.admitted {
                            let record = s.records[r].as_ref()?;
                            if self.record_key(record, r as u8) != self.key(epoch, o as u8)
                                || s.owning[r].is_some()
                            {
                                s.fenced_chunk_applied = true;
                            }
                        }
                    }
                    Frame::Handoff => {
                        let took = s.records[r]
                            == Some(Record {
                                holder: Holder::Peer(o as u8),
                                epoch,
                            });
                        if took {
                            let record = epoch::handed_over(epoch)?;
                            s.records[r] = Some(record);
                            self.owns(&mut s, r, record.epoch);
                            Self::end_streams_into(&mut s, r, Some(o));
                            s.streams[o][r]
                                .as_mut()?
                                .to_owner
                                .push_back(Frame::HandoffAck);
                        } else {
                            s.streams[o][r].as_mut()?.to_owner.push_back(Frame::Refused);
                        }
                    }
                    _ => return None,
                }
            }
            Action::ToOwner(o, r) => {
                let st = s.streams[o][r].as_mut()?;
                match st.to_owner.pop_front()? {
                    Frame::State => {
                        st.streaming = true;
                        // A probe answered with STATE: the handoff did not happen (§8.6).
                        if s.handing[o] == Some(r) {
                            s.handing[o] = None;
                        }
                    }
                    Frame::HandoffAck | Frame::Fenced => {
                        s.owning[o] = None;
                        s.handing[o] = None;
                        s.streams[o][r] = None;
                    }
                    Frame::Refused => {
                        // A refused HANDOFF: ownership stays here (§8.6).
                        if s.handing[o] == Some(r) {
                            s.handing[o] = None;
                        }
                        s.streams[o][r] = None;
                    }
                    _ => return None,
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(P_ONE_OWNER_PER_EPOCH, |_: &Self, s: &State| {
                s.owners
                    .iter()
                    .zip(s.owners.iter().skip(1))
                    .all(|((k1, _), (k2, _))| k1 != k2)
            }),
            Property::always(P_NO_FENCED_CHUNK, |_: &Self, s: &State| {
                !s.fenced_chunk_applied
            }),
        ]
    }
}
