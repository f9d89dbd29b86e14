//! The whole system as a `stateright` model: three peers, their memories, the role machines on
//! each link, the frames in flight, and the harness around them (detector, lazy reads, handoff —
//! plain or post-copy —, the hand-back from B to A, connection loss). MODEL.md describes it in
//! prose.

use super::mirror::{self, Local, Mask, Mem, Msg, OwnerState, ReplicaState, ALL, GARBAGE, N};
use super::real::{
    self, OwnerInput, OwnerLog, OwnerOutput, ReplicaInput, ReplicaLog, ReplicaOutput,
};
use stateright::{Model, Property};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The peers: A owns the region at first, B is the replica ownership is handed to, C a lazy
/// replica.
pub const A: usize = 0;
pub const B: usize = 1;
pub const C: usize = 2;
pub const PEER_NAMES: [&str; 3] = ["A", "B", "C"];
/// The links (one QUIC connection and region stream each); end 0 is the first peer.
pub const LINKS: [(usize, usize); 3] = [(A, B), (A, C), (B, C)];
pub const LINK_NAMES: [&str; 3] = ["A–B", "A–C", "B–C"];

/// How the owner learns which chunks changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detector {
    /// Every write is reported as it happens (`mark_dirty`), as with userfaultfd or NBD.
    Precise,
    /// Writes are found by hash scans (`scan_changes` against `known_hashes`, then `on_dirty`),
    /// which run at any time, separately for each owner stream.
    HashScan,
}

/// The harness around the real machines: as the spec asks, deliberately broken (to show that
/// each property catches a bug), or with a candidate fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The harness as the spec asks.
    Correct,
    /// Candidate fix: a FETCHED chunk does not take the place of a round: a chunk sent FETCHED
    /// while it was pending (or in the unsent rest of the round), or with bytes other than those
    /// last sent (`K`), is marked dirty again, so a round — and its ACK — covers the change too.
    KeepFetchedPending,
    /// The replica's harness applies a generation's chunks only after its ACK was queued.
    AckBeforeApply,
    /// The owner skips reconciliation: it is handed its own hashes instead of the replica's.
    SkipReconcile,
    /// On reconnect the owner is rebuilt from its known hashes and generation
    /// (`Owner::new`) instead of `restart`, losing pending chunks and the unsent rest of the round.
    ForgetPendingOnRestart,
    /// After losing the connection in HandingOff, the old owner resumes ownership on its own.
    ResumeOwnershipAfterHandoff,
    /// The replica answers the old owner's probe while the lost HANDOFF can still reach it:
    /// the HANDOFF in flight when the connection died arrives after the probe's OPEN (breaks
    /// PROTOCOL.md §8.2 "One stream per region and owner").
    LateHandoffAfterProbe,
    /// The old owner begins the handoff without a final scan after stopping its writers.
    HandoffWithoutFinalScan,
    /// The replica's harness writes every chunk as a full chunk, ignoring the short last one.
    LastChunkFullLength,
    /// The replica's harness keeps its `Replica` across connections instead of starting a new
    /// one with `Replica::new(committed)`.
    ReuseReplicaAcrossConnections,
    /// The precise detector's reports of writes made while a round is in progress are lost (as
    /// when write protection is re-armed at the end of a round instead of its start).
    LoseReportsDuringRound,
    /// Post-copy: the new owner's harness writes every FETCHED copy it receives into the region,
    /// also one the replica drops because the chunk is held (written by the new owner, or
    /// arrived before): a late copy overwrites the new owner's write.
    ApplyEveryFetchedCopy,
    /// Post-copy: the replica's harness drops STALE frames unhandled (as if the owner had not
    /// named the pending chunks): the new owner keeps pre-copy versions as if they were current.
    IgnoreStale,
    /// Post-copy: the new owner's reader reads a chunk it misses without waiting for it.
    ReadWithoutWaiting,
    /// Hand-back: B does not stop its writers when it hands the region back to A.
    KeepWritingAfterHandBack,
    /// Hand-back: B begins the hand-back without a final scan after stopping its writers.
    HandBackWithoutFinalScan,
}

/// How much of the real machines' behaviour is compared with the mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Validation {
    /// Mirrors only.
    Off,
    /// Each distinct (mirror state, input) pair is run on a real machine once.
    Memo,
    /// Every step of every explored edge is run on a real machine.
    Every,
}

/// The bounds and the harness of one check.
#[derive(Clone, Debug)]
pub struct Config {
    pub detector: Detector,
    /// Writes in total, by whichever peer owns the region (A before the handoff, B after).
    pub writes: u8,
    /// Connection losses in total, and on each link.
    pub drops: u8,
    pub drops_per_link: u8,
    /// FETCH requests by the lazy replicas.
    pub fetches: u8,
    /// Whether reads on B while it is still a replica may fetch: a lazy B's missing chunks, or
    /// the chunks a post-copy drain named STALE. Such a FETCH can cross a post-copy HANDOFF
    /// (MODEL.md, finding 3). Reads on the new owner during post-copy (`Read`) are not affected.
    pub replica_fetches: bool,
    /// Whether FETCH_PARTS is negotiated: a read on a lazy replica may then also ask with
    /// FETCH_PART (an urgent FETCH of one chunk, spec §5.18). There is no fetch lane in the model,
    /// so no PART answers it; this checks FETCH_PART on the region stream.
    pub fetch_parts: bool,
    /// Restarts of the owner's process, which forgets its generation and everything pending.
    pub owner_crashes: u8,
    /// Whether A may hand ownership to B (once).
    pub handoff: bool,
    /// Whether B, once it owns the region after that handoff, may hand it back to A on the
    /// turned stream (once; a plain handoff with the roles swapped, spec §8.6). Only in pair
    /// configurations with a plain handoff (no C, no post-copy).
    pub handback: bool,
    /// Whether that handoff is a post-copy one (`begin_postcopy` instead of `begin_handoff`,
    /// spec §8.10): B takes ownership with the pending chunks named STALE and fetches them from
    /// A, which serves them until B ends the stream.
    pub postcopy: bool,
    /// Whether the lazy replica C takes part (without it: one owner, one replica).
    pub lazy_replica: bool,
    /// Whether B, the replica ownership is handed to, starts lazy too.
    pub lazy_target: bool,
    /// The values a write may write (a bit per value).
    pub write_values: u8,
    pub variant: Variant,
    pub validation: Validation,
    pub threads: usize,
}

impl Config {
    /// One owner (A) and two replicas (B eager, C lazy), one write, one connection loss, one
    /// fetch, one handoff; the real machines checked once per distinct step.
    pub fn base(detector: Detector) -> Config {
        Config {
            detector,
            writes: 1,
            drops: 1,
            drops_per_link: 1,
            fetches: 1,
            replica_fetches: true,
            fetch_parts: false,
            owner_crashes: 0,
            handoff: true,
            handback: false,
            postcopy: false,
            lazy_replica: true,
            lazy_target: false,
            write_values: 0b111,
            variant: Variant::Correct,
            validation: Validation::Memo,
            threads: 1,
        }
    }

    pub fn describe(&self) -> String {
        let values: Vec<u8> = (0..3).filter(|v| self.write_values & 1 << v != 0).collect();
        format!(
            "{} chunks; peers A (owner), B ({}){}; detector {:?}; writes ≤ {} of values {:?}; \
             connection losses ≤ {} (≤ {} per link); owner restarts ≤ {}; fetches ≤ {}{}; \
             handoff A→B: {}{}; \
             variant {:?}; validation {:?}",
            N,
            if self.lazy_target { "lazy" } else { "eager" },
            if self.lazy_replica { ", C (lazy)" } else { "" },
            self.detector,
            self.writes,
            values,
            self.drops,
            self.drops_per_link,
            self.owner_crashes,
            self.fetches,
            if self.fetch_parts {
                " (FETCH_PART too)"
            } else {
                ""
            },
            match (self.handoff, self.postcopy) {
                (false, _) => "no",
                (true, false) => "once",
                (true, true) => "once, post-copy",
            },
            if self.handback {
                "; hand-back B→A: once"
            } else {
                ""
            },
            self.variant,
            self.validation
        )
    }
}

/// Properties, as bits of [`Sys::violations`].
pub const P_ACK_HOLDS_SENT: u16 = 1;
pub const P_ACK_QUIET_SNAPSHOT: u16 = 2;
pub const P_WRITES_IN_REGION: u16 = 4;
pub const P_ONE_OWNER: u16 = 8;
pub const P_HANDOFF_COMPLETE: u16 = 16;
pub const P_NO_STREAM_ERROR: u16 = 32;
pub const P_HANDOFF_GENERATION_FINAL: u16 = 64;
pub const P_HANDOFF_REPLICA_HOLDS_FINAL: u16 = 128;
pub const P_POSTCOPY_NO_OVERWRITE: u16 = 256;
pub const P_POSTCOPY_COMPLETE: u16 = 512;
pub const P_POSTCOPY_READ: u16 = 1024;

