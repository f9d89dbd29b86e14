//! An executable reading of spec/PROTOCOL.md §3 (geometry), §4 (header) and §5 (bodies, geometry
//! checks), written from the spec tables without calling `memsync_protocol::wire` or `geometry`.
//! The fuzz targets compare the real codec's outcome with these functions: same success, same
//! error code (the spec fixes the order of checks, so the code is determined).

use memsync_protocol::wire::ErrorCode;

pub const MAGIC: u8 = 0xD5;
pub const MAX_REASON: usize = 1024;
pub const MIN_SHIFT: u8 = 12;
pub const MAX_SHIFT: u8 = 22;
pub const MAX_SIZE: u64 = 1 << 46;
pub const MAX_CHUNK_COUNT: u64 = 1 << 24;

/// Every type code of §5 with the flag bits it defines.
pub const TYPES: [(u8, u16); 16] = [
    (0x01, 0),      // HELLO
    (0x02, 0),      // ERROR
    (0x10, 0b1),    // OPEN: EPOCH
    (0x11, 0),      // MOUNT
    (0x12, 0b1111), // STATE: EMPTY, LAZY, DURABLE, EPOCH
    (0x13, 0),      // HASHES
    (0x14, 0),      // LANE
    (0x20, 0b11),   // CHUNK: ZERO, FETCHED
    (0x21, 0),      // COMMIT
    (0x22, 0),      // ACK
    (0x23, 0b1),    // PART: ZERO
    (0x30, 0b1),    // FETCH: URGENT
    (0x31, 0),      // FETCH_PART
    (0x40, 0b1),    // HANDOFF: POSTCOPY
    (0x41, 0),      // HANDOFF_ACK
    (0x42, 0),      // STALE
];

/// The flag bits §5 defines for `kind`, or `None` for an unknown type.
pub fn allowed_flags(kind: u8) -> Option<u16> {
    TYPES.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}

/// §4.2: the outcome of validating an 8-byte header.
pub fn header(b: &[u8; 8], max_body: u32) -> Result<(u8, u16, u32), ErrorCode> {
    if b[0] != MAGIC {
        return Err(ErrorCode::BadMagic);
    }
    let Some(allowed) = allowed_flags(b[1]) else {
        return Err(ErrorCode::UnknownType);
    };
    let flags = u16::from_le_bytes([b[2], b[3]]);
    if flags & !allowed != 0 {
        return Err(ErrorCode::Malformed);
    }
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len > max_body {
        return Err(ErrorCode::FrameTooLarge);
    }
    Ok((b[1], flags, len))
}

/// §3: is (size, shift) a valid geometry?
pub fn geometry_ok(size: u64, shift: u8) -> bool {
    (MIN_SHIFT..=MAX_SHIFT).contains(&shift)
        && (1..=MAX_SIZE).contains(&size)
        && size.div_ceil(1u64 << shift) <= MAX_CHUNK_COUNT
}

/// §3: chunk count and the length of chunk `i` for a valid geometry.
pub fn chunk_count(size: u64, shift: u8) -> u64 {
    size.div_ceil(1u64 << shift)
}

pub fn chunk_len(size: u64, shift: u8, i: u64) -> u64 {
    let off = i << shift;
    (size - off).min(1u64 << shift)
}

