//! The protocol engine: the handshake and the transmission phase for one [`Export`], over TCP or a
//! Unix socket. Rule: nothing a client claims is trusted before it is checked; every length and
//! offset is checked before use, payloads move in pieces of [`PIECE`] bytes, and [`Limits`]
//! bounds handshakes, connections and idle clients.

use crate::wire::*;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tracing::{debug, info, warn};

/// What an NBD export serves. Offsets and lengths are checked against `size` before any call.
pub trait Export: Send + Sync + 'static {
    /// The export's size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused (EPERM) and NBD_FLAG_READ_ONLY is advertised.
    fn read_only(&self) -> bool;
    /// Preferred I/O size, advertised in NBD_INFO_BLOCK_SIZE.
    fn preferred_block(&self) -> u32 {
        64 << 10
    }
    /// Fills `buf` with the bytes from `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes `data`; with `fua`, returns only once it is durable (as FLUSH would make it).
    fn write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes `len` zero bytes from `offset`; with `fua`, returns once they are durable.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Completes once every write acknowledged before it is durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// A hint that `offset..offset+len` will be read soon.
    fn cache(&self, _offset: u64, _len: u64) {}
}

/// Where the server listens: `HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug)]
pub enum Listen {
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
    /// A Unix socket at this path (an existing file there is replaced).
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.strip_prefix("unix:") {
            Some(p) => Listen::Unix(p.into()),
            None => Listen::Tcp(s.to_owned()),
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => f.write_str(a),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What one server lets its clients hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Clients served at once; more are closed as they connect.
    pub max_connections: usize,
    /// Time a client has from connecting to entering transmission.
    pub handshake_timeout: Duration,
    /// Time a client in transmission may send nothing before it is closed (`None`: no limit, as
    /// a mounted block device may idle for hours).
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// The most payload bytes a connection holds at once: READ and WRITE data moves in pieces of
/// this size, so memory is bounded by `max_connections` pieces whatever lengths clients send.
pub const PIECE: usize = 256 << 10;

/// A bound NBD listener serving one export.
pub struct NbdServer {
    listener: Listener,
    limits: Limits,
    /// Where clients connect, as an NBD URI base (`nbd://127.0.0.1:10809` or
    /// `nbd+unix:///?socket=PATH`), without the export name.
    pub uri_base: String,
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl NbdServer {
    /// Binds `listen`; no client is served until [`NbdServer::serve`].
    pub async fn bind(listen: &Listen) -> io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await?;
                let uri_base = format!("nbd://{}", l.local_addr()?);
                Ok(NbdServer {
                    listener: Listener::Tcp(l),
                    limits: Limits::default(),
                    uri_base,
                })
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = tokio::net::UnixListener::bind(path)?;
                Ok(NbdServer {
                    listener: Listener::Unix(l),
                    limits: Limits::default(),
                    uri_base: format!("nbd+unix://?socket={}", path.display()),
                })
            }
        }
    }

    /// Serves with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The URI of export `name` on this server.
    pub fn uri(&self, name: &str) -> String {
        match self.uri_base.split_once('?') {
            Some((base, q)) => format!("{base}/{name}?{q}"),
            None => format!("{}/{name}", self.uri_base),
        }
    }

    /// Serves `export` as `name` to every client until the task is dropped.
    pub async fn serve<E: Export>(self, name: String, export: Arc<E>) {
        let name: Arc<str> = name.into();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        let mut backoff = Backoff::default();
        let mut refused = Backoff::default();
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().await.map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    let (r, w) = s.into_split();
                    (
                        Box::new(r) as BoxRead,
                        Box::new(w) as BoxWrite,
                        a.to_string(),
                    )
                }),
                Listener::Unix(l) => l.accept().await.map(|(s, _)| {
                    let (r, w) = s.into_split();
                    (
                        Box::new(r) as BoxRead,
                        Box::new(w) as BoxWrite,
                        "unix".into(),
                    )
                }),
            };
            let (r, w, who) = match accepted {
                Ok(a) => {
                    backoff = Backoff::default();
                    a
                }
                Err(e) => {
                    // EMFILE and its kin: wait for descriptors to come back, ever longer.
                    let wait = backoff.next();
                    if backoff.should_log() {
                        warn!("nbd accept failed: {e}; retrying in {wait:?}");
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused.next();
                if refused.should_log() {
                    warn!(
                        "nbd client {who} refused: {} clients connected already (the limit)",
                        self.limits.max_connections
                    );
                }
                continue;
            };
            let (name, export, limits) = (name.clone(), export.clone(), self.limits.clone());
            tokio::spawn(async move {
                match serve_client(r, w, &name, &*export, &limits).await {
                    Ok(()) => debug!("nbd client {who} done"),
                    Err(e) => info!("nbd client {who} dropped: {e}"),
                }
                drop(slot);
            });
        }
    }
}