/// Names of the safety properties, by bit.
pub const SAFETY: [(u16, &str); 11] = [
    (
        P_ACK_HOLDS_SENT,
        "ACK{g} only when the replica holds, for every chunk, the bytes the owner last sent for it before COMMIT{g}",
    ),
    (
        P_ACK_QUIET_SNAPSHOT,
        "ACK{g} of a quiet round only when the replica equals the owner's region at the round's start",
    ),
    (P_WRITES_IN_REGION, "no chunk is written outside the region"),
    (P_ONE_OWNER, "at most one owner at any instant"),
    (
        P_HANDOFF_COMPLETE,
        "the new owner holds every byte of the old owner's final generation",
    ),
    (P_NO_STREAM_ERROR, "no stream fails with an error"),
    (
        P_HANDOFF_GENERATION_FINAL,
        "HANDOFF{g} only when generation g's content is the old owner's final bytes",
    ),
    (
        P_HANDOFF_REPLICA_HOLDS_FINAL,
        "HANDOFF{g} only when the replica already holds the old owner's final bytes",
    ),
    (
        P_POSTCOPY_NO_OVERWRITE,
        "post-copy: a chunk the new owner wrote is never overwritten by a copy from the old owner",
    ),
    (
        P_POSTCOPY_COMPLETE,
        "post-copy: once the new owner misses no chunk, each holds the old owner's frozen bytes or the new owner's own write",
    ),
    (
        P_POSTCOPY_READ,
        "post-copy: the new owner's readers read only chunks it holds: the old owner's frozen bytes or its own write",
    ),
];

/// Properties that are claims of the spec checked without stopping the exploration.
pub const CLAIMS: u16 = P_HANDOFF_GENERATION_FINAL | P_HANDOFF_REPLICA_HOLDS_FINAL;
pub const LIVENESS: &str =
    "every quiescent continuation ends, within a bound, with every replica equal to the owner";

/// Things the checker saw happen at least once (reported, to show the bounds reach them).
pub const SEEN: [&str; 29] = [
    "a round committed and acknowledged",
    "a chunk was reconciled as already held",
    "a FETCH was answered with a FETCHED chunk",
    "an URGENT FETCH was sent",
    "a round was interrupted by a connection loss",
    "an empty round closed a generation lost with a connection",
    "a connection was lost while draining for the handoff",
    "ownership passed to B (HANDOFF_ACK received)",
    "B took over on reconnect after the connection was lost in HandingOff",
    "the connection was lost before B saw HANDOFF: A's probe found B a replica (spec §8.6)",
    "C was re-homed from A to B",
    "a write by the new owner reached a replica",
    "a FETCH was not answered again: the chunk was already sent on the stream",
    "the owner's process restarted",
    "a FETCH_PART was sent (an urgent FETCH of one chunk)",
    "post-copy: the freeze cut a round short (COMMIT of what it sent)",
    "post-copy: STALE named a pending chunk",
    "post-copy: B took ownership with chunks missing (PostCopy)",
    "post-copy: B wrote a chunk it missed, whole (local_write)",
    "post-copy: a late FETCHED copy was dropped, B holding the chunk",
    "post-copy: B's reader waited for a missing chunk (urgent FETCH)",
    "post-copy: the handoff completed (B held every chunk, A HandedOff)",
    "post-copy: the probe after a broken link was answered with resume_postcopy",
    "post-copy: the handoff completed after a broken link",
    "hand-back: the region was handed back to A (A accepted B's HANDOFF)",
    "hand-back: B received HANDOFF_ACK and turned replica",
    "hand-back: A took the region back on reconnect after the connection was lost in B's HandingOff",
    "hand-back: the connection was lost before A saw B's HANDOFF: B's probe found A a replica",
    "hand-back: a write by A, owner again, reached B",
];

/// Seen bits of the post-copy handoff, for the tests.
pub const SEEN_POSTCOPY_CUT: usize = 15;
pub const SEEN_POSTCOPY_STALE: usize = 16;
pub const SEEN_POSTCOPY_TAKEN: usize = 17;
pub const SEEN_POSTCOPY_LOCAL_WRITE: usize = 18;
pub const SEEN_POSTCOPY_LATE_COPY: usize = 19;
pub const SEEN_POSTCOPY_READ_WAITED: usize = 20;
pub const SEEN_POSTCOPY_DONE: usize = 21;
pub const SEEN_POSTCOPY_RESUMED: usize = 22;
pub const SEEN_POSTCOPY_DONE_AFTER_LOSS: usize = 23;

/// Seen bits of the hand-back (B hands the region back to A), for the tests.
pub const SEEN_HANDBACK_ACCEPTED: usize = 24;
pub const SEEN_HANDBACK_ACKED: usize = 25;
pub const SEEN_HANDBACK_TAKEN_ON_RECONNECT: usize = 26;
pub const SEEN_HANDBACK_PROBE_FOUND_REPLICA: usize = 27;
pub const SEEN_HANDBACK_WRITE_REACHED_B: usize = 28;

/// State of one link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not opened yet (B–C before the handoff).
    NotYet,
    Up,
    /// Closed for good: the old owner stopped serving its other replicas.
    Closed,
}

/// A role on one end of a link, with the log its real machine is rebuilt from.
#[derive(Clone, Debug)]
pub enum End {
    Idle,
    Owner {
        m: mirror::Owner,
        log: OwnerLog,
    },
    Replica {
        m: mirror::Replica,
        log: ReplicaLog,
        /// Answers the next OPEN with LAZY.
        lazy: bool,
        /// For [`Variant::AckBeforeApply`]: writes not applied yet.
        deferred: Vec<(u64, u8)>,
    },
}

impl PartialEq for End {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (End::Idle, End::Idle) => true,
            (End::Owner { m: a, .. }, End::Owner { m: b, .. }) => a == b,
            (
                End::Replica {
                    m: a,
                    lazy: la,
                    deferred: da,
                    ..
                },
                End::Replica {
                    m: b,
                    lazy: lb,
                    deferred: db,
                    ..
                },
            ) => a == b && la == lb && da == db,
            _ => false,
        }
    }
}

impl Eq for End {}

impl Hash for End {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            End::Idle => 0u8.hash(h),
            End::Owner { m, .. } => {
                1u8.hash(h);
                m.hash(h);
            }
            End::Replica {
                m, lazy, deferred, ..
            } => {
                2u8.hash(h);
                m.hash(h);
                lazy.hash(h);
                deferred.hash(h);
            }
        }
    }
}

impl End {
    fn new_owner(known: Mem, generation: u64) -> End {
        End::Owner {
            m: mirror::Owner::new(known, generation),
            log: OwnerLog {
                known,
                generation,
                inputs: Default::default(),
            },
        }
    }

    fn new_replica(committed: u64, lazy: bool) -> End {
        End::Replica {
            m: mirror::Replica::new(committed),
            log: ReplicaLog {
                committed,
                inputs: Default::default(),
            },
            lazy,
            deferred: Vec::new(),
        }
    }

    pub fn owner(&self) -> Option<&mirror::Owner> {
        match self {
            End::Owner { m, .. } => Some(m),
            _ => None,
        }
    }

    pub fn replica(&self) -> Option<&mirror::Replica> {
        match self {
            End::Replica { m, .. } => Some(m),
            _ => None,
        }
    }
}

/// The round an owner end has in progress, for [`P_ACK_QUIET_SNAPSHOT`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoundStart {
    /// The owner's region when the round started (S_g).
    pub mem: Mem,
    /// No write since the last detector report before S_g, nor since S_g.
    pub quiet: bool,
}

/// What the owner's COMMIT{g} closed, kept until the replica acknowledges g.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommitSnap {
    pub generation: u64,
    /// `K` when COMMIT{g} was sent: what the owner last sent of each chunk.
    pub known: Mem,
    /// Chunks the generation does not cover: pending when a post-copy drain sent COMMIT{g} (the
    /// drain names them STALE next), so P1 leaves them out.
    pub uncovered: Mask,
    pub start: Mem,
    pub quiet: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    pub status: Status,
    pub ends: [End; 2],
    /// `queues[e]`: frames sent by end `e`, in flight to the other end, oldest first.
    pub queues: [VecDeque<Msg>; 2],
    pub drops_left: u8,
    /// Hash detector: the end's peer wrote since this owner's last scan.
    pub unreported: [bool; 2],
    pub round: Option<RoundStart>,
    pub commits: Vec<CommitSnap>,
    /// The last generation the replica acknowledged on this link (across connections) and its
    /// content, `K` at its COMMIT.
    pub acked_content: Option<(u64, Mem)>,
    /// `LateHandoffAfterProbe` only: the lost HANDOFF, to arrive after the probe's OPEN.
    pub late_handoff: Option<Msg>,
    /// The replica end ended this stream (FIN queued after its last frame).
    pub fin: bool,
}

impl Link {
    fn new(status: Status, ends: [End; 2], drops: u8) -> Link {
        Link {
            status,
            ends,
            queues: Default::default(),
            drops_left: drops,
            unreported: [false; 2],
            round: None,
            commits: Vec::new(),
            acked_content: None,
            late_handoff: None,
            fin: false,
        }
    }

    fn close(&mut self, status: Status) {
        self.status = status;
        self.ends = [End::Idle, End::Idle];
        self.queues = Default::default();
        self.round = None;
        self.commits.clear();
        self.unreported = [false; 2];
    }
}

