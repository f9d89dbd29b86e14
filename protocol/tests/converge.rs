//! An owner and a replica wired through an in-memory channel converge to identical bytes, for
//! arbitrary writes racing sync rounds, disconnects in the middle, lazy fetches and a handoff.

use memsync_protocol::sim::{hashes, Pair};
use memsync_protocol::wire::MAX_BODY;
use memsync_protocol::*;
use proptest::prelude::*;

/// An owner of a region of `size` bytes in chunks of `2^shift` whose bytes follow `seed`, and a
/// replica holding other bytes, both at generation 0.
fn pair(size: usize, shift: u8, seed: u8, lazy: bool) -> Pair {
    let geom = Geometry::new(size as u64, shift).unwrap();
    let a: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(seed)).collect();
    Pair::new(geom, a, vec![0xEE; size], 0, lazy)
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: usize, len: usize, byte: u8 },
    Zero { offset: usize, len: usize },
    Scan,
    Pump(u8),
    Fetch { chunk: u64, urgent: bool },
    Disconnect,
}

fn arb_op(size: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..size, 1usize..20_000, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
        1 => (0..size, 1usize..20_000).prop_map(|(offset, len)| Op::Zero { offset, len }),
        3 => Just(Op::Scan),
        5 => any::<u8>().prop_map(Op::Pump),
        2 => (0u64..64, any::<bool>()).prop_map(|(chunk, urgent)| Op::Fetch { chunk, urgent }),
        1 => Just(Op::Disconnect),
    ]
}

