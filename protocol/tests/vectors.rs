//! The golden vectors of `spec/vectors/` against the codec: valid frames decode, pass their
//! geometry check and re-encode byte for byte; invalid ones yield exactly the named error; frames
//! built here encode to the same bytes; every byte of a valid vector matters.

#[path = "../../spec/src/vectors.rs"]
mod vectors;

use memsync_protocol::hash::{chunk_hash, Summary};
use memsync_protocol::wire::{flag, kind, ErrorCode, Frame, HashList, Hello, MAX_BODY};
use memsync_protocol::Geometry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use vectors::{Expect, Vector};

fn load() -> Vec<Vector> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors");
    let v = vectors::load_dir(&dir);
    assert!(!v.is_empty(), "no vectors in {}", dir.display());
    v
}

fn geometry(v: &Vector) -> Option<Geometry> {
    v.geometry.map(|(size, shift)| {
        Geometry::new(size, shift)
            .unwrap_or_else(|e| panic!("{}: geometry line is not a valid geometry: {e}", v.name))
    })
}

/// Decodes a vector as a receiver on a region stream would: the frame, then its geometry check.
fn outcome(v: &Vector) -> Result<Option<(Frame<'_>, usize)>, ErrorCode> {
    let decoded = Frame::decode(&v.bytes, MAX_BODY).map_err(|e| e.code)?;
    if let (Some((frame, _)), Some(g)) = (&decoded, geometry(v)) {
        frame.check_geometry(&g).map_err(|e| e.code)?;
    }
    Ok(decoded)
}

fn code_by_name(name: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.name() == name)
}

#[test]
fn valid_vectors_decode_and_reencode() {
    for v in load().iter().filter(|v| v.expect == Expect::Ok) {
        let (frame, used) = match outcome(v) {
            Ok(Some(d)) => d,
            other => panic!(
                "{} ({}): expected a frame, got {other:?}",
                v.name, v.description
            ),
        };
        assert_eq!(
            used,
            v.bytes.len(),
            "{}: frame does not use every byte",
            v.name
        );
        assert_eq!(frame.to_vec(), v.bytes, "{}: re-encoding differs", v.name);
    }
}

#[test]
fn invalid_vectors_yield_their_error() {
    for v in load().iter().filter(|v| v.expect != Expect::Ok) {
        match &v.expect {
            Expect::Incomplete => {
                assert_eq!(outcome(v), Ok(None), "{}: expected incomplete", v.name);
                assert!(
                    v.geometry.is_none(),
                    "{}: geometry on an incomplete vector",
                    v.name
                );
            }
            Expect::Error(name) => {
                let want = code_by_name(name)
                    .unwrap_or_else(|| panic!("{}: unknown error code name {name}", v.name));
                match outcome(v) {
                    Err(got) => assert_eq!(got, want, "{} ({})", v.name, v.description),
                    Ok(d) => panic!("{}: expected {want}, decoded {d:?}", v.name),
                }
            }
            Expect::Ok => unreachable!(),
        }
    }
}

