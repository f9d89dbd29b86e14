//! NBD wire format: constants and pure parsers for the fixed-newstyle handshake and the
//! transmission phase, as the NBD project's `doc/proto.md` specifies them. No I/O here, so the
//! parsers can be fuzzed directly.

/// "NBDMAGIC", the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server → client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client → server).
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// Information types in REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Error values in replies (Linux errno numbering, as proto.md fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ENOTSUP: u32 = 95;

/// Longest option payload read into memory; longer ones are skipped and refused with
/// REP_ERR_TOO_BIG. Export names are at most 4096 bytes (proto.md), plus the INFO/GO framing.
pub const MAX_OPTION_LEN: u32 = 4096 + 2 + 4 + 2 * 64;
/// Largest READ or WRITE served (qemu and libnbd send at most 32 MiB).
pub const MAX_REQUEST_LEN: u32 = 32 << 20;

/// A transmission-phase request header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub const REQUEST_LEN: usize = 28;

/// Parses a request header; `None` on a bad magic, after which the stream cannot be trusted.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Option<Request> {
    let be32 = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4"));
    let be64 = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8"));
    if be32(0) != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: u16::from_be_bytes([b[6], b[7]]),
        cookie: be64(8),
        offset: be64(16),
        len: be32(24),
    })
}

/// Checks a request against an export of `size` bytes before any data is touched; returns the
/// errno to reply with.
pub fn check_request(req: &Request, size: u64, read_only: bool) -> Result<(), u32> {
    let known =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    if req.flags & !known != 0 {
        return Err(EINVAL);
    }
    let writes = matches!(req.command, CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM);
    let in_range = req
        .offset
        .checked_add(req.len as u64)
        .is_some_and(|end| end <= size);
    match req.command {
        CMD_READ | CMD_WRITE if req.len > MAX_REQUEST_LEN => Err(EINVAL),
        _ if writes && read_only => Err(EPERM),
        _ if writes && !in_range => Err(ENOSPC),
        CMD_READ | CMD_CACHE if !in_range => Err(EINVAL),
        CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM | CMD_CACHE | CMD_FLUSH | CMD_DISC => {
            Ok(())
        }
        _ => Err(EINVAL),
    }
}

/// An INFO or GO option's payload: the export name and the information types asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    pub infos: Vec<u16>,
}

/// Parses an INFO/GO payload: u32 name length, name, u16 count, count × u16.
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let infos = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some(InfoRequest { name, infos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: u16, offset: u64, len: u32) -> Request {
        Request {
            flags: 0,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn request_checks() {
        assert_eq!(check_request(&req(CMD_READ, 0, 4096), 4096, false), Ok(()));
        assert_eq!(
            check_request(&req(CMD_READ, 1, 4096), 4096, false),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, 1, 4096), 4096, false),
            Err(ENOSPC)
        );
        assert_eq!(check_request(&req(CMD_WRITE, 0, 1), 4096, true), Err(EPERM));
        assert_eq!(
            check_request(&req(CMD_READ, u64::MAX, 2), 4096, false),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(CMD_READ, 0, MAX_REQUEST_LEN + 1), u64::MAX, false),
            Err(EINVAL)
        );
        assert_eq!(check_request(&req(99, 0, 0), 4096, false), Err(EINVAL));
        let mut r = req(CMD_FLUSH, 0, 0);
        r.flags = 1 << 9;
        assert_eq!(check_request(&r, 4096, false), Err(EINVAL));
    }

    #[test]
    fn info_requests() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!((r.name, r.infos), (&b"abc"[..], vec![INFO_BLOCK_SIZE]));
        assert!(parse_info_request(&d[..d.len() - 1]).is_none());
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(parse_info_request(&huge).is_none());
    }

    #[test]
    fn request_magic() {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[7] = 1;
        assert_eq!(parse_request(&b).unwrap().command, CMD_WRITE);
        b[0] = 0;
        assert!(parse_request(&b).is_none());
    }
}
