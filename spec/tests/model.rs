//! Exhaustive model checks of the protocol with `stateright`, the real `Owner` and `Replica`
//! checking every step (spec/MODEL.md describes the model, the bounds and the properties).
//!
//! The default tests are what CI runs; the `#[ignore]`d ones explore larger bounds
//! (`cargo test -p memsync-spec --release --test model -- --ignored`).

use memsync_spec::model::mirror::Msg;
use memsync_spec::model::mirror::{OwnerState, ReplicaState};
use memsync_spec::model::system::{
    Action, A, B, LIVENESS, P_ACK_HOLDS_SENT, P_ACK_QUIET_SNAPSHOT, P_HANDOFF_COMPLETE,
    P_HANDOFF_GENERATION_FINAL, P_HANDOFF_REPLICA_HOLDS_FINAL, P_NO_STREAM_ERROR, P_ONE_OWNER,
    P_POSTCOPY_COMPLETE, P_POSTCOPY_NO_OVERWRITE, P_POSTCOPY_READ, P_WRITES_IN_REGION, SAFETY,
    SEEN, SEEN_HANDBACK_ACCEPTED, SEEN_HANDBACK_ACKED, SEEN_HANDBACK_PROBE_FOUND_REPLICA,
    SEEN_HANDBACK_TAKEN_ON_RECONNECT, SEEN_HANDBACK_WRITE_REACHED_B, SEEN_POSTCOPY_CUT,
    SEEN_POSTCOPY_DONE, SEEN_POSTCOPY_DONE_AFTER_LOSS, SEEN_POSTCOPY_LATE_COPY,
    SEEN_POSTCOPY_LOCAL_WRITE, SEEN_POSTCOPY_READ_WAITED, SEEN_POSTCOPY_RESUMED,
    SEEN_POSTCOPY_STALE, SEEN_POSTCOPY_TAKEN,
};
use memsync_spec::model::{
    check, check_until, replay, Config, Detector, Report, Validation, Variant,
};

fn name(bit: u16) -> &'static str {
    SAFETY.iter().find(|(b, _)| *b == bit).unwrap().1
}

/// One owner and one replica: A and B only, two writes, a connection loss, an owner restart, a
/// handoff.
fn pair(detector: Detector) -> Config {
    Config {
        lazy_replica: false,
        writes: 2,
        drops: 1,
        owner_crashes: 1,
        fetches: 0,
        ..Config::base(detector)
    }
}

/// A and a lazy B: one write, one connection loss, two fetches, a handoff.
fn pair_lazy(detector: Detector) -> Config {
    Config {
        lazy_replica: false,
        lazy_target: true,
        writes: 1,
        drops: 1,
        fetches: 2,
        ..Config::base(detector)
    }
}

/// A and an eager B, with a post-copy handoff (spec §8.10): two writes (A's before the freeze,
/// B's after it took ownership), a connection loss, one read on B waiting for a missing chunk.
/// B's reads may fetch while it is still a replica (such a FETCH can cross HANDOFF, and the owner
/// drops it: finding 3).
fn postcopy(detector: Detector) -> Config {
    Config {
        postcopy: true,
        replica_fetches: true,
        owner_crashes: 0,
        fetches: 1,
        ..pair(detector)
    }
}

/// Everything a post-copy handoff goes through: a round cut short by the freeze, STALE, B
/// taking ownership with chunks missing, writing one whole, a late copy dropped, a reader
/// waiting, the handoff completed, also resumed and completed after a broken link.
const POSTCOPY_SEEN: [usize; 9] = [
    SEEN_POSTCOPY_CUT,
    SEEN_POSTCOPY_STALE,
    SEEN_POSTCOPY_TAKEN,
    SEEN_POSTCOPY_LOCAL_WRITE,
    SEEN_POSTCOPY_LATE_COPY,
    SEEN_POSTCOPY_READ_WAITED,
    SEEN_POSTCOPY_DONE,
    SEEN_POSTCOPY_RESUMED,
    SEEN_POSTCOPY_DONE_AFTER_LOSS,
];