/// Each valid vector's frame, built from its fields with the Rust types, encoded.
fn constructed() -> BTreeMap<&'static str, Vec<u8>> {
    let payload_4096: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let one = [0x2au8];
    let (h_4096, h_2a, h_zero) = (
        chunk_hash(&payload_4096),
        chunk_hash(&one),
        chunk_hash(&[0; 4096]),
    );
    let name_chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    let name_255: String = (0..255)
        .map(|i| name_chars[i % name_chars.len()] as char)
        .collect();
    let reason_max = "\u{e9}".repeat(512);
    let mut summary_3 = Summary::new();
    summary_3.add(0, h_4096);
    summary_3.add(1, 0);
    summary_3.add(2, h_2a);
    let mut wire = Vec::new();
    let mut hashes = |first: u64, hs: &[u64]| {
        HashList::encode_into(hs, &mut wire);
        Frame::Hashes {
            first,
            hashes: HashList::from_wire(&wire).unwrap(),
        }
        .to_vec()
    };
    let hashes_one = hashes(2, &[h_2a]);
    let hashes_full = hashes(0, &[h_4096, h_zero, h_2a]);
    let hello = |h: Hello| Frame::Hello(h).to_vec();
    let open = |size, generation, chunk_shift, name| {
        Frame::Open {
            epoch: None,
            size,
            generation,
            chunk_shift,
            name,
        }
        .to_vec()
    };
    let state = |empty, lazy, durable, generation, chunk_count| {
        Frame::State {
            epoch: None,
            empty,
            lazy,
            durable,
            generation,
            chunk_count,
        }
        .to_vec()
    };
    let chunk = |index, hash, zero, fetched, payload| {
        Frame::Chunk {
            index,
            hash,
            zero,
            fetched,
            payload,
        }
        .to_vec()
    };
    let commit = |generation, count, summary| {
        Frame::Commit {
            generation,
            count,
            summary,
        }
        .to_vec()
    };
    let fetch = |first, count, urgent| {
        Frame::Fetch {
            first,
            count,
            urgent,
        }
        .to_vec()
    };
    let error = |code, reason| Frame::Error { code, reason }.to_vec();
    let part = |index, offset, len, hash, zero, payload| {
        Frame::Part {
            index,
            offset,
            len,
            hash,
            zero,
            payload,
        }
        .to_vec()
    };
    let fetch_part = |index, offset, len| Frame::FetchPart { index, offset, len }.to_vec();
    let part_16 = &payload_4096[1024..1040];
    BTreeMap::from([
        ("hello_default", hello(Hello::default())),
        (
            "hello_min_limits",
            hello(Hello {
                max_body: memsync_protocol::wire::MIN_MAX_BODY,
                max_regions: 1,
                features: u64::MAX,
                ..Hello::default()
            }),
        ),
        (
            "hello_major_2",
            hello(Hello {
                major: 2,
                minor: 7,
                features: 0,
                ..Hello::default()
            }),
        ),
        (
            "error_empty_reason",
            error(ErrorCode::ProtocolViolation as u32, ""),
        ),
        (
            "error_reason",
            error(
                ErrorCode::HashMismatch as u32,
                "chunk 3 does not match its hash",
            ),
        ),
        (
            "error_forbidden",
            error(
                ErrorCode::Forbidden as u32,
                "region disk.img is owned by another peer",
            ),
        ),
        (
            "error_handed_over",
            error(
                ErrorCode::HandedOver as u32,
                "region disk.img was handed over to this peer",
            ),
        ),
        (
            "error_not_durable",
            error(
                ErrorCode::NotDurable as u32,
                "durable acknowledgements are required",
            ),
        ),
        (
            "error_fenced",
            error(
                ErrorCode::Fenced as u32,
                "region disk.img is owned at a newer epoch: this peer is fenced",
            ),
        ),
        ("error_unknown_code", error(u32::MAX, "x")),
        (
            "error_reason_max",
            error(ErrorCode::Internal as u32, &reason_max),
        ),
        ("open_basic", open(8193, 0, 12, "vm-1.ram")),
        ("open_name_255", open(1 << 30, 1, 16, &name_255)),
        ("open_max_geometry", open(1 << 46, u64::MAX, 22, "big")),
        ("open_min_geometry", open(1, 0, 12, "x")),
        (
            "open_epoch",
            Frame::Open {
                epoch: Some(2),
                size: 8193,
                generation: 7,
                chunk_shift: 12,
                name: "vm-1.ram",
            }
            .to_vec(),
        ),
        ("mount_basic", Frame::Mount { name: "vm-1.ram" }.to_vec()),
        ("mount_name_255", Frame::Mount { name: &name_255 }.to_vec()),
        ("state_hashes", state(false, false, false, 5, 3)),
        ("state_empty", state(true, false, false, 0, 0)),
        ("state_empty_lazy", state(true, true, false, 0, 0)),
        ("state_lazy_not_empty", state(false, true, false, 0, 3)),
        ("state_durable", state(false, false, true, 5, 3)),
        ("state_empty_durable", state(true, false, true, 0, 0)),
        ("state_max", state(false, false, false, u64::MAX, 1 << 24)),
        (
            "state_epoch",
            Frame::State {
                epoch: Some(2),
                empty: false,
                lazy: false,
                durable: false,
                generation: 5,
                chunk_count: 3,
            }
            .to_vec(),
        ),
        ("hashes_one", hashes_one),
        ("hashes_full", hashes_full),
        ("chunk_full", chunk(0, h_4096, false, false, &payload_4096)),
        ("chunk_zero", chunk(1, 0, true, false, &[])),
        ("chunk_last_one_byte", chunk(2, h_2a, false, false, &one)),
        ("chunk_fetched", chunk(2, h_2a, false, true, &one)),
        ("chunk_zero_fetched", chunk(1, 0, true, true, &[])),
        ("chunk_max_index", chunk((1 << 24) - 1, 0, true, false, &[])),
        ("commit_basic", commit(1, 3, summary_3.digest())),
        ("commit_empty", commit(2, 0, Summary::new().digest())),
        (
            "commit_max",
            commit(u64::MAX, 1 << 24, 0x0123_4567_89ab_cdef),
        ),
        ("ack_basic", Frame::Ack { generation: 1 }.to_vec()),
        (
            "ack_max",
            Frame::Ack {
                generation: u64::MAX,
            }
            .to_vec(),
        ),
        ("fetch_background", fetch(0, 3, false)),
        ("fetch_urgent", fetch(2, 1, true)),
        ("fetch_max_count", fetch(0, u32::MAX, false)),
        (
            "handoff_basic",
            Frame::Handoff {
                generation: 7,
                postcopy: false,
            }
            .to_vec(),
        ),
        (
            "handoff_max",
            Frame::Handoff {
                generation: u64::MAX,
                postcopy: false,
            }
            .to_vec(),
        ),
        (
            "handoff_postcopy",
            Frame::Handoff {
                generation: 7,
                postcopy: true,
            }
            .to_vec(),
        ),
        (
            "handoff_ack_basic",
            Frame::HandoffAck { generation: 7 }.to_vec(),
        ),
        ("stale_basic", Frame::Stale { first: 1, count: 2 }.to_vec()),
        ("lane_basic", Frame::Lane { stream: 4 }.to_vec()),
        ("lane_max", Frame::Lane { stream: u64::MAX }.to_vec()),
        (
            "part_basic",
            part(0, 1024, 16, chunk_hash(part_16), false, part_16),
        ),
        ("part_last_chunk", part(2, 0, 1, h_2a, false, &one)),
        ("part_zero", part(1, 2048, 2048, 0, true, &[])),
        (
            "part_max_index",
            part((1 << 24) - 1, (1 << 22) - 1, 1, 0, true, &[]),
        ),
        ("fetch_part_basic", fetch_part(0, 1024, 16)),
        ("fetch_part_whole_chunk", fetch_part(0, 0, 4096)),
        ("fetch_part_max", fetch_part(u64::MAX, u32::MAX, u32::MAX)),
    ])
}