/// Exponential back-off from 10 ms to 1 s, with a log line at most every 10 s.
#[derive(Default)]
struct Backoff {
    wait: Duration,
    logged: Option<Instant>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.wait = (self.wait * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.wait
    }

    fn should_log(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            self.logged = Some(now);
        }
        due
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// One client: handshake, then transmission until DISC or disconnect.
pub async fn serve_client<E: Export>(
    r: impl AsyncRead + Unpin,
    w: impl AsyncWrite + Unpin,
    name: &str,
    export: &E,
    limits: &Limits,
) -> io::Result<()> {
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    let shake = tokio::time::timeout(
        limits.handshake_timeout,
        handshake(&mut r, &mut w, name, export),
    );
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
    if shake.await.map_err(|_| timed_out())?? {
        transmission(&mut r, &mut w, export, limits.idle_timeout).await?;
    }
    Ok(())
}

fn tflags<E: Export>(export: &E) -> u16 {
    let mut f = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_CACHE
        // Writes land in one shared store and FLUSH covers all of them, whichever connection
        // made them: the condition proto.md sets for CAN_MULTI_CONN.
        | TFLAG_CAN_MULTI_CONN;
    if export.read_only() {
        f |= TFLAG_READ_ONLY;
    }
    f
}

async fn reply(
    w: &mut (impl AsyncWrite + Unpin),
    option: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    w.write_u64(REPLY_MAGIC).await?;
    w.write_u32(option).await?;
    w.write_u32(kind).await?;
    w.write_u32(data.len() as u32).await?;
    w.write_all(data).await
}

/// Negotiates options until the client enters transmission (`true`) or leaves (`false`).
async fn handshake<E: Export>(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    name: &str,
    export: &E,
) -> io::Result<bool> {
    w.write_u64(NBDMAGIC).await?;
    w.write_u64(IHAVEOPT).await?;
    w.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    w.flush().await?;
    let client = r.read_u32().await?;
    if client & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(invalid("client flags we do not know"));
    }
    if client & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(invalid("client does not speak fixed newstyle"));
    }
    let no_zeroes = client & CLIENT_NO_ZEROES != 0;
    let mut data = Vec::new();
    loop {
        if r.read_u64().await? != IHAVEOPT {
            return Err(invalid("option without IHAVEOPT magic"));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                return Err(invalid("oversized EXPORT_NAME"));
            }
            tokio::io::copy(&mut r.take(len as u64), &mut tokio::io::sink()).await?;
            reply(w, option, REP_ERR_TOO_BIG, b"option too long").await?;
            w.flush().await?;
            continue;
        }
        data.resize(len as usize, 0);
        r.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                if data != name.as_bytes() && !data.is_empty() {
                    // proto.md: the only way to refuse EXPORT_NAME is to close.
                    return Err(invalid("EXPORT_NAME of an unknown export"));
                }
                w.write_u64(export.size()).await?;
                w.write_u16(tflags(export)).await?;
                if !no_zeroes {
                    w.write_all(&[0; 124]).await?;
                }
                w.flush().await?;
                return Ok(true);
            }
            OPT_ABORT => {
                reply(w, option, REP_ACK, &[]).await?;
                w.flush().await?;
                return Ok(false);
            }
            OPT_LIST => {
                if data.is_empty() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    reply(w, option, REP_SERVER, &d).await?;
                    reply(w, option, REP_ACK, &[]).await?;
                } else {
                    reply(w, option, REP_ERR_INVALID, b"LIST takes no data").await?;
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => reply(w, option, REP_ERR_INVALID, b"malformed request").await?,
                Some(req) if !req.name.is_empty() && req.name != name.as_bytes() => {
                    reply(w, option, REP_ERR_UNKNOWN, b"no such export").await?
                }
                Some(req) => {
                    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&export.size().to_be_bytes());
                    d.extend_from_slice(&tflags(export).to_be_bytes());
                    reply(w, option, REP_INFO, &d).await?;
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    d.extend_from_slice(&1u32.to_be_bytes());
                    d.extend_from_slice(&export.preferred_block().to_be_bytes());
                    d.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                    reply(w, option, REP_INFO, &d).await?;
                    if req.infos.contains(&INFO_NAME) {
                        let mut d = INFO_NAME.to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        reply(w, option, REP_INFO, &d).await?;
                    }
                    reply(w, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        w.flush().await?;
                        return Ok(true);
                    }
                }
            },
            OPT_STARTTLS => {
                reply(w, option, REP_ERR_POLICY, b"TLS is not offered").await?;
            }
            _ => reply(w, option, REP_ERR_UNSUP, b"option not supported").await?,
        }
        w.flush().await?;
    }
}

