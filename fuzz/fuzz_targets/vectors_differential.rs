//! The codec against the golden vectors of spec/vectors/ (loaded once, from the path baked in at
//! compile time, with the std-only parser spec/src/vectors.rs).
//!
//! What it checks, honestly stated:
//! - at start-up, every vector once: its bytes decode (then pass or fail the geometry check) as
//!   its `# expect:` line says, and `ok` vectors re-encode byte for byte. This is what
//!   protocol/tests/vectors.rs also checks; here it guards the fuzz corpus's ground truth.
//! - an input equal to a vector's bytes: the same expectation, checked again on that input.
//! - an input that is a strict prefix of an `ok` vector: decoding says "incomplete" (§4.3).
//! - an input that starts with an `ok` vector's bytes and continues: decoding yields that vector's
//!   frame and consumes exactly its length (trailing bytes belong to the next frame), and the
//!   vector's geometry check still passes.
//! - an input of an `ok` vector's length differing from it: it does not decode to that vector's
//!   frame (every byte of a valid frame matters; implied by canonical encoding, checked directly).
//! - every input: what frame_decode checks for a single frame (outcome equals the spec model of
//!   §4–§5, canonical re-encoding).
//!
//! It does not derive expectations for arbitrary mutants of vectors: beyond the above, a mutated
//! vector is judged by the spec model, which is independent of both the codec and the vectors.
#![no_main]

#[path = "../../spec/src/vectors.rs"]
#[allow(dead_code)]
mod vectors;

use libfuzzer_sys::fuzz_target;
use memsync_fuzz::model::{self, Outcome};
use memsync_protocol::wire::{ErrorCode, Frame, MAX_BODY};
use memsync_protocol::Geometry;
use std::path::Path;
use std::sync::OnceLock;
use vectors::{Expect, Vector};

const VECTOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors");

fn code_by_name(name: &str) -> ErrorCode {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("unknown error code name {name}"))
}

/// A vector's bytes through the decoder and, if it decodes and names a geometry, the geometry
/// check: Ok(None) incomplete, Ok(Some(used)) a frame, or the error code.
fn outcome(v: &Vector, bytes: &[u8]) -> Result<Option<usize>, ErrorCode> {
    let decoded = Frame::decode(bytes, MAX_BODY).map_err(|e| e.code)?;
    if let (Some((frame, _)), Some((size, shift))) = (&decoded, v.geometry) {
        let g = Geometry::new(size, shift).expect("vector geometry is valid");
        frame.check_geometry(&g).map_err(|e| e.code)?;
    }
    Ok(decoded.map(|(_, used)| used))
}

fn check_expectation(v: &Vector, bytes: &[u8]) {
    let got = outcome(v, bytes);
    match &v.expect {
        Expect::Ok => {
            assert_eq!(got, Ok(Some(bytes.len())), "{}: {}", v.name, v.description);
            let (f, _) = Frame::decode(bytes, MAX_BODY).unwrap().unwrap();
            assert_eq!(f.to_vec(), bytes, "{}: re-encoding differs", v.name);
        }
        Expect::Incomplete => assert_eq!(got, Ok(None), "{}", v.name),
        Expect::Error(name) => assert_eq!(got, Err(code_by_name(name)), "{}", v.name),
    }
}

fn load() -> &'static [Vector] {
    static VECTORS: OnceLock<Vec<Vector>> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let v = vectors::load_dir(Path::new(VECTOR_DIR));
        assert!(!v.is_empty(), "no vectors in {VECTOR_DIR}");
        for x in &v {
            check_expectation(x, &x.bytes);
        }
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let vectors = load();
    for v in vectors {
        if data == v.bytes.as_slice() {
            check_expectation(v, data);
        }
        if v.expect != Expect::Ok {
            continue;
        }
        let vb = v.bytes.as_slice();
        if data.len() < vb.len() && vb.starts_with(data) {
            assert_eq!(
                Frame::decode(data, MAX_BODY),
                Ok(None),
                "prefix of {}",
                v.name
            );
        } else if data.len() > vb.len() && data.starts_with(vb) {
            let (f, used) = Frame::decode(data, MAX_BODY)
                .unwrap_or_else(|e| panic!("{} followed by bytes: {e}", v.name))
                .expect("whole frame reported incomplete");
            assert_eq!(used, vb.len(), "{} followed by bytes", v.name);
            assert_eq!(f.to_vec(), vb);
            assert_eq!(outcome(v, vb), Ok(Some(vb.len())));
        } else if data.len() == vb.len() && data != vb {
            if let Ok(Some((f, _))) = Frame::decode(data, MAX_BODY) {
                let (orig, _) = Frame::decode(vb, MAX_BODY).unwrap().unwrap();
                assert_ne!(f, orig, "a mutant of {} decodes to the same frame", v.name);
            }
        }
    }

    // Single-frame checks against the spec model, as in frame_decode.
    let got = Frame::decode(data, MAX_BODY);
    match (&got, model::decode(data, MAX_BODY)) {
        (Ok(None), Outcome::Incomplete) => {}
        (Err(e), Outcome::Error(code)) => assert_eq!(e.code, code, "{e}"),
        (Ok(Some((f, used))), Outcome::Frame(n)) => {
            assert_eq!(*used, n);
            assert_eq!(f.to_vec(), data[..n]);
        }
        (got, want) => panic!("decode {got:?}, spec model {want:?}"),
    }
});