/// The progress of one handoff: A's to B ([`Sys::handoff`]), or B's back to A
/// ([`Sys::handback`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handoff {
    NotAsked,
    /// The owner stopped its writers and asked for the handoff.
    Asked,
    /// The owner gave the handoff up after a reconnect (its probe found the other peer a
    /// replica) and writes again.
    Abandoned,
}

/// A post-copy handoff B accepted and A still serves: what B's harness keeps across streams,
/// and what the post-copy properties compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PostCopy {
    /// The generation HANDOFF{POSTCOPY} named.
    pub generation: u64,
    /// A's region, frozen since A stopped its writers.
    pub frozen: Mem,
    /// Chunks B wrote since it took ownership.
    pub written: Mask,
    /// Chunks B misses: its replica's, while one is in PostCopy; B's harness keeps them across a
    /// broken link and answers the probe with them (`resume_postcopy`).
    pub missing: Mask,
    /// The link broke while B was fetching, and B resumed on a new stream.
    pub resumed: bool,
}

/// One state of the whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sys {
    pub mem: [Mem; 3],
    /// Each peer's replica generation, kept across streams.
    pub committed: [u64; 3],
    /// Who may let writers write (the owner, unless it stopped them for a handoff).
    pub may_write: [bool; 3],
    pub writes_left: u8,
    pub drops_left: u8,
    pub crashes_left: u8,
    pub fetches_left: u8,
    pub handoff: Handoff,
    /// The hand-back from B to A on the turned A–B stream ([`Config::handback`]).
    pub handback: Handoff,
    /// Shared until changed: most steps touch one link.
    pub links: [Arc<Link>; 3],
    /// The post-copy handoff under way (from B's acceptance to A's `finish`).
    pub postcopy: Option<PostCopy>,
    /// Safety properties violated on the way here (exploration stops at such states).
    pub violations: u16,
    /// Claims of the spec found false by the step that led here (exploration goes on).
    pub claims: u16,
}

impl Sys {
    fn peer(l: usize, e: usize) -> usize {
        if e == 0 {
            LINKS[l].0
        } else {
            LINKS[l].1
        }
    }

    /// The owner the replicas should converge to: the peer holding the region's newest bytes.
    fn source(&self) -> usize {
        if self.may_write[B] {
            B
        } else {
            A
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "mem A={:?} B={:?} C={:?}; writers {:?}",
            self.mem[A],
            self.mem[B],
            self.mem[C],
            (0..3)
                .filter(|&p| self.may_write[p])
                .map(|p| PEER_NAMES[p])
                .collect::<Vec<_>>()
        );
        for (l, link) in self.links.iter().enumerate() {
            s += &format!("; {} {:?}", LINK_NAMES[l], link.status);
            if link.status != Status::Up {
                continue;
            }
            for (e, end) in link.ends.iter().enumerate() {
                let p = PEER_NAMES[Sys::peer(l, e)];
                match end {
                    End::Idle => {}
                    End::Owner { m, .. } => {
                        s += &format!(
                            " {p}:owner {:?} G={} acked={} K={:?} pending={:02b} round={:02b} sent={:02b}",
                            m.state, m.generation, m.acked, m.known, m.pending, m.round, m.on_stream
                        )
                    }
                    End::Replica { m, .. } => {
                        s += &format!(" {p}:replica {:?} committed={}", m.state, m.committed);
                        if let Some(present) = m.present {
                            s += &format!(" present={present:02b}");
                        }
                    }
                }
            }
        }
        if let Some(pc) = &self.postcopy {
            s += &format!(
                "; post-copy at {}: frozen A={:?}, B wrote {:02b}, B misses {:02b}",
                pc.generation, pc.frozen, pc.written, pc.missing
            );
        }
        s
    }
}

/// An action of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The owner's application writes `value` over the chunks of `chunks`.
    Write { peer: u8, chunks: Mask, value: u8 },
    /// A hash scan for the owner on end `end` of `link`.
    Scan { link: u8, end: u8 },
    /// The owner on end `end` of `link` sends its next frame (`poll_transmit`).
    Send { link: u8, end: u8 },
    /// The oldest frame sent by end `from` of `link` arrives and is handled.
    Deliver { link: u8, from: u8 },
    /// The link's connection dies, losing everything in flight, and is re-established.
    Drop { link: u8 },
    /// A stops its writers, reports their last changes and calls `begin_handoff`.
    BeginHandoff,
    /// After a reconnect while draining, A calls `begin_handoff` again once streaming.
    ResumeHandoff,
    /// After a reconnect while draining or handing off, A gives the handoff up once streaming
    /// again and lets its writers write (spec §8.6: a probe answered with STATE allows it).
    AbandonHandoff,
    /// B, owner since the handoff, stops its writers, reports their last changes and calls
    /// `begin_handoff` on its owner role on the turned A–B stream: the hand-back.
    HandBack,
    /// After a reconnect while B drains or hands back, B calls `begin_handoff` again once
    /// streaming.
    ResumeHandBack,
    /// In the same states, B gives the hand-back up and lets its writers write again.
    AbandonHandBack,
    /// A read of chunk `chunk` on a lazy replica asks for it (`fetch(chunk, 1, urgent)`).
    Fetch { peer: u8, chunk: u64, urgent: bool },
    /// With FETCH_PARTS, a read of the last byte of chunk `chunk` on a lazy replica asks for it
    /// (`fetch_part(chunk, chunk_len − 1, 1)`).
    FetchPart { peer: u8, chunk: u64 },
    /// B, the new owner, opens a stream to C.
    Connect,
    /// Post-copy: a reader on B, the new owner, reads chunk `chunk`: a chunk B holds is read at
    /// once; for one it misses the reader waits and asks with `fetch(chunk, 1, urgent)` (as a
    /// partial writer of a missing chunk does).
    Read { chunk: u64 },
    /// The owner's process restarts: every stream it serves is lost and reopened by a new
    /// `Owner::new(hashes of its region, generation 0)`; its replicas reconnect with what they hold.
    CrashOwner { peer: u8 },
}

impl Action {
    /// Actions that continue a quiescent system: no writes, connection losses, reads or new
    /// handoffs.
    pub fn is_progress(&self) -> bool {
        matches!(
            self,
            Action::Scan { .. }
                | Action::Send { .. }
                | Action::Deliver { .. }
                | Action::ResumeHandoff
                | Action::ResumeHandBack
                | Action::Connect
        )
    }
}

/// A quiescent continuation that does not end converged (or does not end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotConverging;

/// The model: a configuration and the checker's caches.
pub struct MemsyncModel {
    pub cfg: Config,
    validated: Mutex<HashSet<u64>>,
    quiescent: Mutex<HashMap<u64, Result<u32, NotConverging>>>,
    pub max_quiescent_steps: AtomicU32,
    pub seen: AtomicU32,
}

/// A fast 64-bit hasher for the checker's own tables (multiply-xor per word, then a murmur3
/// finaliser).
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(23) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub fn fingerprint<T: Hash>(t: &T) -> u64 {
    let mut h = FastHasher::default();
    t.hash(&mut h);
    h.finish()
}

/// The bytes a FETCH_PART of the model asks for: the last byte of the chunk.
fn last_byte(chunk: u64) -> (u32, u32) {
    (mirror::CHUNK_LEN[chunk as usize] as u32 - 1, 1)
}

fn see(model: &MemsyncModel, what: usize) {
    model.seen.fetch_or(1 << what, Ordering::Relaxed);
}

/// One transition being computed.
struct Run<'m> {
    model: &'m MemsyncModel,
    validate: bool,
    s: Sys,
}