async fn simple_reply(
    w: &mut (impl AsyncWrite + Unpin),
    error: u32,
    cookie: u64,
) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&h).await
}

fn errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(code) if code == EPERM as i32 || code == ENOSPC as i32 => code as u32,
        _ if e.kind() == io::ErrorKind::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

async fn transmission<E: Export>(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    export: &E,
    idle_timeout: Option<Duration>,
) -> io::Result<()> {
    let mut buf = vec![0u8; PIECE];
    loop {
        let mut hb = [0u8; REQUEST_LEN];
        let next = r.read_exact(&mut hb);
        let read = match idle_timeout {
            Some(t) => tokio::time::timeout(t, next)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))?,
            None => next.await,
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let req = parse_request(&hb).ok_or_else(|| invalid("request without NBD magic"))?;
        let check = check_request(&req, export.size(), export.read_only());
        let fua = req.flags & CMD_FLAG_FUA != 0;
        if req.command == CMD_WRITE {
            // The payload follows whatever we make of it: take it in pieces (applied when the
            // request is valid, skipped when not), so the stream stays in step and nothing is
            // held for a length the client only claims.
            let result = match check {
                Ok(()) => write_pieces(r, export, &req, fua, &mut buf).await?,
                Err(e) => {
                    tokio::io::copy(&mut r.take(req.len as u64), &mut tokio::io::sink()).await?;
                    Err(e)
                }
            };
            reply_result(w, result, req.cookie).await?;
            continue;
        }
        if let Err(e) = check {
            reply_result(w, Err(e), req.cookie).await?;
            continue;
        }
        let result = match req.command {
            CMD_DISC => {
                w.flush().await?;
                return Ok(());
            }
            CMD_READ => {
                read_pieces(w, export, &req, &mut buf).await?;
                continue;
            }
            CMD_WRITE_ZEROES => export.write_zeroes(req.offset, req.len as u64, fua).await,
            // TRIM only says the range may be discarded; keeping the data is a valid answer.
            CMD_TRIM => Ok(()),
            CMD_FLUSH => export.flush().await,
            CMD_CACHE => {
                export.cache(req.offset, req.len as u64);
                Ok(())
            }
            _ => Err(io::ErrorKind::Unsupported.into()),
        };
        reply_result(w, result.map_err(|e| failed(&e)), req.cookie).await?;
    }
}

/// The errno for a failed request, logged.
fn failed(e: &io::Error) -> u32 {
    warn!("nbd request failed: {e}");
    errno(e)
}

async fn reply_result(
    w: &mut (impl AsyncWrite + Unpin),
    result: Result<(), u32>,
    cookie: u64,
) -> io::Result<()> {
    simple_reply(w, result.err().unwrap_or(0), cookie).await?;
    w.flush().await
}

/// Reads a valid WRITE's payload piece by piece and writes each; after a failed piece the rest
/// is read and dropped. The outer error is the connection's, the inner the request's errno.
async fn write_pieces<E: Export>(
    r: &mut (impl AsyncRead + Unpin),
    export: &E,
    req: &Request,
    fua: bool,
    buf: &mut [u8],
) -> io::Result<Result<(), u32>> {
    let len = req.len as usize;
    let mut result = Ok(());
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        r.read_exact(&mut buf[..n]).await?;
        if result.is_ok() {
            // FUA with the last piece: making it durable covers the pieces before it.
            let last = done + n == len;
            let offset = req.offset + done as u64;
            result = export
                .write(offset, &buf[..n], fua && last)
                .await
                .map_err(|e| failed(&e));
        }
        done += n;
    }
    Ok(result)
}

/// Answers a valid READ piece by piece. A failure before the first byte is an error reply; one
/// after it can only be told by closing the connection (proto.md, simple replies).
async fn read_pieces<E: Export>(
    w: &mut (impl AsyncWrite + Unpin),
    export: &E,
    req: &Request,
    buf: &mut [u8],
) -> io::Result<()> {
    let len = req.len as usize;
    if len > buf.len() {
        // Ask for the whole range at once (a lazy mount fetches it together).
        export.cache(req.offset, req.len as u64);
    }
    let mut done = 0;
    loop {
        let n = (len - done).min(buf.len());
        let offset = req.offset + done as u64;
        if let Err(e) = export.read(offset, &mut buf[..n]).await {
            if done == 0 {
                return reply_result(w, Err(failed(&e)), req.cookie).await;
            }
            return Err(io::Error::other(format!(
                "read failed after its reply began: {e}"
            )));
        }
        if done == 0 {
            simple_reply(w, 0, req.cookie).await?;
        }
        w.write_all(&buf[..n]).await?;
        done += n;
        if done >= len {
            break;
        }
    }
    w.flush().await
}
