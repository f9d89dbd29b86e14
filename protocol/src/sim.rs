//! An in-memory simulation of an owner and a replica: both state machines, each with its own
//! memory, wired through queues of encoded frames, for tests, fuzzers and benches (no I/O, like
//! the rest of this crate). Every frame crosses the wire codec; any error, unexpected event or
//! undecodable or non-canonical frame panics, so a caller only has to drive it and compare.

use crate::hash::{hash_chunks, scan_changes};
use crate::wire::{ErrorCode, Frame, MAX_BODY};
use crate::{DirtySet, Geometry, Local, Owner, OwnerEvent, Replica, ReplicaEvent, Transmit};
use std::collections::VecDeque;

/// Decodes exactly one canonical frame from `bytes` (a transmitted buffer), or panics.
pub fn decode_exact(bytes: &[u8]) -> Frame<'_> {
    match Frame::decode(bytes, MAX_BODY) {
        Ok(Some((f, used))) => {
            assert_eq!(
                used,
                bytes.len(),
                "transmitted buffer holds more than one frame"
            );
            assert_eq!(f.to_vec(), bytes, "transmitted frame is not canonical");
            f
        }
        other => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            panic!("transmitted bytes do not decode: {other:?} ({hex})")
        }
    }
}

/// Both roles, their memories and the frames in flight each way.
pub struct Pair {
    /// The region's geometry.
    pub geom: Geometry,
    /// The owner's memory.
    pub a: Vec<u8>,
    /// The replica's memory.
    pub b: Vec<u8>,
    /// The owner's state machine.
    pub owner: Owner,
    /// The replica's state machine.
    pub replica: Replica,
    /// The replica answers OPEN as lazy (STATE EMPTY LAZY) instead of with its hashes.
    pub lazy: bool,
    /// Writes are reported as they happen (`mark_dirty`) instead of found by hash scans.
    pub precise: bool,
    /// Frames in flight from the owner.
    pub to_replica: VecDeque<Vec<u8>>,
    /// Frames in flight from the replica.
    pub to_owner: VecDeque<Vec<u8>>,
    /// Generations the replica committed, in order.
    pub acks: Vec<u64>,
    /// Set when the replica accepted a handoff / the owner saw it accepted.
    pub became_owner: Option<u64>,
    /// Set when the owner saw its handoff accepted.
    pub handed_off: Option<u64>,
    /// A HANDOFF the replica refused (the documented Appendix A #2 case), with its code.
    pub handoff_refused: Option<ErrorCode>,
}

/// The hash of every chunk of `mem`.
pub fn hashes(geom: &Geometry, mem: &[u8]) -> Vec<u64> {
    let mut h = vec![0; geom.chunk_count() as usize];
    hash_chunks(geom, 0, mem, &mut h);
    h
}

impl Pair {
    /// An owner of `a` and a replica holding `b`, both at `generation`, the region named
    /// "region".
    pub fn new(geom: Geometry, a: Vec<u8>, b: Vec<u8>, generation: u64, lazy: bool) -> Pair {
        assert_eq!(a.len() as u64, geom.size());
        assert_eq!(b.len() as u64, geom.size());
        let known = hashes(&geom, &a);
        Pair {
            geom,
            owner: Owner::new(geom, "region", known, generation).expect("owner"),
            replica: Replica::new(generation),
            a,
            b,
            lazy,
            precise: false,
            to_replica: VecDeque::new(),
            to_owner: VecDeque::new(),
            acks: vec![],
            became_owner: None,
            handed_off: None,
            handoff_refused: None,
        }
    }

    /// One owner transmit onto the wire; false when it had nothing to send.
    pub fn owner_send(&mut self) -> bool {
        match self.owner.poll_transmit() {
            None => false,
            Some(Transmit::Frame(f)) => {
                decode_exact(&f);
                self.to_replica.push_back(f);
                true
            }
            Some(Transmit::Chunk { index, fetched }) => {
                assert!(index < self.geom.chunk_count());
                let data = self.a[self.geom.range(index)].to_vec();
                let (hdr, with_payload) = self.owner.encode_chunk(index, fetched, &data);
                let mut f = hdr.to_vec();
                if with_payload {
                    f.extend_from_slice(&data);
                }
                self.to_replica.push_back(f);
                true
            }
        }
    }

