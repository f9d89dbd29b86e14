//! `Frame::decode_body` for a chosen type with an arbitrary body, then `check_geometry` against an
//! arbitrary validated geometry.
//!
//! Input layout: `[selector u8][flags u16 LE][shift u8][size u64 LE][body…]`. The selector picks
//! the type: even values cycle through HASHES, CHUNK, OPEN, STATE, FETCH, ERROR, PART, FETCH_PART,
//! STALE (the types with interesting bodies or geometry checks), odd values through all sixteen
//! types (HANDOFF with its POSTCOPY flag among them); selector bit 7 keeps the flags raw (else
//! they are masked to the type's defined bits). `(size, shift)` is tried as
//! given; when it is invalid `Geometry::new` must say BAD_GEOMETRY exactly when the spec model (§3)
//! says so, and a valid geometry is derived from the same numbers instead.
//!
//! Asserts: never panics; the decode outcome equals the spec model (§4.3, §5) — same success,
//! same error code; error codes are only those §5 documents for the type (MALFORMED for all;
//! BAD_NAME for OPEN and MOUNT; BAD_GEOMETRY for OPEN); a decoded frame re-encodes to the header
//! and body; a body whose length differs from the header's is MALFORMED; `check_geometry` agrees
//! with the model of §5.14 (OUT_OF_RANGE — also for a PART or FETCH_PART byte range past its
//! chunk's end —, for a FETCH or STALE a run past the region's end —, or MALFORMED for a CHUNK
//! payload of the wrong length);
//! the geometry's derived quantities are consistent (§3).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::{model, Input};
use memsync_protocol::geometry::{MAX_CHUNKS, MAX_REGION_SIZE};
use memsync_protocol::wire::{kind, ErrorCode, Frame, Header, MAX_BODY};
use memsync_protocol::Geometry;

const FOCUS: [u8; 9] = [
    kind::HASHES,
    kind::CHUNK,
    kind::OPEN,
    kind::STATE,
    kind::FETCH,
    kind::ERROR,
    kind::PART,
    kind::FETCH_PART,
    kind::STALE,
];

fn geometry(size: u64, shift: u8) -> Geometry {
    let raw = Geometry::new(size, shift);
    assert_eq!(
        raw.is_ok(),
        model::geometry_ok(size, shift),
        "Geometry::new({size}, {shift}) = {raw:?}"
    );
    let g = match raw {
        Ok(g) => g,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadGeometry);
            let shift = 12 + shift % 11;
            let size = 1 + size % MAX_REGION_SIZE.min(MAX_CHUNKS << shift);
            Geometry::new(size, shift).expect("derived geometry is valid")
        }
    };
    let n = g.chunk_count();
    assert!((1..=MAX_CHUNKS).contains(&n));
    assert_eq!(n, model::chunk_count(g.size(), g.shift()));
    let last = n - 1;
    assert!((1..=g.chunk_size() as usize).contains(&g.chunk_len(last)));
    assert_eq!(g.offset(last) + g.chunk_len(last) as u64, g.size());
    assert_eq!(g.chunk_of(g.size() - 1), Some(last));
    assert_eq!(g.chunk_of(g.size()), None);
    assert_eq!(g.check_index(n).unwrap_err().code, ErrorCode::OutOfRange);
    assert!(g.check_index(last).is_ok());
    g
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.u8();
    let raw_flags = input.u16();
    let shift = input.u8();
    let size = input.u64();
    let body = input.rest();

    let kind = if sel & 1 == 0 {
        FOCUS[(sel as usize >> 1) % FOCUS.len()]
    } else {
        model::TYPES[(sel as usize >> 1) % model::TYPES.len()].0
    };
    let allowed = model::allowed_flags(kind).unwrap();
    let flags = if sel & 0x80 != 0 {
        raw_flags
    } else {
        raw_flags & allowed
    };
    let geom = geometry(size, shift);

    let hb = Header {
        kind,
        flags,
        len: body.len() as u32,
    }
    .to_bytes();
    let header = match Header::parse(&hb, MAX_BODY) {
        Ok(h) => h,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Malformed, "{e}");
            assert_ne!(flags & !allowed, 0);
            return;
        }
    };

    let got = Frame::decode_body(header, body);
    let want = model::body(kind, flags, body);
    let frame = match (got, want) {
        (Ok(f), Ok(())) => f,
        (Err(e), Err(code)) => {
            assert_eq!(e.code, code, "{e}");
            let documented: &[ErrorCode] = match kind {
                kind::OPEN => &[
                    ErrorCode::Malformed,
                    ErrorCode::BadName,
                    ErrorCode::BadGeometry,
                ],
                kind::MOUNT => &[ErrorCode::Malformed, ErrorCode::BadName],
                _ => &[ErrorCode::Malformed],
            };
            assert!(documented.contains(&e.code), "{e}");
            return;
        }
        (got, want) => panic!(
            "type {kind:#04x} flags {flags:#x}: decode_body {got:?}, spec model {want:?}, body {}",
            memsync_fuzz::hex(body)
        ),
    };

    let mut enc = hb.to_vec();
    enc.extend_from_slice(body);
    assert_eq!(frame.to_vec(), enc);
    assert_eq!(frame.kind(), kind);

    let longer = Header {
        len: header.len + 1,
        ..header
    };
    assert_eq!(
        Frame::decode_body(longer, body).unwrap_err().code,
        ErrorCode::Malformed
    );

    let checked = frame.check_geometry(&geom).map_err(|e| e.code);
    assert_eq!(
        checked,
        model::geometry_check(&enc, geom.size(), geom.shift()),
        "{frame:?} against {geom:?}"
    );
    if let Err(code) = checked {
        assert!(
            code == ErrorCode::OutOfRange || (code == ErrorCode::Malformed && kind == kind::CHUNK),
            "{code}"
        );
    }
});