impl Run<'_> {
    fn cfg(&self) -> &Config {
        &self.model.cfg
    }

    fn violate(&mut self, p: u16) {
        self.s.violations |= p;
    }

    /// Whether the real machines may be rebuilt from this state's logs later.
    fn logging(&self) -> bool {
        self.validate && self.cfg().validation != Validation::Off
    }

    fn check_step(&self, key: u64) -> bool {
        match self.cfg().validation {
            _ if !self.validate => false,
            Validation::Off => false,
            Validation::Every => true,
            Validation::Memo => self.model.validated.lock().unwrap().insert(key),
        }
    }

    /// Gives `input` to the owner on end `e` of link `l`: mirror, real machine, log.
    fn owner(&mut self, l: usize, e: usize, input: OwnerInput) -> OwnerOutput {
        let End::Owner { m, log } = &mut Arc::make_mut(&mut self.s.links[l]).ends[e] else {
            panic!("no owner on end {e} of {}", LINK_NAMES[l]);
        };
        let before = m.clone();
        let out = real::mirror_owner_step(m, &input);
        let (m, log) = (m.clone(), log.clone());
        if self.check_step(fingerprint(&(0u8, &before, &input))) {
            real::check_owner_step(&log, &before, &input, &out, &m);
        }
        if self.logging() {
            if let End::Owner { log, .. } = &mut Arc::make_mut(&mut self.s.links[l]).ends[e] {
                log.inputs = log.inputs.push(input);
            }
        }
        out
    }

    /// Gives `input` to the replica on end `e` of link `l` and sends what it queued.
    fn replica(&mut self, l: usize, e: usize, input: ReplicaInput) -> ReplicaOutput {
        let End::Replica { m, log, .. } = &mut Arc::make_mut(&mut self.s.links[l]).ends[e] else {
            panic!("no replica on end {e} of {}", LINK_NAMES[l]);
        };
        let before = m.clone();
        let out = real::mirror_replica_step(m, &input);
        let (m, log) = (m.clone(), log.clone());
        if self.check_step(fingerprint(&(1u8, &before, &input))) {
            real::check_replica_step(&log, &before, &input, &out, &m);
        }
        if self.logging() {
            if let End::Replica { log, .. } = &mut Arc::make_mut(&mut self.s.links[l]).ends[e] {
                log.inputs = log.inputs.push(input);
            }
        }
        Arc::make_mut(&mut self.s.links[l]).queues[e].extend(out.sent.iter().cloned());
        out
    }

    /// Links on which `p` is an owner, with its end.
    fn owner_ends(&self, p: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for l in 0..3 {
            for e in 0..2 {
                if Sys::peer(l, e) == p
                    && self.s.links[l].status == Status::Up
                    && matches!(self.s.links[l].ends[e], End::Owner { .. })
                {
                    v.push((l, e));
                }
            }
        }
        v
    }

    fn write(&mut self, p: usize, chunks: Mask, value: u8) {
        if let (B, Some(mut pc)) = (p, self.s.postcopy) {
            // The new owner writes while it may still miss chunks: a chunk it misses is written
            // whole (a partial write of one waits for it, as a reader does: `Read`), and
            // `local_write` tells the replica, which then drops a copy still on its way. With no
            // stream in PostCopy (the link broke), B's harness keeps the missing set itself.
            for i in (0..N as u64).filter(|&i| chunks & 1 << i != 0) {
                if self.b_fetching() {
                    let out = self.replica(0, 1, ReplicaInput::LocalWrite(i));
                    if out.result == Ok(mirror::ReplicaEvent::LocalWrite { was_missing: true }) {
                        see(self.model, SEEN_POSTCOPY_LOCAL_WRITE);
                    }
                } else if pc.missing & 1 << i != 0 {
                    see(self.model, SEEN_POSTCOPY_LOCAL_WRITE);
                }
                pc.missing &= !(1 << i);
            }
            pc.written |= chunks;
            self.s.postcopy = Some(pc);
        }
        for i in 0..N {
            if chunks & 1 << i != 0 {
                self.s.mem[p][i] = value;
            }
        }
        self.s.writes_left -= 1;
        for (l, e) in self.owner_ends(p) {
            let in_round = self.s.links[l].ends[e].owner().is_some_and(|m| m.in_round);
            match self.cfg().detector {
                Detector::Precise
                    if in_round && self.cfg().variant == Variant::LoseReportsDuringRound => {}
                Detector::Precise => {
                    self.owner(l, e, OwnerInput::Mark(chunks));
                }
                Detector::HashScan => Arc::make_mut(&mut self.s.links[l]).unreported[e] = true,
            }
            if let Some(r) = &mut Arc::make_mut(&mut self.s.links[l]).round {
                r.quiet = false;
            }
        }
    }

    /// Whether B's replica end on A–B is fetching after a post-copy handoff (PostCopy).
    fn b_fetching(&self) -> bool {
        Self::fetching(&self.s)
    }

    fn fetching(s: &Sys) -> bool {
        s.postcopy.is_some()
            && s.links[0].status == Status::Up
            && s.links[0].ends[1]
                .replica()
                .is_some_and(|r| r.state == ReplicaState::PostCopy)
    }

    /// A reader on B during post-copy.
    fn read(&mut self, chunk: u64) {
        let pc = self
            .s
            .postcopy
            .expect("reads are modelled during post-copy");
        let b = 1 << chunk;
        if pc.missing & b != 0 && self.cfg().variant != Variant::ReadWithoutWaiting {
            // The reader waits for the chunk and asks for it urgently.
            self.s.fetches_left -= 1;
            see(self.model, SEEN_POSTCOPY_READ_WAITED);
            self.replica(
                0,
                1,
                ReplicaInput::Fetch {
                    first: chunk,
                    count: 1,
                    urgent: true,
                },
            );
            return;
        }
        let value = self.s.mem[B][chunk as usize];
        let expected = if pc.written & b != 0 {
            value
        } else {
            pc.frozen[chunk as usize]
        };
        if pc.missing & b != 0 || value != expected {
            self.violate(P_POSTCOPY_READ);
        }
    }

    /// After every step of a post-copy handoff: B's missing set follows its replica's while one
    /// is fetching (or complete) on A–B; a replica that holds every chunk ends the stream (FIN
    /// after its last frame); and once B misses nothing, its region is A's frozen bytes but for
    /// what B wrote since.
    fn postcopy_sync(&mut self) {
        let Some(mut pc) = self.s.postcopy else {
            return;
        };
        let link = &self.s.links[0];
        if link.status == Status::Up {
            if let Some(r) = link.ends[1].replica() {
                if matches!(r.state, ReplicaState::PostCopy | ReplicaState::BecameOwner) {
                    pc.missing = ALL & !r.present.unwrap_or(ALL);
                    if r.state == ReplicaState::BecameOwner && !link.fin {
                        let link = Arc::make_mut(&mut self.s.links[0]);
                        link.queues[1].push_back(Msg::Fin);
                        link.fin = true;
                    }
                }
            }
        }
        self.s.postcopy = Some(pc);
        if pc.missing == 0
            && (0..N).any(|i| pc.written & 1 << i == 0 && self.s.mem[B][i] != pc.frozen[i])
        {
            self.violate(P_POSTCOPY_COMPLETE);
        }
    }

    /// A's `finish` after B's FIN on link `l`: the post-copy handoff at `g` is complete. A's
    /// frames still in flight (FETCHED copies) reach B first; then a new stream carries the
    /// region from B, its owner, to A, its replica.
    fn postcopy_done(&mut self, l: usize, g: u64) {
        while let Some(msg) = Arc::make_mut(&mut self.s.links[l]).queues[0].pop_front() {
            self.deliver_to_replica(l, 1, msg);
        }
        assert!(
            self.s.links[l].queues[1].is_empty(),
            "FIN is the last thing B sent"
        );
        let pc = self
            .s
            .postcopy
            .take()
            .expect("a post-copy handoff under way");
        see(self.model, SEEN_POSTCOPY_DONE);
        if pc.resumed {
            see(self.model, SEEN_POSTCOPY_DONE_AFTER_LOSS);
        }
        self.become_replica(l, 0, g);
        let link = Arc::make_mut(&mut self.s.links[l]);
        link.ends[1] = End::new_owner(self.s.mem[B], g);
        link.queues = Default::default();
        link.commits.clear();
        link.round = None;
        link.unreported = [false; 2];
        link.fin = false;
    }

    fn scan(&mut self, l: usize, e: usize) {
        let mem = self.s.mem[Sys::peer(l, e)];
        self.owner(l, e, OwnerInput::Scan { mem });
        Arc::make_mut(&mut self.s.links[l]).unreported[e] = false;
    }

    fn send(&mut self, l: usize, e: usize) {
        let p = Sys::peer(l, e);
        let owner = self.s.links[l].ends[e].owner().unwrap();
        let before = owner.generation;
        let known = owner.known;
        let unsent_round = (owner.cursor..N as u64).fold(0, |a, i| a | (owner.round & 1 << i));
        let dirty = owner.pending | if owner.in_round { unsent_round } else { 0 };
        let asked = owner.urgent.len() + owner.background.len();
        // A COMMIT of a post-copy drain closes a round cut short, or an empty one owed: neither
        // takes every pending chunk (the rest is named STALE), so P2 does not apply to it.
        let postcopy_drain = owner.postcopy && owner.state == OwnerState::Draining;
        let cut = postcopy_drain && owner.in_round && unsent_round != 0;
        let out = self.owner(l, e, OwnerInput::Poll { mem: self.s.mem[p] });
        let OwnerOutput::Transmit(msg) = out else {
            unreachable!("poll_transmit answers a transmit");
        };
        let polled = self.s.links[l].ends[e].owner().unwrap();
        let answered = matches!(msg, Some(Msg::Chunk { fetched: true, .. })) as usize;
        if asked - polled.urgent.len() - polled.background.len() > answered {
            // FETCH entries of chunks sent since they were queued were dropped (§8.1 rule 1).
            see(self.model, 12);
        }
        let Some(msg) = msg else {
            // Nothing to send but such entries: dropping them was the whole step.
            assert!(asked > 0, "Send enabled with nothing to send");
            return;
        };
        if let (
            Variant::KeepFetchedPending,
            &Msg::Chunk {
                index,
                value,
                fetched: true,
            },
        ) = (self.cfg().variant, &msg)
        {
            if value != known[index as usize] || dirty & 1 << index != 0 {
                self.owner(l, e, OwnerInput::Mark(1 << index));
            }
        }
        let after = self.s.links[l].ends[e].owner().unwrap().clone();
        let link = Arc::make_mut(&mut self.s.links[l]);
        if after.generation > before {
            link.round = Some(RoundStart {
                mem: self.s.mem[p],
                quiet: !link.unreported[e],
            });
        }
        match &msg {
            Msg::Commit {
                generation,
                records,
            } => {
                let r = link.round.take().expect("COMMIT closes a started round");
                link.commits.push(CommitSnap {
                    generation: *generation,
                    known: after.known,
                    uncovered: if postcopy_drain { after.pending } else { 0 },
                    start: r.mem,
                    quiet: r.quiet && !postcopy_drain,
                });
                if records.is_empty() && !postcopy_drain {
                    see(self.model, 5);
                }
                if cut {
                    see(self.model, SEEN_POSTCOPY_CUT);
                }
            }
            Msg::Chunk { fetched: true, .. } => see(self.model, 2),
            Msg::Stale { .. } => see(self.model, SEEN_POSTCOPY_STALE),
            // A post-copy HANDOFF leaves the chunks named STALE to be fetched: the claims are
            // about a plain one (the post-copy properties check what B ends up with).
            Msg::Handoff {
                generation,
                postcopy: false,
            } => {
                if link.acked_content != Some((*generation, self.s.mem[p])) {
                    self.s.claims |= P_HANDOFF_GENERATION_FINAL;
                }
                if self.s.mem[Sys::peer(l, 1 - e)] != self.s.mem[p] {
                    self.s.claims |= P_HANDOFF_REPLICA_HOLDS_FINAL;
                }
            }
            _ => {}
        }
        let open = matches!(msg, Msg::Open { .. });
        link.queues[e].push_back(msg);
        if let (true, Some(handoff)) = (open, link.late_handoff.take()) {
            link.queues[e].push_back(handoff);
        }
    }

    fn deliver(&mut self, l: usize, from: usize) {
        let to = 1 - from;
        let mut msg = Arc::make_mut(&mut self.s.links[l]).queues[from]
            .pop_front()
            .expect("a frame in flight");
        let asked = match msg {
            Msg::Fetch { first, count, .. } => Some(first..first + count as u64),
            Msg::FetchPart { index, .. } => Some(index..index + 1),
            _ => None,
        };
        if let (Some(asked), End::Owner { m, .. }) = (asked, &self.s.links[l].ends[to]) {
            if asked.into_iter().any(|i| m.on_stream & 1 << i != 0) {
                see(self.model, 12);
            }
        }
        let known = match &self.s.links[l].ends[to] {
            End::Owner { m, .. } => Some(m.known),
            End::Replica { .. } => None,
            End::Idle => unreachable!("a frame to an idle end"),
        };
        match known {
            Some(_) if msg == Msg::Fin => {
                // B ended the stream: it holds every chunk.
                match self.owner(l, to, OwnerInput::Finish) {
                    OwnerOutput::Finished(Some(g)) => self.postcopy_done(l, g),
                    _ => self.violate(P_NO_STREAM_ERROR),
                }
            }
            Some(known) => {
                if let (Variant::SkipReconcile, Msg::Hashes { first, values }) =
                    (self.cfg().variant, &msg)
                {
                    let first = *first;
                    let values = known[first as usize..first as usize + values.len()].to_vec();
                    msg = Msg::Hashes { first, values };
                }
                match self.owner(l, to, OwnerInput::Handle(msg)) {
                    OwnerOutput::Event(Err(_)) => self.violate(P_NO_STREAM_ERROR),
                    OwnerOutput::Event(Ok(mirror::OwnerEvent::HandedOff { generation })) => {
                        if Sys::peer(l, to) == B {
                            see(self.model, SEEN_HANDBACK_ACKED);
                        } else {
                            see(self.model, 7);
                        }
                        let serving = self.s.links[l].ends[to]
                            .owner()
                            .is_some_and(|m| matches!(m.state, OwnerState::Serving { .. }));
                        // After a post-copy handoff A serves B's FETCHes until B ends the
                        // stream; after a plain one it turns replica at once.
                        if !serving {
                            self.become_replica(l, to, generation);
                        }
                    }
                    OwnerOutput::Event(Ok(mirror::OwnerEvent::Reconciled {
                        differing, ..
                    })) => {
                        if differing < N as u64 {
                            see(self.model, 1);
                        }
                    }
                    OwnerOutput::Event(Ok(_)) => {}
                    o => unreachable!("{o:?}"),
                }
            }
            None => self.deliver_to_replica(l, to, msg),
        }
    }

    fn deliver_to_replica(&mut self, l: usize, e: usize, msg: Msg) {
        let p = Sys::peer(l, e);
        if self.cfg().variant == Variant::IgnoreStale && matches!(msg, Msg::Stale { .. }) {
            return;
        }
        let copy = match msg {
            Msg::Chunk {
                index,
                value,
                fetched: true,
            } => Some((index, value)),
            _ => None,
        };
        let postcopy_handoff = matches!(msg, Msg::Handoff { postcopy: true, .. });
        let out = self.replica(l, e, ReplicaInput::Handle(msg));
        let new_owner_fetching = p == B && self.s.postcopy.is_some();
        match out.result {
            Err(_) => self.violate(P_NO_STREAM_ERROR),
            Ok(mirror::ReplicaEvent::None) => {
                if let (Some((index, value)), true) = (copy, new_owner_fetching) {
                    // The replica dropped a late copy: B holds the chunk.
                    see(self.model, SEEN_POSTCOPY_LATE_COPY);
                    if self.cfg().variant == Variant::ApplyEveryFetchedCopy {
                        if self.s.postcopy.unwrap().written & 1 << index != 0 {
                            self.violate(P_POSTCOPY_NO_OVERWRITE);
                        }
                        self.s.mem[p][index as usize] = value;
                    }
                }
            }
            Ok(mirror::ReplicaEvent::LocalWrite { .. }) => unreachable!("not an answer to a frame"),
            Ok(mirror::ReplicaEvent::Opened { .. }) if new_owner_fetching => {
                // B took ownership in a post-copy handoff and still fetched when the link broke:
                // it answers the probe's OPEN by resuming, with the chunks it still misses.
                let mut pc = self.s.postcopy.unwrap();
                pc.resumed = true;
                self.s.postcopy = Some(pc);
                see(self.model, SEEN_POSTCOPY_RESUMED);
                let out = self.replica(
                    l,
                    e,
                    ReplicaInput::ResumePostcopy {
                        generation: pc.generation,
                        missing: pc.missing,
                    },
                );
                if out.result.is_err() {
                    self.violate(P_NO_STREAM_ERROR);
                }
            }
            Ok(mirror::ReplicaEvent::Opened { .. }) => {
                let End::Replica { lazy, .. } = self.s.links[l].ends[e] else {
                    unreachable!()
                };
                let local = if lazy {
                    Local::Lazy
                } else {
                    Local::Hashes(self.s.mem[p])
                };
                let out = self.replica(l, e, ReplicaInput::Local(local));
                assert!(out.result.is_ok(), "local_state after OPEN");
            }
            Ok(mirror::ReplicaEvent::Write { index, value }) => {
                // The byte range the harness writes.
                let geom = real::ctx().geom;
                let range = match self.cfg().variant {
                    Variant::LastChunkFullLength => {
                        let start = geom.offset(index);
                        start..start + geom.chunk_size()
                    }
                    _ => {
                        let r = geom.range(index);
                        r.start as u64..r.end as u64
                    }
                };
                if range.end > geom.size() || index >= N as u64 {
                    self.violate(P_WRITES_IN_REGION);
                }
                match &mut Arc::make_mut(&mut self.s.links[l]).ends[e] {
                    End::Replica { deferred, .. }
                        if self.model.cfg.variant == Variant::AckBeforeApply =>
                    {
                        deferred.push((index, value))
                    }
                    _ => self.s.mem[p][index as usize] = value,
                }
                if self.s.may_write[B] && Sys::peer(l, 1 - e) == B {
                    see(self.model, 11);
                }
                if self.s.handback == Handoff::Asked && self.s.may_write[A] && p == B {
                    see(self.model, SEEN_HANDBACK_WRITE_REACHED_B);
                }
                if new_owner_fetching && self.s.postcopy.unwrap().written & 1 << index != 0 {
                    self.violate(P_POSTCOPY_NO_OVERWRITE);
                }
            }
            Ok(mirror::ReplicaEvent::Committed { generation }) => {
                self.s.committed[p] = generation;
                see(self.model, 0);
                let link = Arc::make_mut(&mut self.s.links[l]);
                let snap = link
                    .commits
                    .iter()
                    .find(|c| c.generation == generation)
                    .cloned()
                    .expect("the owner's COMMIT was recorded");
                link.commits.retain(|c| c.generation > generation);
                link.acked_content = Some((generation, snap.known));
                if (0..N).any(|i| snap.uncovered & 1 << i == 0 && self.s.mem[p][i] != snap.known[i])
                {
                    self.violate(P_ACK_HOLDS_SENT);
                }
                if snap.quiet && self.s.mem[p] != snap.start {
                    self.violate(P_ACK_QUIET_SNAPSHOT);
                }
                if let End::Replica { deferred, .. } =
                    &mut Arc::make_mut(&mut self.s.links[l]).ends[e]
                {
                    for (i, v) in std::mem::take(deferred) {
                        self.s.mem[p][i as usize] = v;
                    }
                }
            }
            Ok(mirror::ReplicaEvent::BecameOwner { generation }) if postcopy_handoff => {
                // B owns the region at once and keeps its replica role on this stream to fetch
                // what it misses; A, frozen, serves it.
                let r = self.s.links[l].ends[e].replica().unwrap();
                let missing = ALL & !r.present.unwrap_or(ALL);
                if missing != 0 {
                    see(self.model, SEEN_POSTCOPY_TAKEN);
                }
                self.s.postcopy = Some(PostCopy {
                    generation,
                    frozen: self.s.mem[Sys::peer(l, 1 - e)],
                    written: 0,
                    missing,
                    resumed: false,
                });
                self.s.may_write[p] = true;
            }
            Ok(mirror::ReplicaEvent::BecameOwner { generation }) => {
                let old = Sys::peer(l, 1 - e);
                if self.s.mem[p] != self.s.mem[old] {
                    self.violate(P_HANDOFF_COMPLETE);
                }
                if p == A {
                    see(self.model, SEEN_HANDBACK_ACCEPTED);
                }
                let link = Arc::make_mut(&mut self.s.links[l]);
                link.ends[e] = End::new_owner(self.s.mem[p], generation);
                link.commits.clear();
                link.round = None;
                link.unreported[e] = false;
                self.s.may_write[p] = true;
            }
        }
    }

    /// The old owner on end `e` of link `l` turns replica at generation `g`, and stops serving
    /// the region to anyone else.
    fn become_replica(&mut self, l: usize, e: usize, g: u64) {
        let p = Sys::peer(l, e);
        Arc::make_mut(&mut self.s.links[l]).ends[e] = End::new_replica(g, false);
        self.s.committed[p] = g;
        for (l2, _) in self.owner_ends(p) {
            Arc::make_mut(&mut self.s.links[l2]).close(Status::Closed);
        }
    }

    fn drop_link(&mut self, l: usize) {
        let link = Arc::make_mut(&mut self.s.links[l]);
        link.drops_left -= 1;
        self.s.drops_left -= 1;
        let link = Arc::make_mut(&mut self.s.links[l]);
        link.queues = Default::default();
        link.commits.clear();
        if link.round.take().is_some() {
            see(self.model, 4);
        }
        if self.s.handoff == Handoff::Asked
            && l == 0
            && matches!(
                link.ends[0].owner().map(|m| m.state),
                Some(OwnerState::Draining)
            )
        {
            see(self.model, 6);
        }
        link.fin = false;
        let mut renewed = Vec::new();
        for e in 0..2 {
            if renewed.contains(&e) {
                continue;
            }
            let End::Owner { m, .. } = &self.s.links[l].ends[e] else {
                continue;
            };
            let (known, generation, state, postcopy) = (m.known, m.generation, m.state, m.postcopy);
            let handing_off = matches!(
                state,
                OwnerState::HandingOff { .. }
                    | OwnerState::Probing { .. }
                    | OwnerState::Serving { .. }
            );
            if self.cfg().variant == Variant::ForgetPendingOnRestart && !handing_off {
                Arc::make_mut(&mut self.s.links[l]).ends[e] = End::new_owner(known, generation);
                continue;
            }
            let p = Sys::peer(l, e);
            if handing_off && self.cfg().variant == Variant::ResumeOwnershipAfterHandoff {
                Arc::make_mut(&mut self.s.links[l]).ends[e] =
                    End::new_owner(self.s.mem[p], generation);
                self.s.may_write[p] = true;
                self.s.handoff = Handoff::NotAsked;
                continue;
            }
            if handing_off && matches!(self.s.links[l].ends[1 - e], End::Owner { .. }) {
                // The other side accepted: it answers the probe with HANDED_OVER and opens the
                // region as owner; this peer, which handed off at g, answers as a replica (spec
                // §8.6). One step here.
                let (OwnerState::HandingOff { generation: g }
                | OwnerState::Probing { generation: g }) = state
                else {
                    unreachable!()
                };
                see(
                    self.model,
                    if p == B {
                        SEEN_HANDBACK_TAKEN_ON_RECONNECT
                    } else {
                        8
                    },
                );
                self.become_replica(l, e, g);
                renewed.push(e);
                continue;
            }
            if let (true, Some(pc)) = (handing_off, self.s.postcopy) {
                if pc.missing == 0 {
                    // B took ownership in a post-copy handoff and holds every chunk: it answers
                    // the probe with HANDED_OVER and opens the region as owner, as after a plain
                    // handoff (one step here).
                    let (OwnerState::HandingOff { generation: g }
                    | OwnerState::Probing { generation: g }
                    | OwnerState::Serving { generation: g }) = state
                    else {
                        unreachable!()
                    };
                    see(self.model, 8);
                    see(self.model, SEEN_POSTCOPY_DONE);
                    see(self.model, SEEN_POSTCOPY_DONE_AFTER_LOSS);
                    self.s.postcopy = None;
                    self.become_replica(l, e, g);
                    Arc::make_mut(&mut self.s.links[l]).ends[1 - e] =
                        End::new_owner(self.s.mem[B], g);
                    renewed.extend([e, 1 - e]);
                    continue;
                }
            }
            if let OwnerOutput::Unit(Err(_)) = self.owner(l, e, OwnerInput::Restart) {
                panic!("restart refused in {state:?}");
            }
            if let (OwnerState::HandingOff { generation: g }, None) = (state, self.s.postcopy) {
                // The other side never saw HANDOFF: the restart is a probe (OPEN), which the
                // replica below answers as a replica, with STATE.
                see(
                    self.model,
                    if p == B {
                        SEEN_HANDBACK_PROBE_FOUND_REPLICA
                    } else {
                        9
                    },
                );
                if self.cfg().variant == Variant::LateHandoffAfterProbe {
                    // Delivered after the probe's OPEN (see `send`).
                    Arc::make_mut(&mut self.s.links[l]).late_handoff = Some(Msg::Handoff {
                        generation: g,
                        postcopy,
                    });
                }
            }
            // Otherwise, after a post-copy handoff B took, B answers the probe with
            // `resume_postcopy` (see `deliver_to_replica`).
        }
        for e in 0..2 {
            if renewed.contains(&e) {
                continue;
            }
            if let End::Replica { .. } = self.s.links[l].ends[e] {
                if self.cfg().variant == Variant::ReuseReplicaAcrossConnections {
                    continue;
                }
                let p = Sys::peer(l, e);
                // A lazy replica reconnects as an eager one holding what it has (spec §8.3).
                Arc::make_mut(&mut self.s.links[l]).ends[e] =
                    End::new_replica(self.s.committed[p], false);
            }
        }
    }

    /// The owner `p` (A handing off, or B handing back) reports its writers' last changes (hash
    /// detector: one more scan of every stream it serves) and calls `begin_handoff` (A in the
    /// post-copy configurations: `begin_postcopy`) on its end of A–B.
    fn begin_handoff(&mut self, p: usize) {
        let skip_scan = match p {
            A => Variant::HandoffWithoutFinalScan,
            _ => Variant::HandBackWithoutFinalScan,
        };
        if self.cfg().detector == Detector::HashScan && self.cfg().variant != skip_scan {
            for (l, e) in self.owner_ends(p) {
                self.scan(l, e);
            }
        }
        let input = if self.cfg().postcopy {
            OwnerInput::BeginPostcopy
        } else {
            OwnerInput::BeginHandoff
        };
        // A is end 0 of A–B, B end 1.
        let out = self.owner(0, p, input);
        assert_eq!(out, OwnerOutput::Unit(Ok(())), "begin_handoff in Streaming");
    }

    /// Where `peer` is a lazy replica able to fetch.
    fn fetch_end(&self, peer: usize) -> Option<(usize, usize)> {
        (0..3).find_map(|l| {
            let link = &self.s.links[l];
            let e = (0..2).find(|&e| Sys::peer(l, e) == peer)?;
            let m = link.ends[e].replica()?;
            (link.status == Status::Up && m.state == ReplicaState::Receiving && m.present.is_some())
                .then_some((l, e))
        })
    }

    fn apply(&mut self, action: &Action) {
        self.s.claims = 0;
        match *action {
            Action::Write {
                peer,
                chunks,
                value,
            } => self.write(peer as usize, chunks, value),
            Action::Scan { link, end } => self.scan(link as usize, end as usize),
            Action::Send { link, end } => self.send(link as usize, end as usize),
            Action::Deliver { link, from } => self.deliver(link as usize, from as usize),
            Action::Drop { link } => self.drop_link(link as usize),
            Action::BeginHandoff => {
                self.s.may_write[A] = false;
                self.s.handoff = Handoff::Asked;
                self.begin_handoff(A);
            }
            Action::ResumeHandoff => self.begin_handoff(A),
            Action::AbandonHandoff => {
                self.s.may_write[A] = true;
                self.s.handoff = Handoff::Abandoned;
            }
            Action::HandBack => {
                if self.cfg().variant != Variant::KeepWritingAfterHandBack {
                    self.s.may_write[B] = false;
                }
                self.s.handback = Handoff::Asked;
                self.begin_handoff(B);
            }
            Action::ResumeHandBack => self.begin_handoff(B),
            Action::AbandonHandBack => {
                self.s.may_write[B] = true;
                self.s.handback = Handoff::Abandoned;
            }
            Action::Fetch {
                peer,
                chunk,
                urgent,
            } => {
                let (l, e) = self.fetch_end(peer as usize).expect("a lazy replica");
                self.s.fetches_left -= 1;
                if urgent {
                    see(self.model, 3);
                }
                self.replica(
                    l,
                    e,
                    ReplicaInput::Fetch {
                        first: chunk,
                        count: 1,
                        urgent,
                    },
                );
            }
            Action::FetchPart { peer, chunk } => {
                let (l, e) = self.fetch_end(peer as usize).expect("a lazy replica");
                self.s.fetches_left -= 1;
                see(self.model, 14);
                let (offset, len) = last_byte(chunk);
                self.replica(
                    l,
                    e,
                    ReplicaInput::FetchPart {
                        index: chunk,
                        offset,
                        len,
                    },
                );
            }
            Action::CrashOwner { peer } => {
                let p = peer as usize;
                self.s.crashes_left -= 1;
                see(self.model, 13);
                for (l, e) in self.owner_ends(p) {
                    let link = Arc::make_mut(&mut self.s.links[l]);
                    link.queues = Default::default();
                    link.commits.clear();
                    link.round = None;
                    link.unreported[e] = false;
                    link.ends[e] = End::new_owner(self.s.mem[p], 0);
                    let q = Sys::peer(l, 1 - e);
                    link.ends[1 - e] = End::new_replica(self.s.committed[q], false);
                }
            }
            Action::Read { chunk } => self.read(chunk),
            Action::Connect => {
                let generation = self.s.links[0].ends[1].owner().map_or(0, |m| m.generation);
                see(self.model, 10);
                self.s.links[2] = Arc::new(Link::new(
                    Status::Up,
                    [
                        End::new_owner(self.s.mem[B], generation),
                        End::new_replica(self.s.committed[C], false),
                    ],
                    self.cfg().drops_per_link,
                ));
            }
        }
        self.postcopy_sync();
        if self.s.may_write.iter().filter(|&&w| w).count() > 1 {
            self.violate(P_ONE_OWNER);
        }
    }
}

