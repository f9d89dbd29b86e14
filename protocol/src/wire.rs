//! The wire codec: frame header, every message body, error codes and limits, exactly as
//! spec/PROTOCOL.md §4–§5 lays them out. Decoding borrows from the input (chunk payloads are never
//! copied), checks every length before using it and allocates nothing.

use crate::geometry::{Geometry, MAX_CHUNK_SHIFT};
use std::fmt;

/// ALPN protocol name; the digit is the major version.
pub const ALPN: &[u8] = b"memsync/1";
/// Protocol major version: HELLO's `major` and the ALPN digit (spec §5.1, §11).
pub const VERSION_MAJOR: u16 = 1;
/// Protocol minor version sent in HELLO; informational only (spec §5.1, §11).
pub const VERSION_MINOR: u16 = 0;
/// First byte of every frame.
pub const FRAME_MAGIC: u8 = 0xD5;
/// Bytes of the frame header (spec §4.1).
pub const HEADER_LEN: usize = 8;
/// Bytes of a CHUNK body before its payload.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Bytes of a PART body before its payload.
pub const PART_HEADER_LEN: usize = 24;
/// Largest body this implementation accepts: one largest chunk with its CHUNK header.
pub const MAX_BODY: u32 = (1 << MAX_CHUNK_SHIFT) + CHUNK_HEADER_LEN as u32;
/// Smallest `max_body` a peer may advertise in HELLO.
pub const MIN_MAX_BODY: u32 = (1 << 16) + CHUNK_HEADER_LEN as u32;
/// Longest region name, in bytes (spec §5.3).
pub const MAX_NAME_LEN: usize = 255;
/// Longest ERROR reason, in bytes (spec §5.2).
pub const MAX_REASON_LEN: usize = 1024;
/// Most regions (streams) a peer accepts on one connection unless HELLO says fewer.
pub const DEFAULT_MAX_REGIONS: u32 = 1024;

/// Frame type codes (spec §5).
pub mod kind {
    /// HELLO: version, limits and features, on the control stream (spec §5.1).
    pub const HELLO: u8 = 0x01;
    /// ERROR: an error code and reason; closes the stream it travels on (spec §5.2).
    pub const ERROR: u8 = 0x02;
    /// OPEN: the owner announces a region and its geometry (spec §5.4).
    pub const OPEN: u8 = 0x10;
    /// MOUNT: a lazy replica asks the owner to serve a region (spec §5.5).
    pub const MOUNT: u8 = 0x11;
    /// STATE: the replica's answer to OPEN, saying what it holds (spec §5.6).
    pub const STATE: u8 = 0x12;
    /// HASHES: the replica's hashes of a run of chunks (spec §5.7).
    pub const HASHES: u8 = 0x13;
    /// LANE: first frame of a fetch lane, naming the region stream it serves (spec §5.16).
    pub const LANE: u8 = 0x14;
    /// CHUNK: one chunk's bytes from the owner (spec §5.8).
    pub const CHUNK: u8 = 0x20;
    /// COMMIT: closes a generation with its count and summary (spec §5.9).
    pub const COMMIT: u8 = 0x21;
    /// ACK: the replica applied and verified a generation (spec §5.10).
    pub const ACK: u8 = 0x22;
    /// PART: a byte range of one chunk, on a fetch lane (spec §5.17).
    pub const PART: u8 = 0x23;
    /// FETCH: the replica asks for a run of chunks (spec §5.11).
    pub const FETCH: u8 = 0x30;
    /// FETCH_PART: an urgent FETCH of one chunk naming the bytes a reader waits for (spec §5.18).
    pub const FETCH_PART: u8 = 0x31;
    /// HANDOFF: the owner offers ownership at a generation (spec §5.12).
    pub const HANDOFF: u8 = 0x40;
    /// HANDOFF_ACK: the replica accepts ownership at that generation (spec §5.13).
    pub const HANDOFF_ACK: u8 = 0x41;
    /// STALE: chunks the replica holds an old copy of, ahead of a post-copy HANDOFF (spec §5.19).
    pub const STALE: u8 = 0x42;
}

/// Frame flag bits (spec §5); bits not defined for a type must be zero.
pub mod flag {
    /// STATE: the replica holds no data; no HASHES follow.
    pub const STATE_EMPTY: u16 = 1;
    /// STATE: the replica is lazy and will FETCH what it lacks.
    pub const STATE_LAZY: u16 = 2;
    /// STATE: the replica acknowledges a generation only once it is on stable storage
    /// (negotiated with the DURABLE feature, spec §8.4).
    pub const STATE_DURABLE: u16 = 4;
    /// STATE: the body ends with the ownership epoch the replica holds for the region (spec §8.8).
    pub const STATE_EPOCH: u16 = 8;
    /// OPEN: the body ends with the owner's ownership epoch (negotiated with the EPOCH feature,
    /// spec §8.8).
    pub const OPEN_EPOCH: u16 = 1;
    /// CHUNK: the chunk is all zeros; no payload.
    pub const CHUNK_ZERO: u16 = 1;
    /// CHUNK: an answer to FETCH, outside any generation.
    pub const CHUNK_FETCHED: u16 = 2;
    /// FETCH: a reader is blocked on this chunk; send it before everything else.
    pub const FETCH_URGENT: u16 = 1;
    /// PART: the part is all zeros; no payload.
    pub const PART_ZERO: u16 = 1;
    /// HANDOFF: post-copy: the replica may take ownership before it holds every chunk, and
    /// fetches the stale ones from the old owner afterwards (spec §8.10).
    pub const HANDOFF_POSTCOPY: u16 = 1;
}

