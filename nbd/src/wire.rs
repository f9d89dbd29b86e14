//! NBD wire format: constants and pure parsers for the fixed-newstyle handshake and the
//! transmission phase, as the NBD project's `doc/proto.md` specifies them. No I/O here, so the
//! parsers can be fuzzed directly.

/// "NBDMAGIC", the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC` (proto.md).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC` (proto.md).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// `NBD_FLAG_FIXED_NEWSTYLE`, a handshake flag (server → client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES`, a handshake flag (server → client).
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// `NBD_FLAG_C_FIXED_NEWSTYLE`, a client handshake flag.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// `NBD_FLAG_C_NO_ZEROES`, a client handshake flag.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`, an option.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`, an option.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`, an option.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`, an option.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`, an option.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`, an option.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`, an option.
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// `NBD_REP_ACK`, an option reply type.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`, an option reply type.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`, an option reply type.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_ERR_UNSUP`, an option reply type.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_POLICY`, an option reply type.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// `NBD_REP_ERR_INVALID`, an option reply type.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_UNKNOWN`, an option reply type.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// `NBD_REP_ERR_TOO_BIG`, an option reply type.
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// `NBD_INFO_EXPORT`, an information type of REP_INFO.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`, an information type of REP_INFO.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`, an information type of REP_INFO.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`, an information type of REP_INFO.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// `NBD_FLAG_HAS_FLAGS`, a transmission flag.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`, a transmission flag.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`, a transmission flag.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_SEND_FUA`, a transmission flag.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_FLAG_SEND_TRIM`, a transmission flag.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_FLAG_SEND_WRITE_ZEROES`, a transmission flag.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_FLAG_CAN_MULTI_CONN`, a transmission flag.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_FLAG_SEND_CACHE`, a transmission flag.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

/// `NBD_CMD_FLAG_FUA`, a command flag.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE`, a command flag.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `NBD_CMD_FLAG_DF`, a command flag.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `NBD_CMD_FLAG_REQ_ONE`, a command flag.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `NBD_CMD_FLAG_FAST_ZERO`, a command flag.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// `NBD_CMD_READ`, a command.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`, a command.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`, a command.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`, a command.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`, a command.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`, a command.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`, a command.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// `NBD_EPERM`, an error value in replies (Linux errno numbering, as proto.md fixes it).
pub const EPERM: u32 = 1;
/// `NBD_EIO`, an error value in replies (Linux errno numbering, as proto.md fixes it).
pub const EIO: u32 = 5;
/// `NBD_EINVAL`, an error value in replies (Linux errno numbering, as proto.md fixes it).
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`, an error value in replies (Linux errno numbering, as proto.md fixes it).
pub const ENOSPC: u32 = 28;
/// `NBD_ENOTSUP`, an error value in replies (Linux errno numbering, as proto.md fixes it).
pub const ENOTSUP: u32 = 95;

/// Longest option payload read into memory; longer ones are skipped and refused with
/// REP_ERR_TOO_BIG. Export names are at most 4096 bytes (proto.md), plus the INFO/GO framing.
pub const MAX_OPTION_LEN: u32 = 4096 + 2 + 4 + 2 * 64;
/// Largest READ or WRITE served (qemu and libnbd send at most 32 MiB).
pub const MAX_REQUEST_LEN: u32 = 32 << 20;

/// A transmission-phase request header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// The client's handle, echoed in the reply.
    pub cookie: u64,
    /// First byte of the export the command acts on.
    pub offset: u64,
    /// Bytes the command acts on (a WRITE's payload length).
    pub len: u32,
}

/// Length of a request header: magic, flags, type, cookie, offset, length.
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
    /// The export asked for (empty: the default export).
    pub name: &'a [u8],
    /// The `INFO_*` items the client asks for.
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
