//! FETCH of a chunk already sent on the stream (spec/PROTOCOL.md §8.1 sending rule 1, §8.3): the
//! copy in flight answers it, so the owner does not send the chunk again; a new stream forgets
//! what the old one carried.

use memsync_protocol::hash::hash_chunks;
use memsync_protocol::wire::MAX_BODY;
use memsync_protocol::*;

const N: u64 = 4;

fn geom() -> Geometry {
    Geometry::new(N * 4096, 12).unwrap()
}

/// The owner's region: chunk i filled with i + 1.
fn mem() -> Vec<u8> {
    (0..N * 4096).map(|i| (i / 4096) as u8 + 1).collect()
}

fn owner() -> Owner {
    let g = geom();
    let mut known = vec![0; N as usize];
    hash_chunks(&g, 0, &mem(), &mut known);
    Owner::new(g, "r", known, 0).unwrap()
}

fn feed(o: &mut Owner, f: Frame<'_>) {
    let bytes = f.to_vec();
    let (frame, _) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
    o.handle(&frame).unwrap();
}

fn fetch(o: &mut Owner, first: u64, urgent: bool) {
    feed(
        o,
        Frame::Fetch {
            first,
            count: 1,
            urgent,
        },
    );
}

/// What the owner sent: chunks as `(index, fetched)`, frames by type code.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Chunk(u64, bool),
    Frame(u8),
}

/// One `poll_transmit`, a chunk encoded from the region.
fn poll(o: &mut Owner) -> Option<Sent> {
    let m = mem();
    Some(match o.poll_transmit()? {
        Transmit::Chunk { index, fetched } => {
            o.encode_chunk(index, fetched, &m[geom().range(index)]);
            Sent::Chunk(index, fetched)
        }
        Transmit::Frame(b) => Sent::Frame(Frame::decode(&b, MAX_BODY).unwrap().unwrap().0.kind()),
    })
}

fn drain(o: &mut Owner) -> Vec<Sent> {
    std::iter::from_fn(|| poll(o)).collect()
}

const COMMIT: Sent = Sent::Frame(0x21);

/// An owner streaming to a lazy replica: OPEN sent, STATE EMPTY LAZY handled (every chunk pending).
fn lazy_stream(o: &mut Owner) {
    assert_eq!(poll(o), Some(Sent::Frame(0x10)), "OPEN");
    feed(
        o,
        Frame::State {
            epoch: None,
            empty: true,
            lazy: true,
            durable: false,
            generation: 0,
            chunk_count: 0,
        },
    );
}

#[test]
fn a_chunk_sent_in_a_round_is_not_sent_again_for_a_fetch() {
    let mut o = owner();
    lazy_stream(&mut o);
    assert_eq!(poll(&mut o), Some(Sent::Chunk(0, false)), "round 1 starts");
    // Chunk 0 is on its way: neither an urgent nor a background FETCH of it queues anything; chunk
    // 2, not sent yet, is fetched ahead of the round.
    fetch(&mut o, 0, true);
    fetch(&mut o, 0, false);
    fetch(&mut o, 2, true);
    assert_eq!(
        drain(&mut o),
        [
            Sent::Chunk(2, true),
            Sent::Chunk(1, false),
            Sent::Chunk(3, false),
            COMMIT
        ]
    );
    // Once the round is done every chunk went out on this stream: nothing is resent for FETCHes.
    for i in 0..N {
        fetch(&mut o, i, true);
        fetch(&mut o, i, false);
    }
    assert_eq!(drain(&mut o), []);
    feed(&mut o, Frame::Ack { generation: 1 });
    assert!(o.is_synced());
}

#[test]
fn a_chunk_asked_for_in_the_background_then_urgently_is_sent_once() {
    let mut o = owner();
    lazy_stream(&mut o);
    fetch(&mut o, 2, false); // read-ahead
    fetch(&mut o, 2, true); // then a reader blocks on it
    let sent = drain(&mut o);
    assert_eq!(
        sent,
        [
            Sent::Chunk(2, true),
            Sent::Chunk(0, false),
            Sent::Chunk(1, false),
            Sent::Chunk(3, false),
            COMMIT
        ]
    );
    feed(&mut o, Frame::Ack { generation: 1 });
    assert!(
        o.is_synced(),
        "the background entry was dropped, not left queued"
    );
}

#[test]
fn a_new_stream_answers_fetches_of_chunks_the_old_one_carried() {
    let mut o = owner();
    lazy_stream(&mut o);
    drain(&mut o); // round 1: every chunk
    o.restart().unwrap();
    assert_eq!(poll(&mut o), Some(Sent::Frame(0x10)), "OPEN");
    // The replica reports holding everything: nothing pending, an empty round owed.
    let mut known = vec![0; N as usize];
    hash_chunks(&geom(), 0, &mem(), &mut known);
    let mut wire = Vec::new();
    wire::HashList::encode_into(&known, &mut wire);
    feed(
        &mut o,
        Frame::State {
            epoch: None,
            empty: false,
            lazy: false,
            durable: false,
            generation: 1,
            chunk_count: N,
        },
    );
    feed(
        &mut o,
        Frame::Hashes {
            first: 0,
            hashes: wire::HashList::from_wire(&wire).unwrap(),
        },
    );
    fetch(&mut o, 0, true);
    fetch(&mut o, 1, false);
    assert_eq!(
        drain(&mut o),
        [Sent::Chunk(0, true), Sent::Chunk(1, true), COMMIT]
    );
}

#[test]
fn a_paced_sender_gets_fetched_chunks_and_frames_but_no_round_chunk() {
    let mut o = owner();
    lazy_stream(&mut o);
    // Nothing fetched: the round (every chunk pending) waits for the pacer.
    assert!(o.poll_fetched().is_none());
    assert_eq!(poll(&mut o), Some(Sent::Chunk(0, false)), "round 1 starts");
    fetch(&mut o, 3, true);
    fetch(&mut o, 2, false);
    let mut fetched = Vec::new();
    while let Some(t) = o.poll_fetched() {
        fetched.push(t);
    }
    assert_eq!(
        fetched,
        [
            Transmit::Chunk {
                index: 3,
                fetched: true
            },
            Transmit::Chunk {
                index: 2,
                fetched: true
            }
        ],
        "urgent first, then the background FETCH; never round chunk 1 or the COMMIT"
    );
    let m = mem();
    for i in [3, 2] {
        o.encode_chunk(i, true, &m[geom().range(i)]);
    }
    // The round resumes where it was and skips what the fetches carried.
    assert_eq!(drain(&mut o), [Sent::Chunk(1, false), COMMIT]);
}