impl MemsyncModel {
    pub fn new(cfg: Config) -> MemsyncModel {
        assert!(
            !cfg.handback || (cfg.handoff && !cfg.postcopy && !cfg.lazy_replica),
            "the hand-back is modelled after a plain handoff, without C"
        );
        MemsyncModel {
            cfg,
            validated: Mutex::new(HashSet::new()),
            quiescent: Mutex::new(HashMap::new()),
            max_quiescent_steps: AtomicU32::new(0),
            seen: AtomicU32::new(0),
        }
    }

    pub fn initial(&self) -> Sys {
        let d = self.cfg.drops_per_link;
        let owner_mem = [1, 0];
        Sys {
            mem: [
                owner_mem,
                if self.cfg.lazy_target {
                    [GARBAGE; N]
                } else {
                    [0; N]
                },
                [GARBAGE; N],
            ],
            committed: [0; 3],
            may_write: [true, false, false],
            writes_left: self.cfg.writes,
            drops_left: self.cfg.drops,
            crashes_left: self.cfg.owner_crashes,
            fetches_left: self.cfg.fetches,
            handoff: Handoff::NotAsked,
            handback: Handoff::NotAsked,
            links: [
                Arc::new(Link::new(
                    Status::Up,
                    [
                        End::new_owner(owner_mem, 0),
                        End::new_replica(0, self.cfg.lazy_target),
                    ],
                    d,
                )),
                Arc::new(if self.cfg.lazy_replica {
                    Link::new(
                        Status::Up,
                        [End::new_owner(owner_mem, 0), End::new_replica(0, true)],
                        d,
                    )
                } else {
                    Link::new(Status::Closed, [End::Idle, End::Idle], d)
                }),
                Arc::new(Link::new(Status::NotYet, [End::Idle, End::Idle], d)),
            ],
            postcopy: None,
            violations: 0,
            claims: 0,
        }
    }