/// A, B and the lazy C, with a handoff to B and C re-homed to B; one write of value 2.
fn trio(detector: Detector, fetches: u8, drops: u8) -> Config {
    Config {
        fetches,
        drops,
        write_values: 0b100,
        ..Config::base(detector)
    }
}

fn run(cfg: Config) -> Report {
    let r = check(cfg);
    println!("{r}");
    r
}

fn assert_holds(r: &Report) {
    assert_only(r, &[]);
}

/// Every property holds but the spec claims in `broken`.
fn assert_only(r: &Report, broken: &[u16]) {
    let mut found: Vec<_> = r.counterexamples.iter().map(|c| c.property).collect();
    let mut expected: Vec<_> = broken.iter().map(|&b| name(b)).collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "unexpected counterexamples:\n{r}");
}

fn assert_seen(r: &Report, what: &[usize]) {
    for &i in what {
        assert!(r.seen.contains(&SEEN[i]), "never saw: {}\n{r}", SEEN[i]);
    }
}

/// Seen in every configuration with connection losses and a handoff.
const CORE: [usize; 6] = [0, 1, 4, 5, 6, 7];

/// One owner, one eager replica: every property holds, both claims about HANDOFF{g} included:
/// after a reconnect the owner closes a generation naming the reconciled content (the fix of
/// MODEL.md finding 2; before it, "generation g is the final content" failed after a restart).
#[test]
fn pair_precise_detector() {
    let r = run(pair(Detector::Precise));
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &[8, 9, 11, 13]);
}

#[test]
fn pair_hash_detector() {
    let r = run(pair(Detector::HashScan));
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &[8, 9, 11, 13]);
}

/// Without owner restarts both claims hold for an eager replica (here with two connection
/// losses).
#[test]
fn pair_without_owner_restarts_keeps_the_handoff_claims() {
    let r = run(Config {
        owner_crashes: 0,
        drops: 2,
        drops_per_link: 2,
        ..pair(Detector::Precise)
    });
    assert_holds(&r);
    assert_seen(&r, &CORE);
}

/// Handing off to a lazy replica: every property holds, the claims about HANDOFF{g} included,
/// since a FETCHED chunk sent outside a round makes the owner commit a generation after it
/// (the fix of finding 1), and a FETCH of a chunk already sent on the stream leaves a pending write
/// to a round (`fetched_write_is_committed_before_a_handoff_to_a_lazy_target`).
/// A FETCH of a chunk already sent on the stream is not answered again (§8.1 sending rule 1): the
/// copy in flight answers it, and the checks above hold with that rule.
fn lazy_target(detector: Detector) {
    let r = run(pair_lazy(detector));
    assert_seen(&r, &[0, 2, 3, 7, 8, 12]);
    assert_holds(&r);
}

#[test]
fn pair_lazy_target_precise_detector() {
    lazy_target(Detector::Precise);
}

#[test]
fn pair_lazy_target_hash_detector() {
    lazy_target(Detector::HashScan);
}

/// The candidate fix (a FETCHED chunk does not take the place of a round) restores both claims.
#[test]
fn pair_lazy_target_with_fetched_chunks_kept_pending() {
    for detector in [Detector::Precise, Detector::HashScan] {
        let r = run(Config {
            variant: Variant::KeepFetchedPending,
            ..pair_lazy(detector)
        });
        assert_holds(&r);
        assert_seen(&r, &[0, 2, 3, 7, 8]);
    }
}

/// With FETCH_PARTS, reads may also ask with FETCH_PART: on the region stream it is an urgent
/// FETCH of one chunk (spec §5.18), and every property holds with it. (The model has no fetch
/// lane, so no PART answers it.)
#[test]
fn pair_lazy_target_fetch_parts() {
    let r = run(Config {
        fetch_parts: true,
        ..pair_lazy(Detector::Precise)
    });
    assert_holds(&r);
    assert_seen(&r, &[0, 2, 7, 8, 12, 14]);
}

#[test]
fn trio_precise_detector_fetches() {
    let r = run(trio(Detector::Precise, 1, 0));
    assert_holds(&r);
    assert_seen(&r, &[0, 1, 2, 3, 7, 10, 11, 12]);
}

