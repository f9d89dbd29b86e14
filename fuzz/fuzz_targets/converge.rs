//! An owner and a replica wired in memory (`memsync_fuzz::pair`, the idea of
//! protocol/tests/converge.rs), driven by fuzzer-chosen operations: writes and zeroing of the
//! owner's memory, hash scans (or a precise detector that reports each write), single steps of
//! either party in any order, lazy fetches, and disconnects that lose every frame in flight.
//!
//! Setup from the input: 1–24 chunks of 4 KiB with a partial last chunk, the owner's content, the
//! replica's starting content (garbage, identical, zeros, or nearly identical), eager or lazy
//! replica, hash-scan or precise detector, starting generation.
//!
//! Asserts: every frame either side sends decodes and is accepted (no error, no PeerError); after
//! a final settle (scan, then run to quiescence) the owner is synced with no backlog, the two
//! memories are byte-for-byte equal, the replica's committed generations strictly increase and a
//! lazy replica misses no chunk. If the input asks for it, a handoff follows: the replica must
//! accept HANDOFF and become owner with identical bytes, then the roles reverse on a new pair,
//! the new owner writes, and the pair converges again. After settling the replica holds the
//! owner's generation G (§8.4–§8.6: a COMMIT lost with a connection is closed again), so the
//! HANDOFF always names a generation the replica acknowledged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::Input;
use memsync_protocol::sim::Pair;
use memsync_protocol::{Geometry, OwnerState, ReplicaState};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n = 1 + input.below(24);
    let size = (n - 1) * 4096 + 1 + input.u16() as u64 % 4096;
    let geom = Geometry::new(size, 12).unwrap();
    let seed = input.u8();
    let flags = input.u8();
    let (lazy, precise, handoff) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let a: Vec<u8> = (0..size as usize)
        .map(|i| {
            if (i >> 12) as u8 & seed & 0x30 != 0 {
                0
            } else {
                (i as u8).wrapping_mul(seed)
            }
        })
        .collect();
    let b = match flags >> 3 & 3 {
        0 => vec![0xEE; size as usize],
        1 => a.clone(),
        2 => vec![0; size as usize],
        _ => {
            let mut b = a.clone();
            b[(seed as usize * 997) % size as usize] ^= 0x55;
            b
        }
    };
    let generation = input.u8() as u64;
    let mut p = Pair::new(geom, a, b, generation, lazy);
    p.precise = precise;

    for _ in 0..128 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 13 {
            0..=3 => {
                let (offset, len, byte) = (input.u32(), 1 + input.u16() as usize, input.u8());
                p.write(offset as usize, len, byte);
            }
            4 => {
                let (offset, len) = (input.u32(), 1 + input.u16() as usize);
                p.write(offset as usize, len, 0);
            }
            5 | 6 => p.scan(),
            7..=9 => {
                for _ in 0..input.u8() {
                    p.owner_send();
                    p.replica_recv();
                    p.owner_recv();
                }
            }
            10 => {
                let (chunk, count, urgent) = (input.below(n), 1 + input.below(4), input.bool());
                if p.replica.state() == ReplicaState::Receiving {
                    p.replica.fetch(chunk, count as u32, urgent);
                    while let Some(f) = p.replica.poll_transmit() {
                        p.to_owner.push_back(f);
                    }
                }
            }
            11 => p.disconnect(input.bool()),
            _ => {
                let who = input.u8();
                for _ in 0..who >> 2 {
                    match who & 3 {
                        0 => p.owner_send(),
                        1 => p.replica_recv(),
                        _ => p.owner_recv(),
                    };
                }
            }
        }
    }

    p.settle();
    assert!(p.a == p.b, "replica differs from owner after settling");
    assert!(
        p.acks.windows(2).all(|w| w[0] < w[1]),
        "acks not increasing: {:?}",
        p.acks
    );
    assert_eq!(p.replica.missing(), 0);

    if !handoff {
        return;
    }
    let g = p.owner.generation();
    assert_eq!(
        p.replica.committed(),
        g,
        "synced, but the replica is behind the owner's G"
    );
    p.owner.begin_handoff().expect("begin_handoff when synced");
    p.run(1_000_000);
    assert_eq!(p.handoff_refused, None, "HANDOFF refused");
    assert_eq!(p.became_owner, Some(g));
    assert_eq!(p.handed_off, Some(g));
    assert_eq!(p.owner.state(), OwnerState::HandedOff);
    assert_eq!(p.replica.state(), ReplicaState::BecameOwner);
    assert!(p.a == p.b, "new owner's bytes differ");
    assert!(
        p.owner.restart().is_err(),
        "resumed as owner after handing off"
    );

    // Reverse the roles: the new owner continues the numbering and writes.
    let mut q = Pair::new(geom, p.b, p.a, g, false);
    q.precise = precise;
    q.write(seed as usize * 131, 1 + seed as usize * 17, seed ^ 0x5a);
    q.settle();
    assert!(q.a == q.b, "reverse direction did not converge");
    assert!(q.acks.iter().all(|&x| x > g));
});