    /// The replica handles one frame from the owner; false when none was in flight.
    pub fn replica_recv(&mut self) -> bool {
        let Some(bytes) = self.to_replica.pop_front() else {
            return false;
        };
        let frame = decode_exact(&bytes);
        let is_handoff = matches!(frame, Frame::Handoff { .. });
        let event = match self.replica.handle(&frame) {
            Ok(e) => e,
            Err(e) if is_handoff && self.handoff_refused.is_none() => {
                // Reported to the caller, which decides whether the refusal is the documented one.
                self.handoff_refused = Some(e.code);
                self.to_replica.clear();
                return true;
            }
            Err(e) => panic!("replica refused {frame:?}: {e}"),
        };
        match event {
            ReplicaEvent::Opened { geometry, .. } => {
                assert_eq!(geometry, self.geom);
                let local_hashes;
                let local = if self.lazy {
                    Local::Lazy
                } else {
                    local_hashes = hashes(&self.geom, &self.b);
                    Local::Hashes(&local_hashes)
                };
                self.replica.local_state(local).expect("local_state");
            }
            ReplicaEvent::Write { index, data } => {
                let r = self.geom.range(index);
                match data {
                    Some(d) => self.b[r].copy_from_slice(d),
                    None => self.b[r].fill(0),
                }
            }
            ReplicaEvent::Committed { generation } => self.acks.push(generation),
            ReplicaEvent::BecameOwner { generation } => self.became_owner = Some(generation),
            ReplicaEvent::None => {}
            e => panic!("unexpected replica event {e:?}"),
        }
        while let Some(f) = self.replica.poll_transmit() {
            decode_exact(&f);
            self.to_owner.push_back(f);
        }
        true
    }

    /// The owner handles one frame from the replica; false when none was in flight.
    pub fn owner_recv(&mut self) -> bool {
        let Some(bytes) = self.to_owner.pop_front() else {
            return false;
        };
        let frame = decode_exact(&bytes);
        match self.owner.handle(&frame) {
            Ok(OwnerEvent::HandedOff { generation }) => self.handed_off = Some(generation),
            Ok(OwnerEvent::PeerError { code, reason }) => panic!("peer error {code}: {reason}"),
            Ok(_) => {}
            Err(e) => panic!("owner refused {frame:?}: {e}"),
        }
        true
    }

    /// The owner's application writes `byte` over `len` bytes from `offset` (wrapped into the
    /// region), marking the chunks at once when `precise`.
    pub fn write(&mut self, offset: usize, len: usize, byte: u8) {
        let offset = offset % self.a.len();
        let end = (offset + len).min(self.a.len());
        self.a[offset..end].fill(byte);
        if self.precise {
            let chunks = self
                .geom
                .chunks_of_range(offset as u64, (end - offset) as u64);
            self.owner.mark_dirty(chunks);
        }
    }

    /// A hash scan of the owner's memory against what it last sent (nothing when `precise`).
    pub fn scan(&mut self) {
        if self.precise {
            return;
        }
        let mut d = DirtySet::new(self.geom.chunk_count());
        scan_changes(&self.geom, 0, &self.a, self.owner.known_hashes(), &mut d);
        self.owner.on_dirty(&d);
    }

    /// The stream breaks: frames in flight are lost; the owner restarts and a new replica state
    /// machine (same memory and committed generation) answers its OPEN. A lazy replica either
    /// stays lazy (STATE EMPTY LAZY again: the owner resends everything) or continues as an eager
    /// one reporting the hashes of what it holds (§8.3).
    pub fn disconnect(&mut self, stay_lazy: bool) {
        self.to_replica.clear();
        self.to_owner.clear();
        self.owner
            .restart()
            .expect("restart before a handoff completed");
        self.lazy = self.lazy && stay_lazy;
        self.replica = Replica::new(self.replica.committed());
    }

    /// Runs all three parties until nothing moves; panics past `budget` steps.
    pub fn run(&mut self, budget: usize) {
        for _ in 0..budget {
            let progressed = self.owner_send() | self.replica_recv() | self.owner_recv();
            if !progressed {
                return;
            }
        }
        panic!(
            "no quiescence after {budget} steps: {:?}",
            self.owner.state()
        );
    }

    /// A final scan, then run to quiescence; the owner must report itself synced.
    pub fn settle(&mut self) {
        self.scan();
        self.run(1_000_000);
        assert!(
            self.owner.is_synced(),
            "owner not synced: {:?}, backlog {}",
            self.owner.state(),
            self.owner.backlog()
        );
        assert_eq!(self.owner.backlog(), 0);
    }
}