    /// The successor of `s` by `action`; `validate` runs the real machines alongside.
    pub fn step(&self, s: &Sys, action: &Action, validate: bool) -> Sys {
        let mut run = Run {
            model: self,
            validate,
            s: s.clone(),
        };
        run.apply(action);
        run.s
    }

    /// Whether the hash scan of owner end `e` on link `l` would change anything.
    fn scan_changes(s: &Sys, l: usize, e: usize) -> bool {
        let link = &s.links[l];
        let Some(m) = link.ends[e].owner() else {
            return false;
        };
        let mem = s.mem[Sys::peer(l, e)];
        let changed = (0..N)
            .filter(|&i| mem[i] != m.known[i])
            .fold(0, |a, i| a | 1 << i);
        link.unreported[e] || changed & !m.pending & ALL != 0
    }

    pub fn enabled(&self, s: &Sys, out: &mut Vec<Action>) {
        if s.violations != 0 {
            return;
        }
        let cfg = &self.cfg;
        if s.writes_left > 0 {
            for p in 0..3 {
                if !s.may_write[p] {
                    continue;
                }
                for chunks in 1..=ALL {
                    for value in 0..=2 {
                        if cfg.write_values & 1 << value == 0 {
                            continue;
                        }
                        if (0..N).any(|i| chunks & 1 << i != 0 && s.mem[p][i] != value) {
                            out.push(Action::Write {
                                peer: p as u8,
                                chunks,
                                value,
                            });
                        }
                    }
                }
            }
        }
        for (l, link) in s.links.iter().enumerate() {
            if link.status != Status::Up {
                continue;
            }
            for e in 0..2 {
                let Some(m) = link.ends[e].owner() else {
                    continue;
                };
                if cfg.detector == Detector::HashScan && Self::scan_changes(s, l, e) {
                    out.push(Action::Scan {
                        link: l as u8,
                        end: e as u8,
                    });
                }
                if m.would_transmit() {
                    out.push(Action::Send {
                        link: l as u8,
                        end: e as u8,
                    });
                }
            }
            for from in 0..2 {
                if !link.queues[from].is_empty() {
                    out.push(Action::Deliver {
                        link: l as u8,
                        from: from as u8,
                    });
                }
            }
            if link.drops_left > 0 && s.drops_left > 0 {
                out.push(Action::Drop { link: l as u8 });
            }
        }
        let a_streaming = s.links[0].status == Status::Up
            && s.links[0].ends[0].owner().map(|m| m.state) == Some(OwnerState::Streaming);
        if cfg.handoff && s.handoff == Handoff::NotAsked && s.may_write[A] && a_streaming {
            out.push(Action::BeginHandoff);
        }
        // (Once B hands the region back, A streams as owner again: the handoff's own
        // resumption is over.)
        if s.handoff == Handoff::Asked && s.handback == Handoff::NotAsked && a_streaming {
            out.push(Action::ResumeHandoff);
            out.push(Action::AbandonHandoff);
        }
        let b_streaming = s.links[0].status == Status::Up
            && s.links[0].ends[1].owner().map(|m| m.state) == Some(OwnerState::Streaming);
        if cfg.handback && s.handback == Handoff::NotAsked && s.may_write[B] && b_streaming {
            out.push(Action::HandBack);
        }
        if s.handback == Handoff::Asked && b_streaming {
            out.push(Action::ResumeHandBack);
            out.push(Action::AbandonHandBack);
        }
        if s.fetches_left > 0 {
            let run = Run {
                model: self,
                validate: false,
                s: s.clone(),
            };
            for peer in [B, C] {
                if peer == B && !cfg.replica_fetches {
                    continue;
                }
                let Some((l, e)) = run.fetch_end(peer) else {
                    continue;
                };
                let m = s.links[l].ends[e].replica().unwrap();
                for chunk in 0..N as u64 {
                    for urgent in [false, true] {
                        let mut m = m.clone();
                        m.fetch(chunk, 1, urgent);
                        if !m.queued.is_empty() {
                            out.push(Action::Fetch {
                                peer: peer as u8,
                                chunk,
                                urgent,
                            });
                        }
                    }
                    if cfg.fetch_parts {
                        let mut m = m.clone();
                        let (offset, len) = last_byte(chunk);
                        m.fetch_part(chunk, offset, len);
                        if !m.queued.is_empty() {
                            out.push(Action::FetchPart {
                                peer: peer as u8,
                                chunk,
                            });
                        }
                    }
                }
            }
        }
        if let Some(pc) = &s.postcopy {
            let fetching = Run::fetching(s) && s.fetches_left > 0;
            for chunk in 0..N as u64 {
                if pc.missing & 1 << chunk == 0
                    || fetching
                    || cfg.variant == Variant::ReadWithoutWaiting
                {
                    out.push(Action::Read { chunk });
                }
            }
        }
        // (The model does not restart B's process during a post-copy handoff.)
        if s.crashes_left > 0 && s.postcopy.is_none() {
            for p in [A, B] {
                if s.may_write[p] {
                    out.push(Action::CrashOwner { peer: p as u8 });
                }
            }
        }
        if self.cfg.lazy_replica
            && s.links[2].status == Status::NotYet
            && s.may_write[B]
            && s.links[1].status != Status::Up
        {
            out.push(Action::Connect);
        }
    }