#[test]
fn trio_precise_detector_connection_losses() {
    let r = run(trio(Detector::Precise, 0, 1));
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &[8, 9, 10, 11]);
}

#[test]
fn trio_hash_detector() {
    let r = run(trio(Detector::HashScan, 0, 0));
    assert_holds(&r);
    assert_seen(&r, &[0, 1, 7, 10, 11]);
    let r = run(Config {
        writes: 0,
        ..trio(Detector::HashScan, 1, 1)
    });
    assert_holds(&r);
    assert_seen(&r, &[0, 2, 4, 7, 8, 9, 10]);
}

/// Every step of every explored edge, not just each distinct one, on the real machines.
#[test]
fn every_edge_checked_on_the_real_machines() {
    for detector in [Detector::Precise, Detector::HashScan] {
        let r = run(Config {
            writes: 1,
            drops: 1,
            owner_crashes: 0,
            validation: Validation::Every,
            ..pair(detector)
        });
        assert_holds(&r);
    }
}

// Each property catches a bug: broken harnesses, and the checker's counterexample.

fn expect_counterexample(cfg: Config, property: &'static str) {
    let r = check_until(cfg, Some(property));
    println!("{r}");
    assert!(
        r.counterexample(property).is_some(),
        "expected a counterexample to {property:?}:\n{r}"
    );
}

fn broken(variant: Variant, detector: Detector) -> Config {
    Config {
        variant,
        owner_crashes: 0,
        ..pair(detector)
    }
}

#[test]
fn broken_ack_before_apply_is_caught() {
    expect_counterexample(
        broken(Variant::AckBeforeApply, Detector::Precise),
        name(P_ACK_HOLDS_SENT),
    );
}

#[test]
fn broken_skip_reconcile_is_caught() {
    expect_counterexample(
        broken(Variant::SkipReconcile, Detector::Precise),
        name(P_ACK_HOLDS_SENT),
    );
}

#[test]
fn broken_lost_reports_are_caught() {
    expect_counterexample(
        broken(Variant::LoseReportsDuringRound, Detector::Precise),
        name(P_ACK_QUIET_SNAPSHOT),
    );
}

#[test]
fn broken_forgotten_pending_is_caught() {
    // With a precise detector nothing reports the lost chunks again: either the replica never
    // converges, or the handoff completes and the lost write is gone with the old owner.
    let r = run(broken(Variant::ForgetPendingOnRestart, Detector::Precise));
    assert!(
        r.counterexample(LIVENESS).is_some()
            || r.counterexample(name(P_HANDOFF_REPLICA_HOLDS_FINAL))
                .is_some()
            || r.counterexample(name(P_ACK_QUIET_SNAPSHOT)).is_some(),
        "expected the forgotten chunks to show:\n{r}"
    );
    // A hash scan finds them again, but a quiet round is acknowledged without them first.
    expect_counterexample(
        broken(Variant::ForgetPendingOnRestart, Detector::HashScan),
        name(P_ACK_QUIET_SNAPSHOT),
    );
}

#[test]
fn broken_last_chunk_length_is_caught() {
    expect_counterexample(
        broken(Variant::LastChunkFullLength, Detector::Precise),
        name(P_WRITES_IN_REGION),
    );
}

#[test]
fn broken_resume_after_handoff_is_caught() {
    expect_counterexample(
        broken(Variant::ResumeOwnershipAfterHandoff, Detector::Precise),
        name(P_ONE_OWNER),
    );
}

#[test]
fn broken_late_handoff_after_probe_is_caught() {
    expect_counterexample(
        broken(Variant::LateHandoffAfterProbe, Detector::Precise),
        name(P_ONE_OWNER),
    );
}

#[test]
fn broken_handoff_without_final_scan_is_caught() {
    expect_counterexample(
        broken(Variant::HandoffWithoutFinalScan, Detector::HashScan),
        name(P_HANDOFF_COMPLETE),
    );
}

#[test]
fn broken_replica_reused_across_connections_is_caught() {
    expect_counterexample(
        broken(Variant::ReuseReplicaAcrossConnections, Detector::Precise),
        name(P_NO_STREAM_ERROR),
    );
}

