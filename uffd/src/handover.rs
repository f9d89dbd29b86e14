//! Handing a uffd and memory between processes over a Unix socket (SCM_RIGHTS): memsync's
//! write-tracking hand-over (one line of JSON, then a uffd, a memfd and optionally a pagemap) and
//! Firecracker's page-fault-handler hand-over (`GuestRegionUffdMapping` objects and the VMM's
//! uffd). Both messages are specified in this crate's README.

use crate::{page_size, Mapping, UffdError};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most descriptors one hand-over message carries.
pub const MAX_FDS: usize = 4;
/// Longest hand-over message accepted.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Errors of a hand-over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// An I/O error, on the socket or while setting up the hand-over.
    #[error("hand-over socket: {0}")]
    Io(#[from] io::Error),
    /// The message received is not a valid hand-over, or did not arrive complete in time.
    #[error("hand-over message: {0}")]
    Malformed(String),
    /// The peer answered `ok: false`; holds the reason it gave.
    #[error("the peer refused the hand-over: {0}")]
    Refused(String),
    /// A userfaultfd operation failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
}

impl From<rustix::io::Errno> for HandoverError {
    fn from(e: rustix::io::Errno) -> Self {
        HandoverError::Io(e.into())
    }
}

/// Sends `payload` with `fds` attached (all in one `sendmsg`; the rest of a long payload, if
/// the socket took only part, follows without descriptors).
pub fn send_with_fds(sock: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one hand-over"));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::empty(),
    )?;
    (&*sock).write_all(&payload[n..])
}

/// Receives into `buf` and collects descriptors that came with the bytes. Returns the byte
/// count (0 at end of stream).
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok(r.bytes)
}

/// Reads one hand-over message: bytes until `complete` says they form a whole message (or
/// end of stream), with every descriptor that came along. Gives up after `timeout`.
fn recv_message(
    sock: &UnixStream,
    timeout: Duration,
    complete: impl Fn(&[u8]) -> bool,
) -> Result<(Vec<u8>, Vec<OwnedFd>), HandoverError> {
    let deadline = Instant::now() + timeout;
    let mut msg = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandoverError::Malformed(format!(
                "no complete message within {timeout:?}"
            )));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match recv_with_fds(sock, &mut buf, &mut fds) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        msg.extend_from_slice(&buf[..n]);
        if msg.len() > MAX_MESSAGE {
            return Err(HandoverError::Malformed(format!(
                "message longer than {MAX_MESSAGE} bytes"
            )));
        }
        if n == 0 || complete(&msg) {
            sock.set_read_timeout(None)?;
            return Ok((msg, fds));
        }
    }
}

/// The JSON line a process sends to hand a region over for write tracking.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackRequest {
    /// Protocol version; only 1 is accepted.
    pub version: u32,
    /// The region's name on the replica.
    pub name: String,
    /// Start of the region in the sender's address space, page-aligned.
    pub addr: u64,
    /// Region size in bytes, a non-zero multiple of the page size.
    pub size: u64,
    /// Replication chunk size in bytes (65536 when absent).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
}

fn default_chunk_size() -> u64 {
    65536
}

/// The peer's one-line answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackReply {
    /// Whether the peer now tracks writes.
    pub ok: bool,
    /// Why the peer refused, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A write-tracking hand-over as received: the request and its descriptors.
pub struct ReceivedTrack {
    /// The request line.
    pub request: TrackRequest,
    /// The sender's uffd, on which the protocol says UFFDIO_API has not been called.
    pub uffd: OwnedFd,
    /// The memfd holding the region's memory.
    pub memfd: OwnedFd,
    /// The sender's pagemap, or ours of its PID when it sent none.
    pub pagemap: OwnedFd,
    /// The sender's PID (SO_PEERCRED).
    pub pid: i32,
}

/// Receives a write-tracking hand-over on an accepted connection.
pub fn recv_track(sock: &UnixStream, timeout: Duration) -> Result<ReceivedTrack, HandoverError> {
    let (msg, mut fds) = recv_message(sock, timeout, |m| m.contains(&b'\n'))?;
    let line = msg.split(|&b| b == b'\n').next().unwrap_or_default();
    let request: TrackRequest = serde_json::from_slice(line)
        .map_err(|e| HandoverError::Malformed(format!("not a track request: {e}")))?;
    if request.version != 1 {
        return Err(HandoverError::Malformed(format!(
            "version {} not supported (this peer speaks 1)",
            request.version
        )));
    }
    let ps = page_size() as u64;
    if request.size == 0 || !request.addr.is_multiple_of(ps) || !request.size.is_multiple_of(ps) {
        return Err(HandoverError::Malformed(format!(
            "addr {:#x} and size {} must be non-zero multiples of the page size {ps}",
            request.addr, request.size
        )));
    }
    if !(2..=3).contains(&fds.len()) {
        return Err(HandoverError::Malformed(format!(
            "expected 2 or 3 descriptors (uffd, memfd[, pagemap]), got {}",
            fds.len()
        )));
    }
    let pid = rustix::net::sockopt::socket_peercred(sock)?
        .pid
        .as_raw_nonzero()
        .get();
    let pagemap = if fds.len() == 3 {
        fds.pop().expect("3 fds")
    } else {
        std::fs::File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| {
                HandoverError::Malformed(format!(
                    "no pagemap descriptor sent and /proc/{pid}/pagemap cannot be opened: {e}"
                ))
            })?
            .into()
    };
    let memfd = fds.pop().expect("2 fds");
    let uffd = fds.pop().expect("1 fd");
    Ok(ReceivedTrack {
        request,
        uffd,
        memfd,
        pagemap,
        pid,
    })
}