    /// Converged: nothing in flight, every live stream synced, every replica holding the
    /// owner's bytes (with no owner, after a handoff lost with its connection: every peer
    /// holding the same bytes).
    pub fn converged(&self, s: &Sys) -> bool {
        let src = s.mem[s.source()];
        let mut peers = vec![A, B];
        if self.cfg.lazy_replica {
            peers.push(C);
        }
        if peers.iter().any(|&p| s.mem[p] != src) {
            return false;
        }
        s.links.iter().all(|link| match link.status {
            Status::NotYet => !(self.cfg.lazy_replica && s.may_write[B]),
            Status::Closed => true,
            Status::Up => {
                link.queues.iter().all(|q| q.is_empty())
                    && (0..2).any(|e| {
                        link.ends[e].owner().is_some_and(|o| o.is_synced())
                            && link.ends[1 - e].replica().is_some_and(|r| {
                                r.state == ReplicaState::Receiving && r.missing() == 0
                            })
                    })
            }
        })
    }

    /// Checks the quiescent continuations of `s`: every sequence of progress actions from `s`
    /// is finite and ends in a converged state. Returns the length of the longest.
    pub fn quiescent(&self, s: &Sys) -> Result<u32, NotConverging> {
        let r = self.quiescent_dfs(s, &mut HashSet::new());
        if let Ok(n) = r {
            self.max_quiescent_steps.fetch_max(n, Ordering::Relaxed);
        }
        r
    }

