//! Post-copy handoffs (spec/PROTOCOL.md §8.10) between the two state machines: the round in
//! progress is cut short, STALE names what the replica lacks, HANDOFF{POSTCOPY} moves ownership
//! at once, and the old owner serves FETCHes until the new one holds every chunk, across a broken
//! stream too. A late copy never overwrites what the new owner wrote.

use memsync_protocol::sim::{decode_exact, Pair};
use memsync_protocol::wire::ErrorCode;
use memsync_protocol::{
    DirtySet, Frame, Geometry, OwnerState, Replica, ReplicaEvent, ReplicaState,
};

const CHUNKS: u64 = 64;

/// A synced pair of 64 chunks of 4 KiB, then writes to `dirty` chunks at the owner that are
/// found but not sent when the post-copy handoff is asked for: pre-copy stops one round early.
fn frozen_with(dirty: &[u64], sent_of_round: usize) -> Pair {
    let geom = Geometry::new(CHUNKS * 4096, 12).unwrap();
    let a: Vec<u8> = (0..geom.size()).map(|i| (i / 4096) as u8).collect();
    let mut p = Pair::new(geom, a, vec![0; geom.size() as usize], 0, false);
    p.settle();
    for &c in dirty {
        p.write(c as usize * 4096, 4096, 0xA0 + c as u8);
    }
    p.scan();
    // Part of a round goes out before the freeze.
    for _ in 0..sent_of_round {
        p.owner_send();
    }
    p.owner.begin_postcopy().unwrap();
    p
}

/// Runs until the owner has sent HANDOFF and the replica answered it.
fn hand_over(p: &mut Pair) {
    for _ in 0..10_000 {
        let moved = p.owner_send() | p.replica_recv() | p.owner_recv();
        if p.replica.state() != ReplicaState::Receiving || !moved {
            break;
        }
    }
    assert_eq!(p.became_owner, Some(p.owner.generation()));
}

#[test]
fn a_post_copy_handoff_moves_ownership_at_once_and_the_stale_chunks_follow() {
    let dirty = [3, 4, 5, 40];
    // The first of the four went out in the round the freeze cut short.
    let mut p = frozen_with(&dirty, 1);
    hand_over(&mut p);
    // The round was committed as far as it went: chunk 3; the other three are stale.
    assert_eq!(p.replica.state(), ReplicaState::PostCopy);
    assert_eq!(p.replica.missing(), 3);
    assert!(p.replica.is_present(3) && !p.replica.is_present(4) && !p.replica.is_present(40));
    p.run(10_000);
    assert_eq!(
        p.owner.state(),
        OwnerState::Serving {
            generation: p.became_owner.unwrap()
        }
    );
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
    assert_eq!(p.replica.missing(), 0);
    assert_eq!(p.a, p.b, "the new owner holds every byte the old one froze");
    // The new owner ends the stream: the old one is done.
    assert_eq!(p.owner.finish(), p.became_owner);
    assert_eq!(p.owner.state(), OwnerState::HandedOff);
    assert!(p.owner.restart().is_err());
}

#[test]
fn a_chunk_the_new_owner_wrote_whole_is_never_overwritten_by_its_late_copy() {
    let mut p = frozen_with(&[7, 8], 0);
    hand_over(&mut p);
    // The background FETCHes are on their way; the new owner writes chunk 8 whole meanwhile.
    assert!(p.replica.local_write(8));
    let r = p.geom.range(8);
    p.b[r.clone()].fill(0x55);
    p.run(10_000);
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
    assert!(
        p.b[r.clone()].iter().all(|&x| x == 0x55),
        "the late copy overwrote the new owner's write"
    );
    assert_eq!(p.a[p.geom.range(7)], p.b[p.geom.range(7)]);
    // Writing a chunk that is here already changes nothing.
    assert!(!p.replica.local_write(7));
}