/// §5.3.
pub fn name_ok(name: &[u8]) -> bool {
    (1..=255).contains(&name.len())
        && name[0] != b'.'
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// §4.3 and §5: the outcome of decoding a body of type `kind` (known) with header flags `flags`
/// (already valid for the type).
/// §8.8: the fields end at `at`, followed, when the EPOCH flag is set, by a nonzero u64 epoch;
/// nothing after.
fn epoch_then_end(flagged: bool, b: &[u8], at: usize) -> Result<(), ErrorCode> {
    let end = at + if flagged { 8 } else { 0 };
    if b.len() != end || (flagged && le64(&b[at..]) == 0) {
        return Err(ErrorCode::Malformed);
    }
    Ok(())
}

pub fn body(kind: u8, flags: u16, b: &[u8]) -> Result<(), ErrorCode> {
    use ErrorCode::*;
    let exact = |n: usize| if b.len() == n { Ok(()) } else { Err(Malformed) };
    match kind {
        0x01 => exact(20),
        0x02 => {
            if b.len() < 4 || b.len() - 4 > MAX_REASON || std::str::from_utf8(&b[4..]).is_err() {
                Err(Malformed)
            } else {
                Ok(())
            }
        }
        0x10 => {
            // §5.4, checks 1–7 in order.
            if b.len() < 20 || b[18] != 0 || b[19] != 0 {
                return Err(Malformed);
            }
            let name_len = b[17] as usize;
            if b.len() - 20 < name_len {
                return Err(Malformed);
            }
            let name = &b[20..20 + name_len];
            if std::str::from_utf8(name).is_err() {
                return Err(Malformed);
            }
            if !name_ok(name) {
                return Err(BadName);
            }
            if !geometry_ok(le64(b), b[16]) {
                return Err(BadGeometry);
            }
            epoch_then_end(flags & 1 != 0, b, 20 + name_len)
        }
        0x11 => {
            if std::str::from_utf8(b).is_err() {
                Err(Malformed)
            } else if !name_ok(b) {
                Err(BadName)
            } else {
                Ok(())
            }
        }
        0x12 => {
            if b.len() < 16 || (flags & 1 != 0 && le64(&b[8..]) != 0) {
                return Err(Malformed);
            }
            epoch_then_end(flags & 8 != 0, b, 16)
        }
        0x13 => {
            if b.len() < 16 || !(b.len() - 8).is_multiple_of(8) {
                Err(Malformed)
            } else {
                Ok(())
            }
        }
        0x20 => {
            if b.len() < 16 {
                return Err(Malformed);
            }
            let zero = flags & 1 != 0;
            let payload = b.len() - 16;
            if zero && (payload != 0 || le64(&b[8..]) != 0) {
                return Err(Malformed);
            }
            if !zero && payload == 0 {
                return Err(Malformed);
            }
            Ok(())
        }
        0x21 => exact(20),
        0x14 | 0x22 | 0x40 | 0x41 => exact(8),
        // FETCH and STALE (§5.19): first u64, count u32 ≥ 1.
        0x30 | 0x42 => {
            exact(12)?;
            if u32::from_le_bytes(b[8..12].try_into().unwrap()) == 0 {
                return Err(Malformed);
            }
            Ok(())
        }
        0x23 => {
            // §5.17, checks 1–4 in order.
            if b.len() < 24 {
                return Err(Malformed);
            }
            let len = le32(&b[12..]);
            if len == 0 {
                return Err(Malformed);
            }
            let zero = flags & 1 != 0;
            let payload = b.len() - 24;
            if zero && (payload != 0 || le64(&b[16..]) != 0) {
                return Err(Malformed);
            }
            if !zero && payload as u64 != len as u64 {
                return Err(Malformed);
            }
            Ok(())
        }
        0x31 => {
            exact(16)?;
            if le32(&b[12..]) == 0 {
                return Err(Malformed);
            }
            Ok(())
        }
        _ => Err(UnknownType),
    }
}

/// What a decoder must make of a byte string (§4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Incomplete,
    /// A frame using this many bytes.
    Frame(usize),
    Error(ErrorCode),
}

/// §4: the outcome of decoding the front of `buf` with `max_body`.
pub fn decode(buf: &[u8], max_body: u32) -> Outcome {
    let Some(hb) = buf.first_chunk::<8>() else {
        return Outcome::Incomplete;
    };
    let (kind, flags, len) = match header(hb, max_body) {
        Ok(h) => h,
        Err(c) => return Outcome::Error(c),
    };
    let total = 8 + len as usize;
    if buf.len() < total {
        return Outcome::Incomplete;
    }
    match body(kind, flags, &buf[8..total]) {
        Ok(()) => Outcome::Frame(total),
        Err(c) => Outcome::Error(c),
    }
}

/// §5.14: the geometry check of a valid frame given as its encoded bytes (`frame` must be a
/// whole valid frame) against a valid geometry.
pub fn geometry_check(frame: &[u8], size: u64, shift: u8) -> Result<(), ErrorCode> {
    let n = chunk_count(size, shift);
    let body = &frame[8..];
    match frame[1] {
        0x20 => {
            let index = le64(body);
            if index >= n {
                return Err(ErrorCode::OutOfRange);
            }
            let zero = frame[2] & 1 != 0;
            if !zero && (body.len() - 16) as u64 != chunk_len(size, shift, index) {
                return Err(ErrorCode::Malformed);
            }
            Ok(())
        }
        0x13 => {
            let first = le64(body);
            let count = ((body.len() - 8) / 8) as u64;
            match first.checked_add(count) {
                Some(end) if end <= n => Ok(()),
                _ => Err(ErrorCode::OutOfRange),
            }
        }
        // FETCH and STALE: chunks first .. first + count (u64 overflow is past the end).
        0x30 | 0x42 => {
            let first = le64(body);
            let count = u32::from_le_bytes(body[8..12].try_into().unwrap()) as u64;
            match first.checked_add(count) {
                Some(end) if end <= n => Ok(()),
                _ => Err(ErrorCode::OutOfRange),
            }
        }
        // PART and FETCH_PART: the chunk, then the byte range inside it (as u64: no overflow).
        0x23 | 0x31 => {
            let index = le64(body);
            if index >= n {
                return Err(ErrorCode::OutOfRange);
            }
            let end = le32(&body[8..]) as u64 + le32(&body[12..]) as u64;
            if end > chunk_len(size, shift, index) {
                return Err(ErrorCode::OutOfRange);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The codes a decoder may return at all (§4.2, §5).
pub const DECODE_CODES: [ErrorCode; 6] = [
    ErrorCode::BadMagic,
    ErrorCode::UnknownType,
    ErrorCode::Malformed,
    ErrorCode::FrameTooLarge,
    ErrorCode::BadName,
    ErrorCode::BadGeometry,
];
