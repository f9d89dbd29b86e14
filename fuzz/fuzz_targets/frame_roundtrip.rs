//! Structured frames (derived with `arbitrary`) → `encode` → `decode` → the same frame.
//!
//! The description is turned into valid `Frame` values (valid names per `check_name`, valid OPEN
//! geometries, non-empty HASHES, CHUNK and PART payloads, a zero hash on ZERO chunks and parts, a
//! PART's `len` equal to its payload's length or ≥ 1 when ZERO, FETCH and STALE count ≥ 1,
//! FETCH_PART len ≥ 1, EMPTY STATE with count 0; HANDOFF with or without POSTCOPY), several of
//! which are encoded back to back into one buffer.
//! Asserts: each decodes to the identical frame, consuming exactly its own encoding; the buffer is
//! exhausted at the end; `chunk_header` equals the first 24 bytes of a CHUNK's encoding and
//! `part_header` the first 32 bytes of a PART's (all of a ZERO one); HANDOFF and STALE encode to
//! exactly the bytes §5.13 / §5.19 give (type, POSTCOPY flag, little-endian fields); an ERROR
//! reason longer than 1024 bytes is truncated at a char boundary (§5.2) and decodes to that prefix.
//! OPEN and MOUNT descriptions may also keep their raw, possibly invalid, name and geometry: then
//! decoding must fail with exactly the code `check_name` / `Geometry::new` give (BAD_NAME before
//! BAD_GEOMETRY), or succeed when both are valid.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use memsync_fuzz::name_from;
use memsync_protocol::geometry::{MAX_CHUNKS, MAX_REGION_SIZE};
use memsync_protocol::wire::{
    check_name, chunk_header, part_header, ErrorCode, Frame, HashList, Hello, MAX_BODY,
    MAX_REASON_LEN, PART_HEADER_LEN,
};
use memsync_protocol::Geometry;

#[derive(Arbitrary, Debug)]
enum Desc {
    Hello {
        major: u16,
        minor: u16,
        max_body: u32,
        max_regions: u32,
        features: u64,
    },
    Error {
        code: u32,
        reason: String,
        /// Repeat the reason to push it over MAX_REASON_LEN.
        repeat: u8,
    },
    Open {
        size: u64,
        generation: u64,
        shift: u8,
        name: Vec<u8>,
        raw: Option<(String, u64, u8)>,
        epoch: Option<u64>,
    },
    Mount {
        name: Vec<u8>,
        raw: Option<String>,
    },
    State {
        empty: bool,
        lazy: bool,
        durable: bool,
        generation: u64,
        chunk_count: u64,
        epoch: Option<u64>,
    },
    Hashes {
        first: u64,
        head: u64,
        tail: Vec<u64>,
    },
    Chunk {
        index: u64,
        hash: u64,
        fetched: bool,
        head: u8,
        payload: Vec<u8>,
        /// Repeat the payload (chunks are up to 4 MiB).
        repeat: u16,
    },
    ZeroChunk {
        index: u64,
        fetched: bool,
    },
    Commit {
        generation: u64,
        count: u32,
        summary: u64,
    },
    Ack(u64),
    Fetch {
        first: u64,
        count: u32,
        urgent: bool,
    },
    Handoff {
        generation: u64,
        postcopy: bool,
    },
    HandoffAck(u64),
    Lane(u64),
    Part {
        index: u64,
        offset: u32,
        hash: u64,
        head: u8,
        payload: Vec<u8>,
        /// Repeat the payload (parts are up to MAX_BODY − 24 bytes).
        repeat: u16,
    },
    ZeroPart {
        index: u64,
        offset: u32,
        len: u32,
    },
    FetchPart {
        index: u64,
        offset: u32,
        len: u32,
    },
    Stale {
        first: u64,
        count: u32,
    },
}

/// Owned data a `Frame` borrows from.
enum Owned {
    Hello(Hello),
    Error(u32, String),
    Open(u64, u64, u8, String, Option<u64>),
    Mount(String),
    State(bool, bool, bool, u64, u64, Option<u64>),
    Hashes(u64, Vec<u8>),
    Chunk(u64, u64, bool, bool, Vec<u8>),
    Commit(u64, u32, u64),
    Ack(u64),
    Fetch(u64, u32, bool),
    Handoff(u64, bool),
    HandoffAck(u64),
    Lane(u64),
    /// index, offset, len, hash, zero, payload
    Part(u64, u32, u32, u64, bool, Vec<u8>),
    FetchPart(u64, u32, u32),
    Stale(u64, u32),
}

/// A geometry valid by construction from arbitrary numbers.
/// Epochs start at 1 (§8.8): a 0 from the input means none.
fn nonzero(epoch: Option<u64>) -> Option<u64> {
    epoch.filter(|e| *e != 0)
}

fn valid_geometry(size: u64, shift: u8) -> (u64, u8) {
    let shift = 12 + shift % 11;
    let limit = MAX_REGION_SIZE.min(MAX_CHUNKS << shift);
    (1 + size % limit, shift)
}