#[test]
fn a_stream_broken_during_post_copy_resumes_with_the_probe() {
    let mut p = frozen_with(&[1, 2, 30, 31, 32], 0);
    hand_over(&mut p);
    // The HANDOFF_ACK and the FETCHes reach the owner; part of the answers are lost.
    p.owner_recv();
    p.owner_recv();
    p.owner_send();
    p.replica_recv();
    let g = p.became_owner.unwrap();
    let mut missing = DirtySet::new(CHUNKS);
    for i in 0..CHUNKS {
        if !p.replica.is_present(i) {
            missing.insert(i);
        }
    }
    assert!(missing.count() > 0 && missing.count() < 5);
    p.to_owner.clear();
    p.to_replica.clear();
    // The old owner asks again; the new owner's records say it still fetches.
    p.owner.restart().unwrap();
    assert_eq!(p.owner.state(), OwnerState::Probing { generation: g });
    p.replica = Replica::new(0);
    p.owner_send();
    let open = p.to_replica.pop_front().unwrap();
    match p.replica.handle(&decode_exact(&open)).unwrap() {
        ReplicaEvent::Opened { .. } => {}
        e => panic!("{e:?}"),
    }
    p.replica.resume_postcopy(g, &missing).unwrap();
    while let Some(f) = p.replica.poll_transmit() {
        p.to_owner.push_back(f);
    }
    p.run(10_000);
    assert_eq!(p.owner.state(), OwnerState::Serving { generation: g });
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
    assert_eq!(p.a, p.b);
}

#[test]
fn a_plain_handoff_is_refused_by_a_replica_told_of_stale_chunks() {
    let geom = Geometry::new(CHUNKS * 4096, 12).unwrap();
    let mut r = Replica::new(3);
    let open = Frame::Open {
        size: geom.size(),
        generation: 3,
        chunk_shift: 12,
        name: "r",
        epoch: None,
    };
    r.handle(&open).unwrap();
    r.local_state(memsync_protocol::Local::Hashes(&vec![0; CHUNKS as usize]))
        .unwrap();
    r.handle(&Frame::Stale { first: 2, count: 3 }).unwrap();
    assert_eq!(r.missing(), 3);
    let plain = Frame::Handoff {
        generation: 3,
        postcopy: false,
    };
    assert_eq!(
        r.handle(&plain).unwrap_err().code,
        ErrorCode::ProtocolViolation
    );
    // STALE past the region's end is refused by the geometry check.
    let past = Frame::Stale {
        first: CHUNKS - 1,
        count: 2,
    };
    assert_eq!(r.handle(&past).unwrap_err().code, ErrorCode::OutOfRange);
}

#[test]
fn a_probe_of_a_plain_handoff_refuses_a_post_copy_answer() {
    let geom = Geometry::new(CHUNKS * 4096, 12).unwrap();
    let a = vec![7; geom.size() as usize];
    let mut p = Pair::new(geom, a.clone(), a, 0, false);
    p.settle();
    p.owner.begin_handoff().unwrap();
    while !matches!(p.owner.state(), OwnerState::HandingOff { .. }) {
        assert!(p.owner_send());
    }
    let OwnerState::HandingOff { generation } = p.owner.state() else {
        unreachable!()
    };
    p.owner.restart().unwrap();
    let ack = Frame::HandoffAck { generation };
    assert_eq!(
        p.owner.handle(&ack).unwrap_err().code,
        ErrorCode::ProtocolViolation
    );
}

#[test]
fn a_restarted_old_owner_serves_a_post_copy_it_no_longer_remembers_only_when_it_may() {
    let geom = Geometry::new(CHUNKS * 4096, 12).unwrap();
    let known = vec![0; CHUNKS as usize];
    let ack = Frame::HandoffAck { generation: 9 };
    // An owner that never handed anything over refuses it.
    let mut plain = memsync_protocol::Owner::new(geom, "r", known.clone(), 0).unwrap();
    assert_eq!(
        plain.handle(&ack).unwrap_err().code,
        ErrorCode::ProtocolViolation
    );
    // `peer migrate` run again may have: it serves the new owner's FETCHes.
    let mut again = memsync_protocol::Owner::new(geom, "r", known, 0).unwrap();
    again.accept_postcopy_resume().unwrap();
    again.handle(&ack).unwrap();
    assert_eq!(again.state(), OwnerState::Serving { generation: 9 });
    again
        .handle(&Frame::Fetch {
            first: 5,
            count: 2,
            urgent: false,
        })
        .unwrap();
    let mut sent = Vec::new();
    while let Some(t) = again.poll_transmit() {
        match t {
            memsync_protocol::Transmit::Chunk { index, fetched } => {
                assert!(fetched);
                sent.push(index);
                again.encode_chunk(index, true, &[0; 4096]);
            }
            memsync_protocol::Transmit::Frame(f) => {
                assert!(
                    matches!(decode_exact(&f), Frame::Open { .. }),
                    "only OPEN went before"
                );
            }
        }
    }
    assert_eq!(sent, [5, 6]);
    assert_eq!(again.finish(), Some(9));
}