/// Error codes carried by ERROR frames and by QUIC stream resets and connection closes (spec §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// A well-formed frame not allowed in the current state or on this stream, or breaking a
    /// rule of spec §8.
    ProtocolViolation = 1,
    /// A body that does not match its layout (short, trailing bytes, undefined flags, bad UTF-8…).
    Malformed = 2,
    /// A header's first byte is not [`FRAME_MAGIC`]; the stream's framing is lost.
    BadMagic = 3,
    /// A header's type is not defined (or not negotiated).
    UnknownType = 4,
    /// A header's length exceeds the receiver's `max_body`.
    FrameTooLarge = 5,
    /// A chunk index or range past the region's last chunk, or a byte range past its chunk's end.
    OutOfRange = 6,
    /// A CHUNK or PART payload's XXH3-64 differs from its hash field.
    HashMismatch = 7,
    /// A COMMIT's count or summary differs from what the replica received.
    SummaryMismatch = 8,
    /// An OPEN size or shift outside spec §3, a STATE chunk count different from the region's, or a
    /// geometry the receiver cannot use.
    BadGeometry = 9,
    /// A region name breaking spec §5.3.
    BadName = 10,
    /// The region already has a stream on this connection, or the receiver holds it in a
    /// conflicting role.
    RegionBusy = 11,
    /// HELLO major versions differ.
    VersionMismatch = 12,
    /// A region stream beyond the receiver's `max_regions`.
    TooManyRegions = 13,
    /// MOUNT of a region the receiver does not own, or OPEN of one it is not configured to accept.
    NotFound = 14,
    /// The owner's region changed size; the owner reopens it on a new stream.
    Resized = 15,
    /// The sender failed to read or write its local copy (mapping, file, device).
    LocalIo = 16,
    /// Orderly stop: the sender stops serving the region, or is shutting down.
    Shutdown = 17,
    /// An unexpected condition or bug in the sender; receivers treat unknown codes as this.
    Internal = 18,
    /// The connection to the peer was lost: a local status, not sent; received, it means SHUTDOWN.
    PeerGone = 19,
    /// Local policy does not let this peer own (OPEN) or mount (MOUNT) the region (spec §10).
    Forbidden = 20,
    /// The receiver owns the region: it was handed over to it (spec §8.6). Answers the OPEN of
    /// an owner whose HANDOFF_ACK was lost, which then knows the handoff completed.
    HandedOver = 21,
    /// The owner requires durable acknowledgements and the replica's STATE does not promise them
    /// (spec §8.4).
    NotDurable = 22,
    /// The OPEN's ownership epoch is older than the one the receiver holds for the region: the
    /// region moved to another owner by a handoff or a promotion, and the sender was fenced
    /// (spec §8.8).
    Fenced = 23,
}

impl ErrorCode {
    /// Every assigned code, in numeric order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::ProtocolViolation,
        ErrorCode::Malformed,
        ErrorCode::BadMagic,
        ErrorCode::UnknownType,
        ErrorCode::FrameTooLarge,
        ErrorCode::OutOfRange,
        ErrorCode::HashMismatch,
        ErrorCode::SummaryMismatch,
        ErrorCode::BadGeometry,
        ErrorCode::BadName,
        ErrorCode::RegionBusy,
        ErrorCode::VersionMismatch,
        ErrorCode::TooManyRegions,
        ErrorCode::NotFound,
        ErrorCode::Resized,
        ErrorCode::LocalIo,
        ErrorCode::Shutdown,
        ErrorCode::Internal,
        ErrorCode::PeerGone,
        ErrorCode::Forbidden,
        ErrorCode::HandedOver,
        ErrorCode::NotDurable,
        ErrorCode::Fenced,
    ];

    /// The code with numeric value `v`, or `None` for a value not assigned.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| *c as u32 == v)
    }

    /// The code's name as spec §7 spells it, e.g. `PROTOCOL_VIOLATION`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ProtocolViolation => "PROTOCOL_VIOLATION",
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::BadMagic => "BAD_MAGIC",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::OutOfRange => "OUT_OF_RANGE",
            ErrorCode::HashMismatch => "HASH_MISMATCH",
            ErrorCode::SummaryMismatch => "SUMMARY_MISMATCH",
            ErrorCode::BadGeometry => "BAD_GEOMETRY",
            ErrorCode::BadName => "BAD_NAME",
            ErrorCode::RegionBusy => "REGION_BUSY",
            ErrorCode::VersionMismatch => "VERSION_MISMATCH",
            ErrorCode::TooManyRegions => "TOO_MANY_REGIONS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Resized => "RESIZED",
            ErrorCode::LocalIo => "LOCAL_IO",
            ErrorCode::Shutdown => "SHUTDOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::PeerGone => "PEER_GONE",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::HandedOver => "HANDED_OVER",
            ErrorCode::NotDurable => "NOT_DURABLE",
            ErrorCode::Fenced => "FENCED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A protocol error: the code to send to the peer and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct WireError {
    /// The code to send to the peer (spec §7).
    pub code: ErrorCode,
    /// Human-readable explanation, sent as the ERROR reason.
    pub reason: String,
}

impl WireError {
    /// An error with `code` and `reason`.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        WireError {
            code,
            reason: reason.into(),
        }
    }
}

fn err(code: ErrorCode, reason: impl Into<String>) -> WireError {
    WireError::new(code, reason)
}

/// The fixed 8-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type code ([`kind`]).
    pub kind: u8,
    /// Flag bits ([`flag`]).
    pub flags: u16,
    /// Body length in bytes.
    pub len: u32,
}