fn run(size: usize, shift: u8, seed: u8, lazy: bool, precise: bool, ops: Vec<Op>) {
    let mut p = pair(size, shift, seed, lazy);
    p.precise = precise;
    for op in ops {
        match op {
            Op::Write { offset, len, byte } => p.write(offset, len, byte),
            Op::Zero { offset, len } => p.write(offset, len, 0),
            Op::Scan => p.scan(),
            Op::Pump(n) => {
                for _ in 0..n {
                    match n % 3 {
                        0 => p.owner_send(),
                        1 => p.replica_recv(),
                        _ => p.owner_recv(),
                    };
                    p.owner_send();
                    p.replica_recv();
                    p.owner_recv();
                }
            }
            Op::Fetch { chunk, urgent } => {
                if chunk < p.geom.chunk_count() && p.replica.state() == ReplicaState::Receiving {
                    p.replica.fetch(chunk, 2, urgent);
                    while let Some(f) = p.replica.poll_transmit() {
                        p.to_owner.push_back(f);
                    }
                }
            }
            Op::Disconnect => p.disconnect(false),
        }
    }
    p.settle();
    assert!(p.a == p.b, "replica differs from owner");
    assert!(
        p.acks.windows(2).all(|w| w[0] < w[1]),
        "acks not increasing"
    );
    assert_eq!(p.replica.missing(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn eager_replica_converges(seed in any::<u8>(), extra in 0usize..4096, ops in prop::collection::vec(arb_op(40_000), 0..60)) {
        run(36_864 + extra, 12, seed, false, false, ops);
    }

    #[test]
    fn eager_replica_converges_with_precise_detector(seed in any::<u8>(), extra in 0usize..4096, ops in prop::collection::vec(arb_op(40_000), 0..60)) {
        run(36_864 + extra, 12, seed, false, true, ops);
    }

    #[test]
    fn lazy_replica_converges(seed in any::<u8>(), ops in prop::collection::vec(arb_op(40_000), 0..60)) {
        run(40_000, 12, seed, true, false, ops);
    }
}

#[test]
fn resume_sends_only_differences() {
    let mut p = pair(1 << 20, 12, 7, false);
    p.settle();
    let full = p.owner.bytes_sent();
    assert!(full >= 1 << 20);
    p.a[5000] ^= 1;
    p.a[900_000] ^= 1;
    p.disconnect(false);
    p.settle();
    assert_eq!(p.a, p.b);
    // two changed chunks, each a 4 KiB payload plus 24 header bytes
    assert_eq!(p.owner.bytes_sent() - full, 2 * (4096 + 24));
}

#[test]
fn zero_chunks_travel_without_payload() {
    let mut p = pair(64 * 4096, 12, 3, false);
    p.a[..32 * 4096].fill(0);
    p.owner = Owner::new(p.geom, "r", hashes(&p.geom, &p.a), 0).unwrap();
    p.settle();
    assert_eq!(p.a, p.b);
    assert_eq!(p.owner.bytes_sent(), 32 * 24 + 32 * (4096 + 24));
}

#[test]
fn handoff_moves_ownership_and_back() {
    let mut p = pair(16 * 4096, 12, 5, false);
    p.settle();
    p.a[100] = 42;
    p.scan();
    p.owner.begin_handoff().unwrap();
    let mut became = None;
    for _ in 0..1000 {
        p.owner_send();
        if let Some(bytes) = p.to_replica.pop_front() {
            let (frame, _) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
            match p.replica.handle(&frame).unwrap() {
                ReplicaEvent::Write { index, data } => {
                    let r = p.geom.range(index);
                    p.b[r].copy_from_slice(data.unwrap());
                }
                ReplicaEvent::BecameOwner { generation } => became = Some(generation),
                _ => {}
            }
            while let Some(f) = p.replica.poll_transmit() {
                p.to_owner.push_back(f);
            }
        }
        if let Some(bytes) = p.to_owner.pop_front() {
            let (frame, _) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
            if let OwnerEvent::HandedOff { generation } = p.owner.handle(&frame).unwrap() {
                assert_eq!(Some(generation), became);
                break;
            }
        }
    }
    assert_eq!(p.owner.state(), OwnerState::HandedOff);
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
    assert_eq!(
        p.a, p.b,
        "new owner holds every byte of the final generation"
    );
    // Reverse the roles on the same stream: the new owner continues the generation numbering.
    let g = became.unwrap();
    std::mem::swap(&mut p.a, &mut p.b);
    p.owner = Owner::new(p.geom, "r", hashes(&p.geom, &p.a), g).unwrap();
    p.replica = Replica::new(g);
    p.a[7] = 9;
    p.settle();
    assert_eq!(p.a, p.b);
}

#[test]
fn corrupt_chunk_is_refused() {
    let mut p = pair(8 * 4096, 12, 9, false);
    p.settle();
    p.a[10] ^= 0xff;
    p.scan();
    assert!(p.owner_send());
    let mut f = p.to_replica.pop_front().unwrap();
    let last = f.len() - 1;
    f[last] ^= 1;
    let (frame, _) = Frame::decode(&f, MAX_BODY).unwrap().unwrap();
    assert_eq!(
        p.replica.handle(&frame).unwrap_err().code,
        ErrorCode::HashMismatch
    );
}

#[test]
fn reconnect_keeps_unsent_chunks_of_a_round() {
    let mut p = pair(16 * 4096, 12, 5, false);
    p.precise = true;
    p.settle();
    p.write(3 * 4096, 10, 1);
    p.write(5 * 4096, 10, 2);
    assert!(p.owner_send()); // the round starts and chunk 3 leaves; chunk 5 is still queued
    p.disconnect(false);
    p.settle();
    assert!(p.a == p.b, "a chunk of the interrupted round was lost");
}

#[test]
fn owner_restarted_with_an_older_generation_continues_above_the_replica() {
    let mut p = pair(8 * 4096, 12, 5, false);
    p.settle();
    for k in 0..3u8 {
        p.a[k as usize * 4096] = k + 1;
        p.settle();
    }
    let held = p.replica.committed();
    assert!(held >= 3);
    // The owner process restarts and forgets its generation counter.
    p.owner = Owner::new(p.geom, "r", hashes(&p.geom, &p.a), 0).unwrap();
    p.replica = Replica::new(held);
    p.to_replica.clear();
    p.to_owner.clear();
    p.a[100] = 77;
    p.settle();
    assert_eq!(p.a, p.b);
    assert!(p.replica.committed() > held);
}

#[test]
fn a_commit_lost_with_the_connection_is_closed_again_before_sync_and_handoff() {
    let mut p = pair(8 * 4096, 12, 5, false);
    p.settle();
    p.a[0] = 9;
    p.scan();
    // The whole round, COMMIT included, is lost with the connection.
    while p.owner.poll_transmit().is_some() {}
    p.to_replica.clear();
    let behind = p.replica.committed();
    assert!(p.owner.generation() > behind);
    p.disconnect(false);
    p.settle();
    assert_eq!(
        p.replica.committed(),
        p.owner.generation(),
        "replica caught up"
    );
    // A handoff now succeeds: the replica holds the owner's last generation.
    p.owner.begin_handoff().unwrap();
    let mut became = false;
    for _ in 0..100 {
        p.owner_send();
        if let Some(bytes) = p.to_replica.pop_front() {
            let (frame, _) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
            if let ReplicaEvent::BecameOwner { .. } = p.replica.handle(&frame).unwrap() {
                became = true;
            }
        }
    }
    assert!(became);
    // HANDOFF_ACK is lost with the connection. The owner's OPEN on a new stream is a probe: the
    // replica, owner now, answers HANDED_OVER, and the handoff is complete.
    p.to_owner.clear();
    p.owner.restart().unwrap();
    let g = p.replica.committed();
    assert_eq!(p.owner.state(), OwnerState::Probing { generation: g });
    assert!(!p.owner.is_synced() && p.owner.poll_transmit().is_some()); // OPEN
    let answer = Frame::Error {
        code: ErrorCode::HandedOver as u32,
        reason: "owned here",
    };
    assert_eq!(
        p.owner.handle(&answer).unwrap(),
        OwnerEvent::HandedOff { generation: g }
    );
    assert_eq!(p.owner.state(), OwnerState::HandedOff);
    assert!(
        p.owner.restart().is_err(),
        "no resuming as owner once handed off"
    );
}

#[test]
fn a_handoff_lost_before_the_replica_saw_it_is_probed_and_offered_again() {
    let mut p = pair(8 * 4096, 12, 5, false);
    p.settle();
    p.a[0] = 7;
    p.scan();
    p.owner.begin_handoff().unwrap();
    // Run until HANDOFF is queued for the replica, then lose the connection with it.
    for _ in 0..100 {
        p.owner_send();
        if matches!(p.owner.state(), OwnerState::HandingOff { .. }) {
            break;
        }
        p.replica_recv();
        p.owner_recv();
    }
    let OwnerState::HandingOff { generation } = p.owner.state() else {
        panic!("no HANDOFF sent: {:?}", p.owner.state());
    };
    p.disconnect(false);
    assert_eq!(p.owner.state(), OwnerState::Probing { generation });
    // The replica answers OPEN as a replica: it did not take ownership, the owner reconciles.
    p.run(1000);
    assert_eq!(p.owner.state(), OwnerState::Streaming);
    assert_eq!(p.replica.state(), ReplicaState::Receiving);
    assert_eq!(p.a, p.b);
    // Offered again, it completes.
    p.owner.begin_handoff().unwrap();
    p.run(1000);
    assert_eq!(p.owner.state(), OwnerState::HandedOff);
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
}

#[test]
fn a_fresh_owner_told_handed_over_reports_it_as_a_peer_error() {
    let mut p = pair(8 * 4096, 12, 5, false);
    let answer = Frame::Error {
        code: ErrorCode::HandedOver as u32,
        reason: "owned here",
    };
    assert!(matches!(
        p.owner.handle(&answer).unwrap(),
        OwnerEvent::PeerError { code: 21, .. }
    ));
    assert_eq!(p.owner.state(), OwnerState::Opening);
}

#[test]
fn urgent_fetch_overtakes_the_background_round() {
    let mut p = pair(64 * 4096, 12, 5, true);
    // OPEN, lazy STATE: the owner queues every chunk as the background round.
    p.owner_send();
    p.replica_recv();
    p.owner_recv();
    assert!(matches!(
        p.owner.poll_transmit(),
        Some(Transmit::Chunk {
            index: 0,
            fetched: false
        })
    ));
    p.replica.fetch(63, 1, true);
    let fetch = p.replica.poll_transmit().unwrap();
    let (frame, _) = Frame::decode(&fetch, MAX_BODY).unwrap().unwrap();
    p.owner.handle(&frame).unwrap();
    assert_eq!(
        p.owner.poll_transmit(),
        Some(Transmit::Chunk {
            index: 63,
            fetched: true
        }),
        "the urgent chunk goes next, ahead of chunks 1..63 of the round"
    );
}