#[test]
fn constructed_frames_encode_to_the_vectors() {
    let built = constructed();
    let all = load();
    let valid: BTreeMap<&str, &Vector> = all
        .iter()
        .filter(|v| v.expect == Expect::Ok)
        .map(|v| (v.name.as_str(), v))
        .collect();
    let missing: Vec<_> = valid.keys().filter(|n| !built.contains_key(*n)).collect();
    let stale: Vec<_> = built.keys().filter(|n| !valid.contains_key(*n)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "valid vectors without a constructed frame: {missing:?}; constructed frames without a valid vector: {stale:?}"
    );
    for (name, bytes) in &built {
        assert_eq!(
            bytes, &valid[name].bytes,
            "{name}: constructed frame differs"
        );
    }
}

#[test]
fn every_byte_of_a_valid_vector_matters() {
    for v in load().iter().filter(|v| v.expect == Expect::Ok) {
        let (orig, _) = Frame::decode(&v.bytes, MAX_BODY).unwrap().unwrap();
        let mut bytes = v.bytes.clone();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            if let Ok(Some((f, used))) = Frame::decode(&bytes, MAX_BODY) {
                assert!(
                    f != orig || used != bytes.len(),
                    "{}: flipping byte {i} decodes to the same frame",
                    v.name
                );
            }
            bytes[i] ^= 0x01;
        }
    }
}

#[test]
fn vectors_cover_every_type_and_framing_error() {
    let all = load();
    let types: BTreeSet<u8> = all
        .iter()
        .filter(|v| v.expect == Expect::Ok)
        .map(|v| v.bytes[1])
        .collect();
    let kinds = [
        kind::HELLO,
        kind::ERROR,
        kind::OPEN,
        kind::MOUNT,
        kind::STATE,
        kind::HASHES,
        kind::LANE,
        kind::CHUNK,
        kind::COMMIT,
        kind::ACK,
        kind::PART,
        kind::FETCH,
        kind::FETCH_PART,
        kind::HANDOFF,
        kind::HANDOFF_ACK,
        kind::STALE,
    ];
    for k in kinds {
        assert!(types.contains(&k), "no valid vector of frame type {k:#04x}");
    }
    // every flag bit defined for a type appears set in some valid vector of that type
    for (k, f) in [
        (kind::STATE, flag::STATE_EMPTY),
        (kind::STATE, flag::STATE_LAZY),
        (kind::STATE, flag::STATE_DURABLE),
        (kind::STATE, flag::STATE_EPOCH),
        (kind::OPEN, flag::OPEN_EPOCH),
        (kind::CHUNK, flag::CHUNK_ZERO),
        (kind::CHUNK, flag::CHUNK_FETCHED),
        (kind::FETCH, flag::FETCH_URGENT),
        (kind::PART, flag::PART_ZERO),
        (kind::HANDOFF, flag::HANDOFF_POSTCOPY),
    ] {
        assert!(
            all.iter().any(|v| v.expect == Expect::Ok
                && v.bytes[1] == k
                && u16::from_le_bytes([v.bytes[2], v.bytes[3]]) & f != 0),
            "no valid vector of type {k:#04x} with flag {f:#06x}"
        );
    }
    let codes: BTreeSet<&str> = all
        .iter()
        .filter_map(|v| match &v.expect {
            Expect::Error(c) => Some(c.as_str()),
            _ => None,
        })
        .collect();
    for c in [
        ErrorCode::Malformed,
        ErrorCode::BadMagic,
        ErrorCode::UnknownType,
        ErrorCode::FrameTooLarge,
        ErrorCode::OutOfRange,
        ErrorCode::BadName,
        ErrorCode::BadGeometry,
    ] {
        assert!(codes.contains(c.name()), "no invalid vector yields {c}");
    }
    assert!(
        all.iter().any(|v| v.expect == Expect::Incomplete),
        "no incomplete vector"
    );
}