impl Header {
    /// Parses and validates a header: magic, known type, flags defined for the type, reserved
    /// bits, and `len <= max_body`.
    pub fn parse(b: &[u8; HEADER_LEN], max_body: u32) -> Result<Header, WireError> {
        if b[0] != FRAME_MAGIC {
            return Err(err(
                ErrorCode::BadMagic,
                format!("frame magic {:#04x}, expected {FRAME_MAGIC:#04x}", b[0]),
            ));
        }
        let kind = b[1];
        let flags = u16::from_le_bytes([b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let allowed = match kind {
            kind::STATE => {
                flag::STATE_EMPTY | flag::STATE_LAZY | flag::STATE_DURABLE | flag::STATE_EPOCH
            }
            kind::OPEN => flag::OPEN_EPOCH,
            kind::CHUNK => flag::CHUNK_ZERO | flag::CHUNK_FETCHED,
            kind::FETCH => flag::FETCH_URGENT,
            kind::PART => flag::PART_ZERO,
            kind::HANDOFF => flag::HANDOFF_POSTCOPY,
            kind::HELLO
            | kind::ERROR
            | kind::MOUNT
            | kind::HASHES
            | kind::LANE
            | kind::FETCH_PART
            | kind::COMMIT
            | kind::ACK
            | kind::STALE
            | kind::HANDOFF_ACK => 0,
            other => {
                return Err(err(
                    ErrorCode::UnknownType,
                    format!("unknown frame type {other:#04x}"),
                ))
            }
        };
        if flags & !allowed != 0 {
            return Err(err(
                ErrorCode::Malformed,
                format!(
                    "undefined flag bits {:#06x} for type {kind:#04x}",
                    flags & !allowed
                ),
            ));
        }
        if len > max_body {
            return Err(err(
                ErrorCode::FrameTooLarge,
                format!("body of {len} bytes exceeds the limit of {max_body}"),
            ));
        }
        Ok(Header { kind, flags, len })
    }

    /// Encodes the header, magic included, as its 8 wire bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = FRAME_MAGIC;
        b[1] = self.kind;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// HELLO body: version, limits and features (spec §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Major protocol version; negotiation requires both peers' to be equal.
    pub major: u16,
    /// Minor protocol version; informational.
    pub minor: u16,
    /// Largest frame body this peer accepts.
    pub max_body: u32,
    /// Most region streams this peer accepts on the connection.
    pub max_regions: u32,
    /// Feature bits ([`feature`]); unknown bits are ignored.
    pub features: u64,
}

/// HELLO feature bits (spec §5.1).
pub mod feature {
    /// The peer takes urgent fetched chunks on a fetch lane (spec §8.7).
    pub const FETCH_LANE: u64 = 1;
    /// The peer asks for (as lazy replica) or sends (as owner) the bytes a reader waits for
    /// ahead of their chunk: FETCH_PART and PART frames (spec §8.7). Needs FETCH_LANE.
    pub const FETCH_PARTS: u64 = 2;
    /// The peer knows the STATE flag DURABLE: as replica it may promise durable
    /// acknowledgements, as owner it may require them (spec §8.4).
    pub const DURABLE: u64 = 4;
    /// The peer knows ownership epochs: the OPEN and STATE flags EPOCH and the error FENCED
    /// (spec §8.8).
    pub const EPOCH: u64 = 8;
    /// The peer knows post-copy handoffs: STALE, HANDOFF's POSTCOPY flag, and serving or
    /// fetching stale chunks after HANDOFF_ACK (spec §8.10).
    pub const POSTCOPY: u64 = 16;
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            max_body: MAX_BODY,
            max_regions: DEFAULT_MAX_REGIONS,
            features: feature::FETCH_LANE
                | feature::FETCH_PARTS
                | feature::DURABLE
                | feature::EPOCH
                | feature::POSTCOPY,
        }
    }
}

/// Limits agreed by a HELLO exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest frame body either peer may send: the smaller of the two HELLOs' limits.
    pub max_body: u32,
    /// Most region streams per direction: the smaller of the two HELLOs' limits.
    pub max_regions: u32,
    /// Features both peers advertised: the intersection of their feature bits.
    pub features: u64,
}

impl Hello {
    /// Combines our HELLO with the peer's: same major version required, then the smaller limits
    /// and the common features.
    pub fn negotiate(&self, peer: &Hello) -> Result<Negotiated, WireError> {
        if peer.major != self.major {
            return Err(err(
                ErrorCode::VersionMismatch,
                format!(
                    "peer speaks major version {}, we speak {}",
                    peer.major, self.major
                ),
            ));
        }
        if peer.max_body < MIN_MAX_BODY {
            return Err(err(
                ErrorCode::Malformed,
                format!("peer max_body {} below {MIN_MAX_BODY}", peer.max_body),
            ));
        }
        Ok(Negotiated {
            max_body: self.max_body.min(peer.max_body),
            max_regions: self.max_regions.min(peer.max_regions),
            features: self.features & peer.features,
        })
    }
}

/// A list of u64 hashes as they lie on the wire (little-endian), borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashList<'a>(&'a [u8]);

impl<'a> HashList<'a> {
    /// Wraps wire bytes; `bytes.len()` must be a multiple of 8.
    pub fn from_wire(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(8).then_some(HashList(bytes))
    }

    /// Number of hashes in the list.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    /// True when the list holds no hash.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hashes, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.0
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte slice")))
    }

    /// The list's wire bytes.
    pub fn as_wire(&self) -> &'a [u8] {
        self.0
    }

    /// Encodes `hashes` in wire order into `out` (cleared first), for building a HASHES frame.
    pub fn encode_into(hashes: &[u64], out: &mut Vec<u8>) {
        out.clear();
        out.extend(hashes.iter().flat_map(|h| h.to_le_bytes()));
    }
}