/// The finding behind `pair_lazy_target_*` (MODEL.md finding 1), step by step on the real
/// machines. As found, A's last write reached the lazy B only as a FETCHED chunk sent after
/// COMMIT{1}; A handed off generation 1; the connection died before B saw HANDOFF, leaving B at
/// generation 1 without A's final write, while the spec (§8.6, §9) says HANDOFF{g} names a
/// generation holding every byte A left. Now chunk 1 was already sent on this stream (round 1), so
/// the FETCH is not answered again (§8.1 sending rule 1): the pending write goes in round 2, and no
/// HANDOFF can come before its COMMIT{2}.
#[test]
fn fetched_write_is_committed_before_a_handoff_to_a_lazy_target() {
    let send = Action::Send { link: 0, end: 0 };
    let to_b = Action::Deliver { link: 0, from: 0 };
    let to_a = Action::Deliver { link: 0, from: 1 };
    let trace = [
        send.clone(), // OPEN{0}
        to_b.clone(), // B answers STATE EMPTY LAZY
        to_a.clone(), // A: everything pending
        send.clone(), // CHUNK 0 (value 1), round 1
        send.clone(), // CHUNK 1 (value 0)
        Action::Write {
            peer: A as u8,
            chunks: 0b10,
            value: 2,
        },
        send.clone(), // COMMIT{1}
        to_b.clone(), // B applies chunk 0
        Action::BeginHandoff,
        Action::Fetch {
            peer: B as u8,
            chunk: 1,
            urgent: false,
        },
        to_b.clone(), // B applies chunk 1 = 0
        to_b.clone(), // COMMIT{1}: B acknowledges 1
        to_a.clone(), // the FETCH: chunk 1 went out in round 1, nothing is queued
        send.clone(), // round 2: CHUNK 1 = 2 (as found: CHUNK 1 = 2 FETCHED, leaving `pending`)
        to_a.clone(), // ACK{1}
        send.clone(), // COMMIT{2} covering the write — as found: HANDOFF{1}, without it
        Action::Drop { link: 0 },
    ];
    let cfg = Config {
        writes: 1,
        drops: 1,
        fetches: 1,
        ..pair_lazy(Detector::Precise)
    };
    let states = replay(cfg, &trace);
    let sent = |k: usize| states[k + 1].links[0].queues[0].back().cloned();
    assert_eq!(
        sent(13),
        Some(Msg::Chunk {
            index: 1,
            value: 2,
            fetched: false
        }),
        "the write goes in a round, not as a second, FETCHED copy"
    );
    assert!(matches!(
        sent(15),
        Some(Msg::Commit { generation: 2, ref records }) if records == &[(1, 2)]
    ));
    let last_send = &states[states.len() - 2];
    assert_eq!(
        last_send.claims & (P_HANDOFF_REPLICA_HOLDS_FINAL | P_HANDOFF_GENERATION_FINAL),
        0,
        "no HANDOFF may name a generation that does not cover the fetched write"
    );
    assert_eq!(states.last().unwrap().violations, 0);
}

// Larger bounds, for release builds.

#[test]
#[ignore]
fn full_trio_precise_detector() {
    let r = run(Config::base(Detector::Precise));
    assert_holds(&r);
    // Everything but an owner restart, which these bounds leave out.
    assert_seen(&r, &(0..SEEN.len() - 1).collect::<Vec<_>>());
}

#[test]
#[ignore]
fn full_trio_hash_detector() {
    let r = run(Config::base(Detector::HashScan));
    assert_holds(&r);
    // Everything but an owner restart, which these bounds leave out.
    assert_seen(&r, &(0..SEEN.len() - 1).collect::<Vec<_>>());
}

#[test]
#[ignore]
fn full_pair_three_writes() {
    for detector in [Detector::Precise, Detector::HashScan] {
        let r = run(Config {
            writes: 3,
            ..pair(detector)
        });
        assert_holds(&r);
    }
}

#[test]
#[ignore]
fn full_pair_lazy_target_two_writes() {
    for detector in [Detector::Precise, Detector::HashScan] {
        let r = run(Config {
            writes: 2,
            drops: 2,
            drops_per_link: 2,
            ..pair_lazy(detector)
        });
        assert_holds(&r);
    }
}