/// The valid owned frame for a description, or the expected decode error for a raw one.
fn build(d: Desc) -> Result<Owned, (Owned, ErrorCode)> {
    Ok(match d {
        Desc::Hello {
            major,
            minor,
            max_body,
            max_regions,
            features,
        } => Owned::Hello(Hello {
            major,
            minor,
            max_body,
            max_regions,
            features,
        }),
        Desc::Error {
            code,
            reason,
            repeat,
        } => {
            let reason = if repeat > 200 {
                reason.repeat(1 + (MAX_REASON_LEN / reason.len().max(1)))
            } else {
                reason
            };
            Owned::Error(code, reason)
        }
        Desc::Open {
            size,
            generation,
            shift,
            name,
            raw,
            epoch,
        } => match raw {
            Some((name, size, shift)) if name.len() <= 255 => {
                let expect = check_name(&name)
                    .and_then(|_| Geometry::new(size, shift).map(|_| ()))
                    .err()
                    .map(|e| e.code);
                let o = Owned::Open(size, generation, shift, name, nonzero(epoch));
                match expect {
                    Some(code) => return Err((o, code)),
                    None => o,
                }
            }
            _ => {
                let (size, shift) = valid_geometry(size, shift);
                Owned::Open(
                    size,
                    generation,
                    shift,
                    name_from(&name, 255),
                    nonzero(epoch),
                )
            }
        },
        Desc::Mount { name, raw } => match raw {
            Some(name) => match check_name(&name) {
                Err(e) => return Err((Owned::Mount(name), e.code)),
                Ok(()) => Owned::Mount(name),
            },
            None => Owned::Mount(name_from(&name, 255)),
        },
        Desc::State {
            empty,
            lazy,
            durable,
            generation,
            chunk_count,
            epoch,
        } => Owned::State(
            empty,
            lazy,
            durable,
            generation,
            if empty { 0 } else { chunk_count },
            nonzero(epoch),
        ),
        Desc::Hashes { first, head, tail } => {
            let mut hs = vec![head];
            hs.extend(tail.into_iter().take(4096));
            let mut wire = Vec::new();
            HashList::encode_into(&hs, &mut wire);
            let list = HashList::from_wire(&wire).unwrap();
            assert_eq!(list.len(), hs.len());
            assert!(list.iter().eq(hs.iter().copied()));
            Owned::Hashes(first, wire)
        }
        Desc::Chunk {
            index,
            hash,
            fetched,
            head,
            payload,
            repeat,
        } => {
            let mut p = vec![head];
            p.extend(&payload);
            p.truncate(MAX_BODY as usize - 16);
            let times = if repeat > 60_000 {
                (repeat as usize - 60_000).min((MAX_BODY as usize - 16) / p.len())
            } else {
                1
            };
            let p = p.repeat(times.max(1));
            Owned::Chunk(index, hash, false, fetched, p)
        }
        Desc::ZeroChunk { index, fetched } => Owned::Chunk(index, 0, true, fetched, vec![]),
        Desc::Commit {
            generation,
            count,
            summary,
        } => Owned::Commit(generation, count, summary),
        Desc::Ack(g) => Owned::Ack(g),
        Desc::Fetch {
            first,
            count,
            urgent,
        } => Owned::Fetch(first, count.max(1), urgent),
        Desc::Handoff {
            generation,
            postcopy,
        } => Owned::Handoff(generation, postcopy),
        Desc::HandoffAck(g) => Owned::HandoffAck(g),
        Desc::Lane(stream) => Owned::Lane(stream),
        Desc::Part {
            index,
            offset,
            hash,
            head,
            payload,
            repeat,
        } => {
            let max = MAX_BODY as usize - PART_HEADER_LEN;
            let mut p = vec![head];
            p.extend(&payload);
            p.truncate(max);
            let times = if repeat > 60_000 {
                (repeat as usize - 60_000).min(max / p.len())
            } else {
                1
            };
            let p = p.repeat(times.max(1));
            Owned::Part(index, offset, p.len() as u32, hash, false, p)
        }
        Desc::ZeroPart { index, offset, len } => {
            Owned::Part(index, offset, len.max(1), 0, true, vec![])
        }
        Desc::FetchPart { index, offset, len } => Owned::FetchPart(index, offset, len.max(1)),
        Desc::Stale { first, count } => Owned::Stale(first, count.max(1)),
    })
}