/// One decoded frame. Borrowed fields point into the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO: version, limits and features (spec §5.1).
    Hello(Hello),
    /// `code` is kept raw so codes from newer peers still decode; see [`ErrorCode::from_u32`].
    Error {
        /// Error code (spec §7), possibly one this peer does not know.
        code: u32,
        /// Human-readable reason, at most [`MAX_REASON_LEN`] bytes on the wire.
        reason: &'a str,
    },
    /// OPEN: the owner announces a region and its geometry (spec §5.4).
    Open {
        /// Region length in bytes.
        size: u64,
        /// The owner's generation counter: the last round it started (spec §8.4).
        generation: u64,
        /// log2 of the chunk size (spec §3).
        chunk_shift: u8,
        /// Region name (spec §5.3).
        name: &'a str,
        /// EPOCH flag: the owner's ownership epoch, never 0 (spec §8.8).
        epoch: Option<u64>,
    },
    /// MOUNT: a lazy replica asks the owner to serve region `name` (spec §5.5).
    Mount {
        /// Region name (spec §5.3).
        name: &'a str,
    },
    /// First frame of a fetch lane: the QUIC stream ID of the region stream it serves.
    Lane {
        /// QUIC stream ID of the region stream the lane serves.
        stream: u64,
    },
    /// STATE: the replica's answer to OPEN, saying what it holds (spec §5.6).
    State {
        /// EMPTY flag: the replica holds nothing usable; no HASHES follow.
        empty: bool,
        /// LAZY flag: the replica is lazy and will FETCH chunks it needs.
        lazy: bool,
        /// DURABLE flag: every ACK on this stream follows stable storage (spec §8.4).
        durable: bool,
        /// The last generation the replica committed (0 if none).
        generation: u64,
        /// The region's chunk count, or 0 with EMPTY.
        chunk_count: u64,
        /// EPOCH flag: the ownership epoch the replica holds for the region, never 0 (spec §8.8).
        epoch: Option<u64>,
    },
    /// HASHES: the replica's hashes of chunks `first ..` (spec §5.7).
    Hashes {
        /// Index of the chunk the first hash describes.
        first: u64,
        /// XXH3-64 of the replica's bytes of each chunk from `first` on; never empty.
        hashes: HashList<'a>,
    },
    /// CHUNK: one chunk's bytes from the owner (spec §5.8).
    Chunk {
        /// Chunk index.
        index: u64,
        /// XXH3-64 of the payload, or 0 with ZERO.
        hash: u64,
        /// ZERO flag: the chunk is all zeros; no payload.
        zero: bool,
        /// FETCHED flag: the chunk answers a FETCH and belongs to no generation.
        fetched: bool,
        /// The chunk's bytes; empty with ZERO.
        payload: &'a [u8],
    },
    /// COMMIT: closes the round of generation `generation` (spec §5.9).
    Commit {
        /// The generation closed.
        generation: u64,
        /// Number of CHUNK frames of the generation.
        count: u32,
        /// Summary of the generation's CHUNK frames (spec §6).
        summary: u64,
    },
    /// ACK: the replica applied and verified `generation` and every earlier one (spec §5.10).
    Ack {
        /// The generation acknowledged.
        generation: u64,
    },
    /// Bytes `offset .. offset + len` of chunk `index`, ahead of the chunk (fetch lanes only).
    Part {
        /// Chunk index.
        index: u64,
        /// Offset within the chunk of the first byte carried.
        offset: u32,
        /// Number of bytes carried, at least 1.
        len: u32,
        /// XXH3-64 of the payload, or 0 with ZERO.
        hash: u64,
        /// ZERO flag: the bytes are all zeros; no payload.
        zero: bool,
        /// The `len` bytes; empty with ZERO.
        payload: &'a [u8],
    },
    /// FETCH: the replica asks for chunks `first .. first + count` (spec §5.11).
    Fetch {
        /// First chunk asked for.
        first: u64,
        /// Number of chunks asked for, at least 1.
        count: u32,
        /// URGENT flag: a reader is blocked on these chunks.
        urgent: bool,
    },
    /// An urgent FETCH of chunk `index` whose reader waits for bytes `offset .. offset + len`.
    FetchPart {
        /// Chunk asked for.
        index: u64,
        /// Offset within the chunk of the first byte the reader waits for.
        offset: u32,
        /// Number of bytes the reader waits for, at least 1.
        len: u32,
    },
    /// HANDOFF: the owner offers ownership at `generation` (spec §5.12).
    Handoff {
        /// The owner's last generation, acknowledged by the replica.
        generation: u64,
        /// POSTCOPY flag: the chunks named by STALE may still be missing (spec §8.10).
        postcopy: bool,
    },
    /// STALE: the replica's copies of chunks `first .. first + count` are older than the
    /// owner's, ahead of a post-copy HANDOFF (spec §5.19).
    Stale {
        /// First stale chunk.
        first: u64,
        /// Number of stale chunks, at least 1.
        count: u32,
    },
    /// HANDOFF_ACK: the replica accepts ownership at `generation` (spec §5.13).
    HandoffAck {
        /// The generation of the HANDOFF accepted.
        generation: u64,
    },
}

/// Checks a region name: 1..=255 bytes of `[A-Za-z0-9._-]`, not starting with `.` (so never `.`,
/// `..` or a hidden file), usable as a file name on any peer (spec §5.3).
pub fn check_name(name: &str) -> Result<(), WireError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(err(
            ErrorCode::BadName,
            format!("region name must be 1..={MAX_NAME_LEN} bytes"),
        ));
    }
    if name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(err(
            ErrorCode::BadName,
            format!("region name {name:?} must use only A-Z a-z 0-9 . _ - and not start with '.'"),
        ));
    }
    Ok(())
}

/// Bounds-checked little-endian reader over a frame body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(err(ErrorCode::Malformed, "body shorter than its fields"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    /// The trailing ownership epoch that an EPOCH flag announces: never 0 (spec §8.8).
    fn epoch(&mut self, flagged: bool) -> Result<Option<u64>, WireError> {
        match flagged.then(|| self.u64()).transpose()? {
            Some(0) => Err(err(ErrorCode::Malformed, "ownership epoch 0")),
            e => Ok(e),
        }
    }
    fn end(self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(err(
                ErrorCode::Malformed,
                format!("{} trailing bytes after the body's fields", self.b.len()),
            ))
        }
    }
}

