//! `Frame::decode` on arbitrary bytes, read as a stream of back-to-back frames.
//!
//! Asserts, for each position in the stream until the first error or incomplete frame:
//! - decoding never panics, and its outcome (frame of N bytes / incomplete / error code) is exactly
//!   what the spec model (`memsync_fuzz::model::decode`, §4–§5) says;
//! - a decoded frame re-encodes to exactly the bytes it consumed (canonical encoding), and its
//!   `kind()` is the header's type byte;
//! - decoding the same bytes with a smaller `max_body` fails with FRAME_TOO_LARGE when the limit is
//!   below the body length and otherwise yields the identical frame;
//! - every strict prefix of a decoded frame is "incomplete" (§4.3), never an error;
//! - `check_geometry` against a geometry derived from the input never panics and agrees with the
//!   model of §5.14.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::model::{self, Outcome};
use memsync_protocol::wire::{ErrorCode, Frame, HEADER_LEN, MAX_BODY};
use memsync_protocol::Geometry;

fuzz_target!(|data: &[u8]| {
    // A geometry for the §5.14 checks, from the input's length and last byte: small regions so
    // that index and payload-length checks are reachable.
    let shift = 12 + data.last().map_or(0, |b| b % 3);
    let size = 1 + (data.len() as u64 * 977) % (64 << shift);
    let geom = Geometry::new(size, shift).expect("valid by construction");

    let mut rest = data;
    loop {
        let got = Frame::decode(rest, MAX_BODY);
        let want = model::decode(rest, MAX_BODY);
        match (&got, want) {
            (Ok(None), Outcome::Incomplete) => return,
            (Err(e), Outcome::Error(code)) => {
                assert_eq!(e.code, code, "error code differs from the spec model: {e}");
                return;
            }
            (Ok(Some((_, used))), Outcome::Frame(n)) => assert_eq!(*used, n),
            _ => panic!(
                "decode gave {got:?}, the spec model {want:?} for {}",
                memsync_fuzz::hex(rest)
            ),
        }
        let (frame, used) = got.unwrap().unwrap();
        let bytes = &rest[..used];
        assert_eq!(frame.to_vec(), bytes, "re-encoding differs");
        assert_eq!(frame.kind(), bytes[1]);

        let body = (used - HEADER_LEN) as u32;
        for limit in [0, body / 2, body.saturating_sub(1), body, body + 1] {
            match Frame::decode(rest, limit) {
                Ok(Some((f, u))) => {
                    assert!(limit >= body, "accepted a body over the limit");
                    assert_eq!((f, u), (frame, used));
                }
                Err(e) if e.code == ErrorCode::FrameTooLarge => assert!(limit < body),
                other => panic!("max_body {limit}: {other:?}"),
            }
        }

        for cut in (0..used.min(40)).chain(used.saturating_sub(8)..used) {
            assert_eq!(
                Frame::decode(&bytes[..cut], MAX_BODY),
                Ok(None),
                "prefix {cut}"
            );
        }

        let checked = frame.check_geometry(&geom).map_err(|e| e.code);
        assert_eq!(
            checked,
            model::geometry_check(bytes, geom.size(), geom.shift()),
            "geometry check of {frame:?} against {geom:?}"
        );

        rest = &rest[used..];
    }
});