#[test]
#[ignore]
fn full_pair_postcopy() {
    let r = run(Config {
        writes: 2,
        drops: 2,
        drops_per_link: 2,
        fetches: 2,
        ..postcopy(Detector::Precise)
    });
    assert_holds(&r);
    let r = run(Config {
        writes: 2,
        ..postcopy(Detector::HashScan)
    });
    assert_holds(&r);
}

/// Explores a configuration from the environment (MODEL_WRITES, MODEL_DROPS, ...).
#[test]
#[ignore]
fn explore() {
    let env = |k: &str, d: u8| {
        std::env::var(format!("MODEL_{k}"))
            .ok()
            .map_or(d, |v| v.parse().expect("a number"))
    };
    let mut cfg = Config::base(if env("HASH", 0) == 1 {
        Detector::HashScan
    } else {
        Detector::Precise
    });
    cfg.writes = env("WRITES", 1);
    cfg.drops = env("DROPS", 1);
    cfg.drops_per_link = env("DROPS_PER_LINK", 1);
    cfg.fetches = env("FETCHES", 1);
    cfg.owner_crashes = env("CRASHES", 0);
    cfg.handoff = env("HANDOFF", 1) == 1;
    cfg.postcopy = env("POSTCOPY", 0) == 1;
    cfg.handback = env("HANDBACK", 0) == 1;
    cfg.replica_fetches = env("REPLICA_FETCHES", 1) == 1;
    cfg.lazy_replica = env("LAZY_C", 1) == 1;
    cfg.lazy_target = env("LAZY_B", 0) == 1;
    cfg.write_values = env("VALUES", 0b111);
    if env("KEEP_FETCHED", 0) == 1 {
        cfg.variant = Variant::KeepFetchedPending;
    }
    if env("VALIDATE", 1) == 0 {
        cfg.validation = Validation::Off;
    }
    run(cfg);
}

mod fencing {
    use memsync_spec::model::fencing::{
        Bounds, Fencing, Variant, P_NO_FENCED_CHUNK, P_ONE_OWNER_PER_EPOCH,
    };

    /// A handoff, a promotion, two writes and a lost connection among A, B and C.
    const BOUNDS: Bounds = Bounds {
        writes: 2,
        losses: 1,
        handoffs: 1,
        promotions: 1,
    };

    fn check(variant: Variant) -> Vec<&'static str> {
        let (states, found) = Fencing {
            variant,
            bounds: BOUNDS,
        }
        .check();
        println!("{variant:?}: {states} states");
        for (property, steps) in &found {
            println!("counterexample to: {property}");
            for s in steps {
                println!("  {s}");
            }
        }
        assert!(
            states > 1000,
            "the exploration is too small to mean anything"
        );
        found.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn epochs_fence_every_older_owner() {
        assert_eq!(check(Variant::Correct), Vec::<&str>::new());
    }

    #[test]
    fn bare_counters_let_two_owners_share_an_epoch() {
        assert_eq!(check(Variant::BareCounters), vec![P_ONE_OWNER_PER_EPOCH]);
    }

    #[test]
    fn keeping_the_older_stream_lets_a_fenced_chunk_through() {
        assert_eq!(check(Variant::KeepOlderStreams), vec![P_NO_FENCED_CHUNK]);
    }
}

// Post-copy handoffs (spec §8.10).

/// Every property holds through a post-copy handoff, with the real machines checking each step:
/// at most one writer; a chunk B wrote is never overwritten by A's copy; once B misses nothing,
/// every chunk is A's frozen bytes or B's own write; B's readers see only chunks B holds; and
/// every quiescent continuation completes the handoff (A HandedOff, B owner of a synced stream
/// to A), also after the link broke during it (the probe resumed by `resume_postcopy`).
#[test]
fn pair_postcopy_precise_detector() {
    let r = run(postcopy(Detector::Precise));
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &POSTCOPY_SEEN);
}