fn utf8(b: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(b).map_err(|_| err(ErrorCode::Malformed, "string is not UTF-8"))
}

impl<'a> Frame<'a> {
    /// Decodes one frame from the front of `buf`. Returns `Ok(None)` when `buf` does not yet hold
    /// a whole frame, else the frame and the number of bytes it used.
    pub fn decode(buf: &'a [u8], max_body: u32) -> Result<Option<(Frame<'a>, usize)>, WireError> {
        let Some(hb) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(hb, max_body)?;
        let total = HEADER_LEN + header.len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let frame = Frame::decode_body(header, &buf[HEADER_LEN..total])?;
        Ok(Some((frame, total)))
    }

    /// Decodes a body whose header was parsed by [`Header::parse`]; `body.len()` must equal
    /// `header.len`.
    pub fn decode_body(header: Header, body: &'a [u8]) -> Result<Frame<'a>, WireError> {
        if body.len() != header.len as usize {
            return Err(err(ErrorCode::Malformed, "body length differs from header"));
        }
        let f = header.flags;
        let mut r = Reader { b: body };
        let frame = match header.kind {
            kind::HELLO => Frame::Hello(Hello {
                major: r.u16()?,
                minor: r.u16()?,
                max_body: r.u32()?,
                max_regions: r.u32()?,
                features: r.u64()?,
            }),
            kind::ERROR => {
                let code = r.u32()?;
                let reason = r.rest();
                if reason.len() > MAX_REASON_LEN {
                    return Err(err(ErrorCode::Malformed, "error reason too long"));
                }
                Frame::Error {
                    code,
                    reason: utf8(reason)?,
                }
            }
            kind::OPEN => {
                let size = r.u64()?;
                let generation = r.u64()?;
                let chunk_shift = r.u8()?;
                let name_len = r.u8()? as usize;
                if r.u16()? != 0 {
                    return Err(err(ErrorCode::Malformed, "reserved field is not zero"));
                }
                let name = utf8(r.take(name_len)?)?;
                check_name(name)?;
                Geometry::new(size, chunk_shift)?;
                Frame::Open {
                    size,
                    generation,
                    chunk_shift,
                    name,
                    epoch: r.epoch(f & flag::OPEN_EPOCH != 0)?,
                }
            }
            kind::MOUNT => {
                let name = utf8(r.rest())?;
                check_name(name)?;
                Frame::Mount { name }
            }
            kind::LANE => Frame::Lane { stream: r.u64()? },
            kind::STATE => {
                let empty = f & flag::STATE_EMPTY != 0;
                let generation = r.u64()?;
                let chunk_count = r.u64()?;
                if empty && chunk_count != 0 {
                    return Err(err(ErrorCode::Malformed, "EMPTY state with a chunk count"));
                }
                Frame::State {
                    empty,
                    lazy: f & flag::STATE_LAZY != 0,
                    durable: f & flag::STATE_DURABLE != 0,
                    generation,
                    chunk_count,
                    epoch: r.epoch(f & flag::STATE_EPOCH != 0)?,
                }
            }
            kind::HASHES => {
                let first = r.u64()?;
                let hashes = HashList::from_wire(r.rest())
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| {
                        err(ErrorCode::Malformed, "HASHES needs a whole, non-empty list")
                    })?;
                Frame::Hashes { first, hashes }
            }
            kind::CHUNK => {
                let index = r.u64()?;
                let hash = r.u64()?;
                let zero = f & flag::CHUNK_ZERO != 0;
                let payload = r.rest();
                if zero && (!payload.is_empty() || hash != 0) {
                    return Err(err(
                        ErrorCode::Malformed,
                        "ZERO chunk with a payload or a hash",
                    ));
                }
                if !zero && payload.is_empty() {
                    return Err(err(ErrorCode::Malformed, "chunk without payload"));
                }
                Frame::Chunk {
                    index,
                    hash,
                    zero,
                    fetched: f & flag::CHUNK_FETCHED != 0,
                    payload,
                }
            }
            kind::COMMIT => Frame::Commit {
                generation: r.u64()?,
                count: r.u32()?,
                summary: r.u64()?,
            },
            kind::ACK => Frame::Ack {
                generation: r.u64()?,
            },
            kind::PART => {
                let index = r.u64()?;
                let offset = r.u32()?;
                let len = r.u32()?;
                let hash = r.u64()?;
                let zero = f & flag::PART_ZERO != 0;
                let payload = r.rest();
                if len == 0 {
                    return Err(err(ErrorCode::Malformed, "PART of zero bytes"));
                }
                if zero && (!payload.is_empty() || hash != 0) {
                    return Err(err(
                        ErrorCode::Malformed,
                        "ZERO part with a payload or a hash",
                    ));
                }
                if !zero && payload.len() != len as usize {
                    return Err(err(
                        ErrorCode::Malformed,
                        format!("part of {len} bytes with a payload of {}", payload.len()),
                    ));
                }
                Frame::Part {
                    index,
                    offset,
                    len,
                    hash,
                    zero,
                    payload,
                }
            }
            kind::FETCH_PART => {
                let index = r.u64()?;
                let offset = r.u32()?;
                let len = r.u32()?;
                if len == 0 {
                    return Err(err(ErrorCode::Malformed, "FETCH_PART of zero bytes"));
                }
                Frame::FetchPart { index, offset, len }
            }
            kind::FETCH => {
                let first = r.u64()?;
                let count = r.u32()?;
                if count == 0 {
                    return Err(err(ErrorCode::Malformed, "FETCH of zero chunks"));
                }
                Frame::Fetch {
                    first,
                    count,
                    urgent: f & flag::FETCH_URGENT != 0,
                }
            }
            kind::HANDOFF => Frame::Handoff {
                generation: r.u64()?,
                postcopy: f & flag::HANDOFF_POSTCOPY != 0,
            },
            kind::STALE => {
                let first = r.u64()?;
                let count = r.u32()?;
                if count == 0 {
                    return Err(err(ErrorCode::Malformed, "STALE of zero chunks"));
                }
                Frame::Stale { first, count }
            }
            kind::HANDOFF_ACK => Frame::HandoffAck {
                generation: r.u64()?,
            },
            other => {
                return Err(err(
                    ErrorCode::UnknownType,
                    format!("unknown frame type {other:#04x}"),
                ))
            }
        };
        r.end()?;
        Ok(frame)
    }