    fn progress_successors(&self, s: &Sys) -> Vec<(Action, Sys)> {
        let mut actions = Vec::new();
        self.enabled(s, &mut actions);
        actions
            .into_iter()
            .filter(Action::is_progress)
            .map(|a| {
                let next = self.step(s, &a, false);
                (a, next)
            })
            .filter(|(_, n)| n != s)
            .collect()
    }

    fn quiescent_dfs(&self, s: &Sys, stack: &mut HashSet<u64>) -> Result<u32, NotConverging> {
        if s.violations != 0 {
            return Ok(0);
        }
        let fp = fingerprint(s);
        if let Some(r) = self.quiescent.lock().unwrap().get(&fp) {
            return *r;
        }
        if !stack.insert(fp) {
            return Err(NotConverging); // a cycle: the continuation may never end
        }
        let succ = self.progress_successors(s);
        let r = if succ.is_empty() {
            if self.converged(s) {
                Ok(0)
            } else {
                Err(NotConverging)
            }
        } else {
            let mut longest = 0;
            let mut r = Ok(());
            for (_, n) in &succ {
                match self.quiescent_dfs(n, stack) {
                    Ok(d) => longest = longest.max(d + 1),
                    Err(NotConverging) => {
                        r = Err(NotConverging);
                        break;
                    }
                }
            }
            r.map(|()| longest)
        };
        stack.remove(&fp);
        self.quiescent.lock().unwrap().insert(fp, r);
        r
    }

    /// A quiescent continuation of `s` that does not converge: to a non-converged end, or around
    /// a cycle.
    pub fn quiescent_counterexample(&self, s: &Sys) -> Vec<(Action, Sys)> {
        let mut path = Vec::new();
        let mut cur = s.clone();
        let mut seen = HashSet::new();
        while seen.insert(fingerprint(&cur)) {
            let Some((a, n)) = self
                .progress_successors(&cur)
                .into_iter()
                .find(|(_, n)| self.quiescent(n).is_err())
            else {
                break;
            };
            path.push((a, n.clone()));
            cur = n;
        }
        path
    }
}

impl Model for MemsyncModel {
    type State = Sys;
    type Action = Action;

    fn init_states(&self) -> Vec<Sys> {
        vec![self.initial()]
    }

    fn actions(&self, s: &Sys, actions: &mut Vec<Action>) {
        self.enabled(s, actions);
    }

    fn next_state(&self, s: &Sys, action: Action) -> Option<Sys> {
        let n = self.step(s, &action, true);
        (n != *s).then_some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(SAFETY[0].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[0].0 == 0
            }),
            Property::always(SAFETY[1].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[1].0 == 0
            }),
            Property::always(SAFETY[2].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[2].0 == 0
            }),
            Property::always(SAFETY[3].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[3].0 == 0
            }),
            Property::always(SAFETY[4].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[4].0 == 0
            }),
            Property::always(SAFETY[5].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[5].0 == 0
            }),
            Property::always(SAFETY[6].1, |_: &Self, s: &Sys| s.claims & SAFETY[6].0 == 0),
            Property::always(SAFETY[7].1, |_: &Self, s: &Sys| s.claims & SAFETY[7].0 == 0),
            Property::always(SAFETY[8].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[8].0 == 0
            }),
            Property::always(SAFETY[9].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[9].0 == 0
            }),
            Property::always(SAFETY[10].1, |_: &Self, s: &Sys| {
                s.violations & SAFETY[10].0 == 0
            }),
            Property::always(LIVENESS, |m: &Self, s: &Sys| m.quiescent(s).is_ok()),
        ]
    }
}

/// A readable line for one step of a trace, naming the properties it violates.
pub fn describe(before: &Sys, action: &Action, after: &Sys) -> String {
    let mut line = describe_action(before, action, after);
    let new = (after.violations & !before.violations) | (after.claims & !before.claims);
    for (bit, name) in SAFETY {
        if new & bit != 0 {
            line += &format!("  ⇒ VIOLATES: {name}");
        }
    }
    line
}

fn describe_action(before: &Sys, action: &Action, after: &Sys) -> String {
    let end_name = |l: u8, e: u8| PEER_NAMES[Sys::peer(l as usize, e as usize)];
    match *action {
        Action::Write {
            peer,
            chunks,
            value,
        } => format!(
            "{} writes {value} over {}",
            PEER_NAMES[peer as usize],
            match chunks {
                1 => "chunk 0",
                2 => "chunk 1",
                _ => "chunks 0 and 1",
            }
        ),
        Action::Scan { link, end } => format!(
            "{} scans for {}",
            end_name(link, end),
            LINK_NAMES[link as usize]
        ),
        Action::Send { link, end }
            if after.links[link as usize].queues[end as usize].len()
                == before.links[link as usize].queues[end as usize].len() =>
        {
            format!(
                "{} polls on {}: nothing to send (FETCH entries of chunks already sent dropped)",
                end_name(link, end),
                LINK_NAMES[link as usize]
            )
        }
        Action::Send { link, end } => format!(
            "{} sends {:?} on {}",
            end_name(link, end),
            after.links[link as usize].queues[end as usize].back(),
            LINK_NAMES[link as usize]
        ),
        Action::Deliver { link, from }
            if before.links[link as usize].queues[from as usize].front() == Some(&Msg::Fin) =>
        {
            format!(
                "{} receives B's FIN on {} (B holds every chunk) and calls finish",
                end_name(link, 1 - from),
                LINK_NAMES[link as usize]
            )
        }
        Action::Deliver { link, from } => format!(
            "{} receives {:?} on {}",
            end_name(link, 1 - from),
            before.links[link as usize].queues[from as usize].front(),
            LINK_NAMES[link as usize]
        ),
        Action::Drop { link } => format!(
            "connection {} lost and re-established",
            LINK_NAMES[link as usize]
        ),
        Action::BeginHandoff => "A stops writers, reports last changes, begin_handoff".into(),
        Action::ResumeHandoff => "A calls begin_handoff again after the reconnect".into(),
        Action::AbandonHandoff => {
            "A gives the handoff up after the reconnect and writes again".into()
        }
        Action::HandBack => {
            "B stops writers, reports last changes, begin_handoff (hand-back)".into()
        }
        Action::ResumeHandBack => "B calls begin_handoff again after the reconnect".into(),
        Action::AbandonHandBack => {
            "B gives the hand-back up after the reconnect and writes again".into()
        }
        Action::Fetch {
            peer,
            chunk,
            urgent,
        } => format!(
            "a read on {} fetches chunk {chunk}{}",
            PEER_NAMES[peer as usize],
            if urgent { " (urgent)" } else { "" }
        ),
        Action::FetchPart { peer, chunk } => format!(
            "a read on {} of the last byte of chunk {chunk} sends FETCH_PART",
            PEER_NAMES[peer as usize]
        ),
        Action::Connect => "B opens a stream to C".into(),
        Action::Read { chunk } if after.fetches_left < before.fetches_left => {
            format!("a reader on B waits for chunk {chunk}, which B misses: urgent FETCH")
        }
        Action::Read { chunk } => format!(
            "a reader on B reads chunk {chunk}: value {}",
            before.mem[B][chunk as usize]
        ),
        Action::CrashOwner { peer } => format!(
            "{}'s process restarts (generation 0, nothing pending)",
            PEER_NAMES[peer as usize]
        ),
    }
}
