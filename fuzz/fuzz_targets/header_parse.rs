//! `Header::parse` on 8 arbitrary bytes with an arbitrary `max_body`.
//!
//! Input: bytes 0..8 are the header, bytes 8..12 the `max_body` (u32 LE; MAX_BODY when absent).
//! Asserts: never panics; the outcome equals the spec model of §4.2 (magic, then known type, then
//! flags defined for the type, then `len ≤ max_body`, first failure decides the code); `Ok`
//! implies magic 0xD5, a known type, defined flags only and `len ≤ max_body`, and `to_bytes` gives
//! back the 8 input bytes; `Frame::decode` on the same 8 bytes agrees (error, or incomplete unless
//! the body is empty).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::model;
use memsync_protocol::wire::{Frame, Header, FRAME_MAGIC, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    let max_body = match data.get(8..12) {
        Some(m) => u32::from_le_bytes(m.try_into().unwrap()),
        None => MAX_BODY,
    };

    let got = Header::parse(&b, max_body);
    let want = model::header(&b, max_body);
    match (&got, want) {
        (Ok(h), Ok((kind, flags, len))) => {
            assert_eq!((h.kind, h.flags, h.len), (kind, flags, len));
            assert_eq!(b[0], FRAME_MAGIC);
            let allowed = model::allowed_flags(h.kind).expect("known type");
            assert_eq!(h.flags & !allowed, 0);
            assert!(h.len <= max_body);
            assert_eq!(
                h.to_bytes(),
                b,
                "to_bytes does not give the parsed bytes back"
            );
            assert_eq!(Header::parse(&h.to_bytes(), h.len), Ok(*h));
        }
        (Err(e), Err(code)) => assert_eq!(e.code, code, "{e}"),
        _ => panic!("parse gave {got:?}, the spec model {want:?}"),
    }

    // The decoder's view of the same 8 bytes.
    match (Frame::decode(&b, max_body), &got) {
        (Err(e), Err(pe)) => assert_eq!(&e, pe),
        (Ok(None), Ok(h)) => assert!(h.len > 0),
        (Ok(Some((_, 8))), Ok(h)) => assert_eq!(h.len, 0),
        // A zero-length body that is not valid for its type.
        (Err(e), Ok(h)) => assert!(h.len == 0, "{e}"),
        (d, p) => panic!("decode {d:?} disagrees with parse {p:?}"),
    }
});