    /// The frame's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Error { .. } => kind::ERROR,
            Frame::Open { .. } => kind::OPEN,
            Frame::Mount { .. } => kind::MOUNT,
            Frame::Lane { .. } => kind::LANE,
            Frame::State { .. } => kind::STATE,
            Frame::Hashes { .. } => kind::HASHES,
            Frame::Chunk { .. } => kind::CHUNK,
            Frame::Commit { .. } => kind::COMMIT,
            Frame::Ack { .. } => kind::ACK,
            Frame::Part { .. } => kind::PART,
            Frame::Fetch { .. } => kind::FETCH,
            Frame::FetchPart { .. } => kind::FETCH_PART,
            Frame::Handoff { .. } => kind::HANDOFF,
            Frame::HandoffAck { .. } => kind::HANDOFF_ACK,
            Frame::Stale { .. } => kind::STALE,
        }
    }

    fn flags(&self) -> u16 {
        let bit = |b: bool, v: u16| if b { v } else { 0 };
        match *self {
            Frame::State {
                empty,
                lazy,
                durable,
                epoch,
                ..
            } => {
                bit(empty, flag::STATE_EMPTY)
                    | bit(lazy, flag::STATE_LAZY)
                    | bit(durable, flag::STATE_DURABLE)
                    | bit(epoch.is_some(), flag::STATE_EPOCH)
            }
            Frame::Open { epoch, .. } => bit(epoch.is_some(), flag::OPEN_EPOCH),
            Frame::Chunk { zero, fetched, .. } => {
                bit(zero, flag::CHUNK_ZERO) | bit(fetched, flag::CHUNK_FETCHED)
            }
            Frame::Fetch { urgent, .. } => bit(urgent, flag::FETCH_URGENT),
            Frame::Part { zero, .. } => bit(zero, flag::PART_ZERO),
            Frame::Handoff { postcopy, .. } => bit(postcopy, flag::HANDOFF_POSTCOPY),
            _ => 0,
        }
    }

    /// Appends the encoded frame (header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        match *self {
            Frame::Hello(h) => {
                out.extend_from_slice(&h.major.to_le_bytes());
                out.extend_from_slice(&h.minor.to_le_bytes());
                out.extend_from_slice(&h.max_body.to_le_bytes());
                out.extend_from_slice(&h.max_regions.to_le_bytes());
                out.extend_from_slice(&h.features.to_le_bytes());
            }
            Frame::Error { code, reason } => {
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(truncate_utf8(reason, MAX_REASON_LEN).as_bytes());
            }
            Frame::Open {
                size,
                generation,
                chunk_shift,
                name,
                epoch,
            } => {
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&generation.to_le_bytes());
                out.push(chunk_shift);
                out.push(name.len() as u8);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(name.as_bytes());
                out.extend(epoch.iter().flat_map(|e| e.to_le_bytes()));
            }
            Frame::Mount { name } => out.extend_from_slice(name.as_bytes()),
            Frame::State {
                generation,
                chunk_count,
                epoch,
                ..
            } => {
                out.extend_from_slice(&generation.to_le_bytes());
                out.extend_from_slice(&chunk_count.to_le_bytes());
                out.extend(epoch.iter().flat_map(|e| e.to_le_bytes()));
            }
            Frame::Hashes { first, hashes } => {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(hashes.as_wire());
            }
            Frame::Chunk {
                index,
                hash,
                payload,
                ..
            } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&hash.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Commit {
                generation,
                count,
                summary,
            } => {
                out.extend_from_slice(&generation.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&summary.to_le_bytes());
            }
            Frame::Lane { stream } => out.extend_from_slice(&stream.to_le_bytes()),
            Frame::Ack { generation }
            | Frame::Handoff { generation, .. }
            | Frame::HandoffAck { generation } => {
                out.extend_from_slice(&generation.to_le_bytes());
            }
            Frame::Fetch { first, count, .. } | Frame::Stale { first, count } => {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            Frame::Part {
                index,
                offset,
                len,
                hash,
                payload,
                ..
            } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&hash.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Frame::FetchPart { index, offset, len } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        let len = (out.len() - start - HEADER_LEN) as u32;
        let header = Header {
            kind: self.kind(),
            flags: self.flags(),
            len,
        };
        out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    }

    /// The encoded frame as a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Checks the frame's chunk indices and payload length against a region's geometry (spec
    /// §5: OUT_OF_RANGE, MALFORMED).
    pub fn check_geometry(&self, geom: &Geometry) -> Result<(), WireError> {
        match *self {
            Frame::Chunk {
                index,
                zero,
                payload,
                ..
            } => {
                geom.check_index(index)?;
                if !zero && payload.len() != geom.chunk_len(index) {
                    return Err(err(
                        ErrorCode::Malformed,
                        format!(
                            "chunk {index} payload of {} bytes, expected {}",
                            payload.len(),
                            geom.chunk_len(index)
                        ),
                    ));
                }
                Ok(())
            }
            Frame::Hashes { first, hashes } => {
                let end = first.checked_add(hashes.len() as u64);
                if end.is_none_or(|e| e > geom.chunk_count()) {
                    return Err(err(ErrorCode::OutOfRange, "HASHES past the region's end"));
                }
                Ok(())
            }
            Frame::Fetch { first, count, .. } | Frame::Stale { first, count } => {
                let end = first.checked_add(count as u64);
                if end.is_none_or(|e| e > geom.chunk_count()) {
                    return Err(err(
                        ErrorCode::OutOfRange,
                        format!("frame type {:#04x} past the region's end", self.kind()),
                    ));
                }
                Ok(())
            }
            Frame::Part {
                index, offset, len, ..
            }
            | Frame::FetchPart { index, offset, len } => {
                geom.check_index(index)?;
                if offset as u64 + len as u64 > geom.chunk_len(index) as u64 {
                    return Err(err(
                        ErrorCode::OutOfRange,
                        format!(
                            "bytes {offset}..{} of chunk {index}, which has {}",
                            offset as u64 + len as u64,
                            geom.chunk_len(index)
                        ),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Encodes a CHUNK header (frame header and the 16 body bytes before the payload) for a payload of
/// `payload_len` bytes, so a sender can write the payload straight from memory after it.
pub fn chunk_header(
    index: u64,
    hash: u64,
    zero: bool,
    fetched: bool,
    payload_len: usize,
) -> [u8; HEADER_LEN + CHUNK_HEADER_LEN] {
    let mut flags = 0;
    if zero {
        flags |= flag::CHUNK_ZERO;
    }
    if fetched {
        flags |= flag::CHUNK_FETCHED;
    }
    let h = Header {
        kind: kind::CHUNK,
        flags,
        len: (CHUNK_HEADER_LEN + payload_len) as u32,
    };
    let mut b = [0u8; HEADER_LEN + CHUNK_HEADER_LEN];
    b[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_le_bytes());
    b[HEADER_LEN + 8..].copy_from_slice(&hash.to_le_bytes());
    b
}

/// Encodes a PART header (frame header and the 24 body bytes before the payload) for bytes
/// `offset .. offset + len` of chunk `index`, so a sender can write the payload straight from
/// memory after it (none when `zero`).
pub fn part_header(
    index: u64,
    offset: u32,
    len: u32,
    hash: u64,
    zero: bool,
) -> [u8; HEADER_LEN + PART_HEADER_LEN] {
    let h = Header {
        kind: kind::PART,
        flags: if zero { flag::PART_ZERO } else { 0 },
        len: (PART_HEADER_LEN + if zero { 0 } else { len as usize }) as u32,
    };
    let mut b = [0u8; HEADER_LEN + PART_HEADER_LEN];
    b[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_le_bytes());
    b[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&offset.to_le_bytes());
    b[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&len.to_le_bytes());
    b[HEADER_LEN + 16..].copy_from_slice(&hash.to_le_bytes());
    b
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}"
    }

    /// Frames with owned data, so proptest can build them.
    #[derive(Debug, Clone)]
    enum Owned {
        Hello(Hello),
        Error(u32, String),
        Open(u64, u64, u8, String, Option<u64>),
        Mount(String),
        Lane(u64),
        State(bool, bool, bool, u64, Option<u64>),
        Hashes(u64, Vec<u8>),
        Chunk(u64, u64, bool, Vec<u8>),
        ZeroChunk(u64, bool),
        Commit(u64, u32, u64),
        Ack(u64),
        Fetch(u64, u32, bool),
        Part(u64, u32, Vec<u8>),
        ZeroPart(u64, u32, u32),
        FetchPart(u64, u32, u32),
        Handoff(u64, bool),
        HandoffAck(u64),
        Stale(u64, u32),
    }

    fn arb_owned() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(|(a, b, c, d, e)| Owned::Hello(Hello {
                    major: a,
                    minor: b,
                    max_body: c,
                    max_regions: d,
                    features: e
                })),
            (any::<u32>(), ".{0,50}").prop_map(|(c, r)| Owned::Error(c, r)),
            (
                1u64..1 << 40,
                any::<u64>(),
                22u8..=22,
                arb_name(),
                proptest::option::of(1u64..)
            )
                .prop_map(|(s, g, sh, n, ep)| Owned::Open(s, g, sh, n, ep)),
            arb_name().prop_map(Owned::Mount),
            any::<u64>().prop_map(Owned::Lane),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
                proptest::option::of(1u64..)
            )
                .prop_map(|(e, l, d, g, ep)| Owned::State(e, l, d, g, ep)),
            (any::<u64>(), prop::collection::vec(any::<u64>(), 1..20)).prop_map(|(f, h)| {
                Owned::Hashes(f, h.iter().flat_map(|x| x.to_le_bytes()).collect())
            }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 1..300)
            )
                .prop_map(|(i, h, f, p)| Owned::Chunk(i, h, f, p)),
            (any::<u64>(), any::<bool>()).prop_map(|(i, f)| Owned::ZeroChunk(i, f)),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(a, b, c)| Owned::Commit(a, b, c)),
            any::<u64>().prop_map(Owned::Ack),
            (any::<u64>(), 1u32.., any::<bool>()).prop_map(|(a, b, c)| Owned::Fetch(a, b, c)),
            (
                any::<u64>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 1..300)
            )
                .prop_map(|(i, o, p)| Owned::Part(i, o, p)),
            (any::<u64>(), any::<u32>(), 1u32..).prop_map(|(i, o, l)| Owned::ZeroPart(i, o, l)),
            (any::<u64>(), any::<u32>(), 1u32..).prop_map(|(i, o, l)| Owned::FetchPart(i, o, l)),
            (any::<u64>(), any::<bool>()).prop_map(|(g, p)| Owned::Handoff(g, p)),
            any::<u64>().prop_map(Owned::HandoffAck),
            (any::<u64>(), 1u32..).prop_map(|(f, c)| Owned::Stale(f, c)),
        ]
    }

    fn frame(o: &Owned) -> Frame<'_> {
        match o {
            Owned::Hello(h) => Frame::Hello(*h),
            Owned::Error(c, r) => Frame::Error {
                code: *c,
                reason: r,
            },
            Owned::Open(s, g, sh, n, ep) => Frame::Open {
                size: *s,
                generation: *g,
                chunk_shift: *sh,
                name: n,
                epoch: *ep,
            },
            Owned::Mount(n) => Frame::Mount { name: n },
            Owned::Lane(stream) => Frame::Lane { stream: *stream },
            Owned::State(e, l, d, g, ep) => Frame::State {
                empty: *e,
                lazy: *l,
                durable: *d,
                generation: *g,
                chunk_count: if *e { 0 } else { 77 },
                epoch: *ep,
            },
            Owned::Hashes(f, h) => Frame::Hashes {
                first: *f,
                hashes: HashList::from_wire(h).unwrap(),
            },
            Owned::Chunk(i, h, f, p) => Frame::Chunk {
                index: *i,
                hash: *h,
                zero: false,
                fetched: *f,
                payload: p,
            },
            Owned::ZeroChunk(i, f) => Frame::Chunk {
                index: *i,
                hash: 0,
                zero: true,
                fetched: *f,
                payload: &[],
            },
            Owned::Commit(a, b, c) => Frame::Commit {
                generation: *a,
                count: *b,
                summary: *c,
            },
            Owned::Ack(g) => Frame::Ack { generation: *g },
            Owned::Fetch(a, b, c) => Frame::Fetch {
                first: *a,
                count: *b,
                urgent: *c,
            },
            Owned::Part(i, o, p) => Frame::Part {
                index: *i,
                offset: *o,
                len: p.len() as u32,
                hash: crate::hash::chunk_hash(p),
                zero: false,
                payload: p,
            },
            Owned::ZeroPart(i, o, l) => Frame::Part {
                index: *i,
                offset: *o,
                len: *l,
                hash: 0,
                zero: true,
                payload: &[],
            },
            Owned::FetchPart(i, o, l) => Frame::FetchPart {
                index: *i,
                offset: *o,
                len: *l,
            },
            Owned::Handoff(g, p) => Frame::Handoff {
                generation: *g,
                postcopy: *p,
            },
            Owned::Stale(first, count) => Frame::Stale {
                first: *first,
                count: *count,
            },
            Owned::HandoffAck(g) => Frame::HandoffAck { generation: *g },
        }
    }

    proptest! {
        #[test]
        fn encode_decode_identity(o in arb_owned()) {
            let f = frame(&o);
            let bytes = f.to_vec();
            let (d, used) = Frame::decode(&bytes, MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(d, f);
            // every strict prefix is "incomplete", never an error or a different frame
            for cut in 0..bytes.len() {
                prop_assert_eq!(Frame::decode(&bytes[..cut], MAX_BODY), Ok(None));
            }
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((f, used))) = Frame::decode(&bytes, MAX_BODY) {
                // whatever decodes re-encodes to the same bytes
                prop_assert_eq!(f.to_vec(), bytes[..used].to_vec());
            }
        }

        #[test]
        fn decode_mutated_frames(o in arb_owned(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = frame(&o).to_vec();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(Some((f, used))) = Frame::decode(&bytes, MAX_BODY) {
                prop_assert_eq!(f.to_vec(), bytes[..used].to_vec());
            }
        }
    }

    #[test]
    fn chunk_header_matches_encode() {
        let payload = [9u8; 100];
        let f = Frame::Chunk {
            index: 3,
            hash: 0xabc,
            zero: false,
            fetched: true,
            payload: &payload,
        };
        let v = f.to_vec();
        assert_eq!(&v[..24], &chunk_header(3, 0xabc, false, true, 100));
    }

    #[test]
    fn part_header_matches_encode() {
        let payload = [7u8; 4096];
        let f = Frame::Part {
            index: 9,
            offset: 8192,
            len: 4096,
            hash: 0xfeed,
            zero: false,
            payload: &payload,
        };
        let v = f.to_vec();
        assert_eq!(&v[..32], &part_header(9, 8192, 4096, 0xfeed, false));
        let z = Frame::Part {
            index: 9,
            offset: 8192,
            len: 4096,
            hash: 0,
            zero: true,
            payload: &[],
        };
        assert_eq!(z.to_vec(), part_header(9, 8192, 4096, 0, true));
    }

    #[test]
    fn huge_length_is_refused_before_reading() {
        let mut b = Header {
            kind: kind::CHUNK,
            flags: 0,
            len: u32::MAX,
        }
        .to_bytes()
        .to_vec();
        b.extend_from_slice(&[0; 16]);
        assert_eq!(
            Frame::decode(&b, MAX_BODY).unwrap_err().code,
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn names() {
        assert!(check_name("vm-1.ram").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b", "é"] {
            assert_eq!(
                check_name(bad).unwrap_err().code,
                ErrorCode::BadName,
                "{bad}"
            );
        }
        assert!(check_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn negotiation() {
        let ours = Hello::default();
        let mut theirs = Hello {
            max_body: MIN_MAX_BODY,
            max_regions: 3,
            features: 33,
            ..Hello::default()
        };
        let n = ours.negotiate(&theirs).unwrap();
        // Bit 5 (value 32) is unknown to us and drops out; FETCH_LANE (bit 0) is common.
        assert_eq!(
            (n.max_body, n.max_regions, n.features),
            (MIN_MAX_BODY, 3, feature::FETCH_LANE)
        );
        theirs.features = 32;
        assert_eq!(ours.negotiate(&theirs).unwrap().features, 0);
        theirs.major = 2;
        assert_eq!(
            ours.negotiate(&theirs).unwrap_err().code,
            ErrorCode::VersionMismatch
        );
    }
}