/// With the hash detector (A's final scan before `begin_postcopy`), one write: A's before the
/// freeze or B's after (B's writes during post-copy involve no detector).
#[test]
fn pair_postcopy_hash_detector() {
    let r = run(Config {
        writes: 1,
        ..postcopy(Detector::HashScan)
    });
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &POSTCOPY_SEEN);
}

/// Handing off to a lazy replica in post-copy: it takes ownership with the chunks it never
/// received missing, and fetches them from A.
#[test]
fn pair_postcopy_lazy_target() {
    let r = run(Config {
        lazy_target: true,
        writes: 1,
        ..postcopy(Detector::Precise)
    });
    assert_holds(&r);
    assert_seen(&r, &POSTCOPY_SEEN);
}

/// Two connection losses on A–B: the post-copy handoff is resumed, and may break again.
#[test]
fn pair_postcopy_two_connection_losses() {
    let r = run(Config {
        writes: 1,
        drops: 2,
        drops_per_link: 2,
        ..postcopy(Detector::Precise)
    });
    assert_holds(&r);
    assert_seen(&r, &POSTCOPY_SEEN);
}

/// Every step of every explored edge of a post-copy handoff on the real machines.
#[test]
fn postcopy_every_edge_checked_on_the_real_machines() {
    let r = run(Config {
        writes: 1,
        validation: Validation::Every,
        ..postcopy(Detector::Precise)
    });
    assert_holds(&r);
}

#[test]
fn broken_postcopy_late_copy_applied_is_caught() {
    expect_counterexample(
        Config {
            variant: Variant::ApplyEveryFetchedCopy,
            ..postcopy(Detector::Precise)
        },
        name(P_POSTCOPY_NO_OVERWRITE),
    );
}

#[test]
fn broken_postcopy_stale_ignored_is_caught() {
    expect_counterexample(
        Config {
            variant: Variant::IgnoreStale,
            ..postcopy(Detector::Precise)
        },
        name(P_POSTCOPY_COMPLETE),
    );
}

#[test]
fn broken_postcopy_read_without_waiting_is_caught() {
    expect_counterexample(
        Config {
            variant: Variant::ReadWithoutWaiting,
            ..postcopy(Detector::Precise)
        },
        name(P_POSTCOPY_READ),
    );
}

/// MODEL.md finding 3, on the real machines: a lazy B's read sends FETCH while A drains for a
/// post-copy handoff; A sends HANDOFF{POSTCOPY} before the FETCH arrives. The owner refused a
/// FETCH in HandingOff with PROTOCOL_VIOLATION, failing the stream; it drops it now, and B asks
/// again for what it lacks once it took the handoff.
#[test]
fn postcopy_fetch_crossing_the_handoff_is_dropped() {
    let send = Action::Send { link: 0, end: 0 };
    let to_b = Action::Deliver { link: 0, from: 0 };
    let to_a = Action::Deliver { link: 0, from: 1 };
    let trace = [
        send.clone(), // OPEN{0}
        to_b.clone(), // B answers STATE EMPTY LAZY
        to_a.clone(), // A: both chunks pending
        Action::BeginHandoff,
        send.clone(), // COMMIT{1, []}, owed after reconciliation
        to_b.clone(), // B acknowledges 1
        to_a.clone(), // ACK{1}
        send.clone(), // STALE{0, 2}
        send.clone(), // HANDOFF{1, POSTCOPY}: A is HandingOff
        Action::Fetch {
            peer: B as u8,
            chunk: 0,
            urgent: false,
        }, // a read on B, still a replica, misses chunk 0
        to_a.clone(), // FETCH{0} reaches A in HandingOff
    ];
    let cfg = Config {
        lazy_target: true,
        writes: 0,
        replica_fetches: true,
        ..postcopy(Detector::Precise)
    };
    let states = replay(cfg.clone(), &trace);
    let before = &states[states.len() - 2];
    assert_eq!(
        before.links[0].ends[0].owner().unwrap().state,
        OwnerState::HandingOff { generation: 1 }
    );
    assert_eq!(
        before.links[0].ends[1].replica().unwrap().state,
        ReplicaState::Receiving
    );
    assert_eq!(states.last().unwrap().violations, 0);
    assert_eq!(
        states.last().unwrap().links[0].ends[0]
            .owner()
            .unwrap()
            .state,
        OwnerState::HandingOff { generation: 1 }
    );
}