fn frame(o: &Owned) -> Frame<'_> {
    match o {
        Owned::Hello(h) => Frame::Hello(*h),
        Owned::Error(code, reason) => Frame::Error {
            code: *code,
            reason,
        },
        Owned::Open(size, generation, chunk_shift, name, epoch) => Frame::Open {
            epoch: *epoch,
            size: *size,
            generation: *generation,
            chunk_shift: *chunk_shift,
            name,
        },
        Owned::Mount(name) => Frame::Mount { name },
        Owned::State(empty, lazy, durable, generation, chunk_count, epoch) => Frame::State {
            epoch: *epoch,
            empty: *empty,
            lazy: *lazy,
            durable: *durable,
            generation: *generation,
            chunk_count: *chunk_count,
        },
        Owned::Hashes(first, wire) => Frame::Hashes {
            first: *first,
            hashes: HashList::from_wire(wire).unwrap(),
        },
        Owned::Chunk(index, hash, zero, fetched, payload) => Frame::Chunk {
            index: *index,
            hash: *hash,
            zero: *zero,
            fetched: *fetched,
            payload,
        },
        Owned::Commit(generation, count, summary) => Frame::Commit {
            generation: *generation,
            count: *count,
            summary: *summary,
        },
        Owned::Ack(generation) => Frame::Ack {
            generation: *generation,
        },
        Owned::Fetch(first, count, urgent) => Frame::Fetch {
            first: *first,
            count: *count,
            urgent: *urgent,
        },
        Owned::Handoff(generation, postcopy) => Frame::Handoff {
            generation: *generation,
            postcopy: *postcopy,
        },
        Owned::HandoffAck(generation) => Frame::HandoffAck {
            generation: *generation,
        },
        Owned::Lane(stream) => Frame::Lane { stream: *stream },
        Owned::Part(index, offset, len, hash, zero, payload) => Frame::Part {
            index: *index,
            offset: *offset,
            len: *len,
            hash: *hash,
            zero: *zero,
            payload,
        },
        Owned::FetchPart(index, offset, len) => Frame::FetchPart {
            index: *index,
            offset: *offset,
            len: *len,
        },
        Owned::Stale(first, count) => Frame::Stale {
            first: *first,
            count: *count,
        },
    }
}

/// The frame the receiver must see: an ERROR reason is truncated to MAX_REASON_LEN bytes at a
/// char boundary by the encoder.
fn expected<'a>(f: Frame<'a>) -> Frame<'a> {
    match f {
        Frame::Error { code, reason } if reason.len() > MAX_REASON_LEN => {
            let mut end = MAX_REASON_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            assert!(MAX_REASON_LEN - end < 4);
            Frame::Error {
                code,
                reason: &reason[..end],
            }
        }
        f => f,
    }
}

fuzz_target!(|descs: Vec<Desc>| {
    let mut valid = Vec::new();
    for d in descs.into_iter().take(16) {
        match build(d) {
            Ok(o) => valid.push(o),
            Err((o, code)) => {
                let bytes = frame(&o).to_vec();
                match Frame::decode(&bytes, MAX_BODY) {
                    Err(e) => assert_eq!(e.code, code, "{e}"),
                    other => panic!("invalid frame decoded: {other:?}, expected {code}"),
                }
            }
        }
    }

    let frames: Vec<Frame<'_>> = valid.iter().map(frame).collect();
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for f in &frames {
        let start = buf.len();
        f.encode(&mut buf);
        assert_eq!(f.to_vec(), buf[start..], "encode and to_vec differ");
        if let Frame::Chunk {
            index,
            hash,
            zero,
            fetched,
            payload,
        } = *f
        {
            let h = chunk_header(index, hash, zero, fetched, payload.len());
            assert_eq!(h[..], buf[start..start + 24]);
        }
        if let Frame::Part {
            index,
            offset,
            len,
            hash,
            zero,
            ..
        } = *f
        {
            let h = part_header(index, offset, len, hash, zero);
            assert_eq!(h[..], buf[start..start + 32]);
            if zero {
                assert_eq!(buf.len(), start + 32, "a ZERO part is its header alone");
            }
        }
        // §5.13 and §5.19 byte for byte: HANDOFF 0x40 with flag POSTCOPY 0x0001 and a u64
        // generation; STALE 0x42, no flags, first u64 and count u32.
        let spec: Option<Vec<u8>> = match *f {
            Frame::Handoff {
                generation,
                postcopy,
            } => Some(
                [0xD5, 0x40, postcopy as u8, 0, 8, 0, 0, 0]
                    .into_iter()
                    .chain(generation.to_le_bytes())
                    .collect(),
            ),
            Frame::Stale { first, count } => Some(
                [0xD5, 0x42, 0, 0, 12, 0, 0, 0]
                    .into_iter()
                    .chain(first.to_le_bytes())
                    .chain(count.to_le_bytes())
                    .collect(),
            ),
            _ => None,
        };
        if let Some(spec) = spec {
            assert_eq!(buf[start..], spec[..], "{f:?} encoded unlike §5");
        }
        ends.push(buf.len());
    }

    let mut pos = 0;
    for (f, end) in frames.iter().zip(ends) {
        let (d, used) = Frame::decode(&buf[pos..], MAX_BODY)
            .unwrap_or_else(|e| panic!("{f:?} does not decode: {e}"))
            .expect("whole frame reported incomplete");
        assert_eq!(pos + used, end, "{f:?} consumed the wrong length");
        assert_eq!(d, expected(*f));
        assert_eq!(d.to_vec(), buf[pos..end]);
        pos = end;
    }
    assert_eq!(pos, buf.len());
    assert_eq!(Frame::decode(&buf[pos..], MAX_BODY), Ok(None));
});
