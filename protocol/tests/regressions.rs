//! Regression tests for bugs the fuzzers found in the state machines (fuzz/README.md, KB-1..3).

use memsync_protocol::wire::MAX_BODY;
use memsync_protocol::*;

fn owner() -> Owner {
    let g = Geometry::new(4 * 4096, 12).unwrap();
    Owner::new(g, "r", vec![0; 4], 0).unwrap()
}

fn feed_owner(o: &mut Owner, f: Frame<'_>) -> Result<OwnerEvent, WireError> {
    let bytes = f.to_vec();
    let (frame, _) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
    o.handle(&frame)
}

/// KB-1: a replica claiming generation u64::MAX must not make the counter overflow or wrap.
#[test]
fn last_generation_number_is_refused() {
    let mut o = owner();
    let e = feed_owner(
        &mut o,
        Frame::State {
            epoch: None,
            empty: true,
            lazy: false,
            durable: false,
            generation: u64::MAX,
            chunk_count: 0,
        },
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::ProtocolViolation);
    while o.poll_transmit().is_some() {}
    assert!(Owner::new(Geometry::new(4096, 12).unwrap(), "r", vec![0], u64::MAX).is_err());
    // A STATE refused for its chunk count leaves the generation alone.
    let mut o = owner();
    let e = feed_owner(
        &mut o,
        Frame::State {
            epoch: None,
            empty: false,
            lazy: false,
            durable: false,
            generation: 1 << 40,
            chunk_count: 9,
        },
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGeometry);
    assert_eq!(o.generation(), 0);
}

/// KB-2: an ACK of a generation whose COMMIT was never sent on this stream is a violation.
#[test]
fn ack_of_an_uncommitted_generation_is_refused() {
    let mut o = owner();
    // Reach generation 3 on a first stream.
    feed_owner(
        &mut o,
        Frame::State {
            epoch: None,
            empty: true,
            lazy: false,
            durable: false,
            generation: 3,
            chunk_count: 0,
        },
    )
    .unwrap();
    o.restart().unwrap();
    while o.poll_transmit().is_some() {}
    feed_owner(
        &mut o,
        Frame::State {
            epoch: None,
            empty: true,
            lazy: false,
            durable: false,
            generation: 2,
            chunk_count: 0,
        },
    )
    .unwrap();
    let e = feed_owner(&mut o, Frame::Ack { generation: 3 }).unwrap_err();
    assert_eq!(e.code, ErrorCode::ProtocolViolation);
}

/// KB-3: read-ahead asks for each chunk at most once.
#[test]
fn read_ahead_requests_each_chunk_once() {
    let mut r = Replica::new(0);
    let open = Frame::Open {
        epoch: None,
        size: 4 * 4096,
        generation: 0,
        chunk_shift: 12,
        name: "r",
    }
    .to_vec();
    let (f, _) = Frame::decode(&open, MAX_BODY).unwrap().unwrap();
    r.handle(&f).unwrap();
    r.local_state(Local::Lazy).unwrap();
    r.poll_transmit().unwrap(); // STATE
    r.fetch(1, 1, false);
    r.fetch(0, 3, false);
    let mut asked = Vec::new();
    while let Some(b) = r.poll_transmit() {
        let (f, _) = Frame::decode(&b, MAX_BODY).unwrap().unwrap();
        if let Frame::Fetch { first, count, .. } = f {
            asked.extend(first..first + count as u64);
        }
    }
    asked.sort();
    assert_eq!(asked, vec![0, 1, 2]);
}

/// KB-4: a round never reuses the last generation number, however the counter got near it.
#[test]
fn generation_numbers_are_never_reused_near_the_limit() {
    use memsync_protocol::owner::MAX_GENERATION;
    let g = Geometry::new(4 * 4096, 12).unwrap();
    let mut o = Owner::new(g, "r", vec![0; 4], MAX_GENERATION - 1).unwrap();
    feed_owner(
        &mut o,
        Frame::State {
            epoch: None,
            empty: true,
            lazy: false,
            durable: false,
            generation: 0,
            chunk_count: 0,
        },
    )
    .unwrap();
    let mut commits = Vec::new();
    for round in 0..2 {
        while let Some(t) = o.poll_transmit() {
            match t {
                Transmit::Chunk { index, fetched } => {
                    o.encode_chunk(index, fetched, &[0; 4096]);
                }
                Transmit::Frame(b) => {
                    if let Some((Frame::Commit { generation, .. }, _)) =
                        Frame::decode(&b, MAX_BODY).unwrap()
                    {
                        commits.push(generation);
                    }
                }
            }
        }
        if round == 0 {
            o.mark_dirty(0..1);
        }
    }
    assert_eq!(commits, vec![MAX_GENERATION], "one round, then no reuse");
}