/// With the fix of finding 3, B's reads may fetch while it is still a replica, lazy or eager:
/// every property holds, liveness included.
#[test]
fn postcopy_with_reads_fetching_before_the_handoff() {
    for lazy_target in [true, false] {
        let r = run(Config {
            lazy_target,
            writes: 1,
            replica_fetches: true,
            ..postcopy(Detector::Precise)
        });
        assert_holds(&r);
        assert_seen(&r, &POSTCOPY_SEEN);
    }
}

// The hand-back (spec §8.6: a handoff back from B to A on the turned stream).

/// A and an eager B: A hands the region to B, and B, once streaming as owner on the turned
/// stream, hands it back to A (once); two writes (A's, B's or A's again), one connection loss.
fn handback(detector: Detector) -> Config {
    Config {
        handback: true,
        owner_crashes: 0,
        ..pair(detector)
    }
}

/// Everything a hand-back goes through: A accepts B's HANDOFF, B turns replica on HANDOFF_ACK,
/// A's writes reach B again, and a connection lost during the hand-back is settled by B's probe
/// either way (A took the region, or A is still a replica).
const HANDBACK_SEEN: [usize; 5] = [
    SEEN_HANDBACK_ACCEPTED,
    SEEN_HANDBACK_ACKED,
    SEEN_HANDBACK_TAKEN_ON_RECONNECT,
    SEEN_HANDBACK_PROBE_FOUND_REPLICA,
    SEEN_HANDBACK_WRITE_REACHED_B,
];

/// Every property holds across the handoff A→B and the hand-back B→A: at most one writer at any
/// instant, A accepts holding B's frozen bytes (P5 with the roles swapped), and every quiescent
/// continuation completes the hand-back (A owner of a synced stream to B), also after the link
/// broke during it (B's probe).
#[test]
fn pair_handback_precise_detector() {
    let r = run(handback(Detector::Precise));
    assert_holds(&r);
    assert_seen(&r, &CORE);
    assert_seen(&r, &[8, 9, 11]);
    assert_seen(&r, &HANDBACK_SEEN);
}

/// Every step of every explored edge of a handoff and its hand-back on the real machines, with
/// either detector (the hash detector's: B's final scan before the hand-back); one write: A's
/// before the handoff, B's before the hand-back or A's after it.
#[test]
fn handback_every_edge_checked_on_the_real_machines() {
    for detector in [Detector::Precise, Detector::HashScan] {
        let r = run(Config {
            writes: 1,
            validation: Validation::Every,
            ..handback(detector)
        });
        assert_holds(&r);
        assert_seen(&r, &CORE);
        assert_seen(&r, &HANDBACK_SEEN);
    }
}

/// Larger hand-back bounds: an owner restart (A's, or B's while it owns), two losses on A–B, or
/// two writes under the hash detector.
#[test]
#[ignore]
fn full_pair_handback() {
    for cfg in [
        Config {
            owner_crashes: 1,
            ..handback(Detector::Precise)
        },
        Config {
            drops: 2,
            drops_per_link: 2,
            ..handback(Detector::Precise)
        },
        handback(Detector::HashScan),
    ] {
        let r = run(cfg);
        assert_holds(&r);
        assert_seen(&r, &HANDBACK_SEEN);
    }
}

/// B keeps writing after it handed the region back: A's acceptance makes two writers.
#[test]
fn broken_handback_keep_writing_is_caught() {
    expect_counterexample(
        Config {
            variant: Variant::KeepWritingAfterHandBack,
            writes: 1,
            ..handback(Detector::Precise)
        },
        name(P_ONE_OWNER),
    );
}

/// B hands the region back without a final scan: A accepts without B's last write.
#[test]
fn broken_handback_without_final_scan_is_caught() {
    expect_counterexample(
        Config {
            variant: Variant::HandBackWithoutFinalScan,
            writes: 1,
            ..handback(Detector::HashScan)
        },
        name(P_HANDOFF_COMPLETE),
    );
}