/// Sends the one-line answer to a hand-over.
pub fn send_reply(sock: &UnixStream, reply: &TrackReply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    (&*sock).write_all(&line)
}

/// A region handed to a peer for write tracking: the client side of the hand-over. Owns a
/// memfd mapped shared and writable here; write to it through [`std::ops::DerefMut`], and the
/// peer replicates what changes. Drop it (or exit) to end the hand-over.
pub struct HandedRegion {
    map: Mapping,
    size: usize,
    sock: UnixStream,
    _memfd: OwnedFd,
}

impl HandedRegion {
    /// Creates a `size`-byte region (rounded up to whole pages) initialised with `init` (or
    /// zeros; shorter `init` leaves the rest zero), hands it to the peer listening on `socket`
    /// as region `name`, and returns once the peer tracks writes.
    pub fn create(
        socket: &Path,
        name: &str,
        size: usize,
        chunk_size: u64,
        init: Option<&[u8]>,
    ) -> Result<HandedRegion, HandoverError> {
        let size = size.max(1).next_multiple_of(page_size());
        let memfd = rustix::fs::memfd_create("memsync-handed", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&memfd, size as u64)?;
        let map = Mapping::shared(memfd.as_fd(), size, true)?;
        if let Some(init) = init {
            let n = init.len().min(size);
            // SAFETY: `map` is a fresh writable mapping of `size` bytes that nothing else
            // references yet; `n <= size`.
            unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), map.as_ptr(), n) };
        }
        // The peer calls UFFDIO_API itself, so the uffd goes over without it.
        let uffd = crate::open_fd(crate::OpenFlags::default())?;
        let pagemap = std::fs::File::open("/proc/self/pagemap")?;
        let request = TrackRequest {
            version: 1,
            name: name.to_owned(),
            addr: map.addr(),
            size: size as u64,
            chunk_size,
        };
        let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
        line.push(b'\n');
        let sock = UnixStream::connect(socket)?;
        send_with_fds(
            &sock,
            &line,
            &[uffd.as_fd(), memfd.as_fd(), pagemap.as_fd()],
        )?;
        drop((uffd, pagemap)); // the peer holds its own copies now
        let (reply, _) = recv_message(&sock, Duration::from_secs(60), |m| m.contains(&b'\n'))?;
        let reply: TrackReply =
            serde_json::from_slice(reply.split(|&b| b == b'\n').next().unwrap_or_default())
                .map_err(|e| HandoverError::Malformed(format!("peer's answer: {e}")))?;
        if !reply.ok {
            return Err(HandoverError::Refused(
                reply.error.unwrap_or_else(|| "no reason given".into()),
            ));
        }
        Ok(HandedRegion {
            map,
            size,
            sock,
            _memfd: memfd,
        })
    }

    /// The socket to the peer (its end closes when the peer stops tracking).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }
}

impl std::ops::Deref for HandedRegion {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is `size` readable bytes alive as long as `self`; only this
        // process writes it, through `deref_mut`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.size) }
    }
}

impl std::ops::DerefMut for HandedRegion {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference into the mapping in
        // this process (the peer reads its own mapping of the memfd: other addresses).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.size) }
    }
}

/// One guest memory region of Firecracker's page-fault-handler hand-over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestRegionUffdMapping {
    /// Where the region starts in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Region size in bytes.
    pub size: u64,
    /// Where the region's contents start in the memory image.
    pub offset: u64,
    /// Page size in bytes (Firecracker ≥ 1.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// The same in bytes despite its name (deprecated, Firecracker 1.5–1.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size_kib: Option<u64>,
}

impl GuestRegionUffdMapping {
    /// The region's page size in bytes (the system page size when the VMM sent none).
    pub fn page_size(&self) -> u64 {
        self.page_size
            .or(self.page_size_kib)
            .unwrap_or(page_size() as u64)
    }
}

/// A Firecracker-style hand-over as received.
pub struct ReceivedFaults {
    /// The VMM's guest memory regions.
    pub mappings: Vec<GuestRegionUffdMapping>,
    /// The VMM's uffd.
    pub uffd: OwnedFd,
    /// The VMM's PID (SO_PEERCRED).
    pub pid: i32,
}

/// Receives Firecracker's hand-over: the JSON array of mappings and the uffd.
pub fn recv_faults(sock: &UnixStream, timeout: Duration) -> Result<ReceivedFaults, HandoverError> {
    let (msg, mut fds) = recv_message(sock, timeout, |m| {
        serde_json::from_slice::<Vec<GuestRegionUffdMapping>>(m).is_ok()
    })?;
    let mappings: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&msg)
        .map_err(|e| HandoverError::Malformed(format!("not a list of memory mappings: {e}")))?;
    if fds.len() != 1 {
        return Err(HandoverError::Malformed(format!(
            "expected the uffd as the one descriptor, got {}",
            fds.len()
        )));
    }
    let pid = rustix::net::sockopt::socket_peercred(sock)?
        .pid
        .as_raw_nonzero()
        .get();
    Ok(ReceivedFaults {
        mappings,
        uffd: fds.pop().expect("1 fd"),
        pid,
    })
}

/// Sends a Firecracker-style hand-over (what a VMM does; used by tests and examples).
pub fn send_faults(
    sock: &UnixStream,
    mappings: &[GuestRegionUffdMapping],
    uffd: BorrowedFd<'_>,
) -> io::Result<()> {
    let body = serde_json::to_vec(mappings).map_err(io::Error::other)?;
    send_with_fds(sock, &body, &[uffd])
}
