//! QUIC transport (quinn): endpoints with pinned mutual TLS, the HELLO exchange on the control
//! stream, and framed reading and writing of protocol frames on a stream (spec/PROTOCOL.md §2).

use crate::net::identity::{Fingerprint, Identity, TrustSet};
use crate::net::tls::{client_config, server_config, PinnedVerifier};
use bytes::Bytes;
use memsync_protocol::wire::{
    feature, ErrorCode, Frame, Header, Negotiated, WireError, HEADER_LEN, MAX_BODY,
};
use memsync_protocol::Hello;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a connection could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reported as "TLS setup: {0}".
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// Reported as "QUIC setup: {0}".
    #[error("QUIC setup: {0}")]
    Quic(String),
    /// Reported as "cannot use {addr}: {source}".
    #[error("cannot use {addr}: {source}")]
    Bind {
        /// The peer's address.
        addr: SocketAddr,
        /// What failed underneath.
        source: std::io::Error,
    },
    /// Reported as "peer {addr} presented identity {fingerprint}, which is not trusted; if it is the peer you mean, pass --trust {fingerprint}".
    #[error("peer {addr} presented identity {fingerprint}, which is not trusted; if it is the peer you mean, pass --trust {fingerprint}")]
    Untrusted {
        /// The peer's address.
        addr: SocketAddr,
        /// The refused peer's fingerprint.
        fingerprint: Fingerprint,
    },
    /// Reported as "peer {addr} refused our identity {ours}; its operator must trust it (`peer serve --trust {ours}`)".
    #[error("peer {addr} refused our identity {ours}; its operator must trust it (`peer serve --trust {ours}`)")]
    RefusedByPeer {
        /// The peer's address.
        addr: SocketAddr,
        /// Our fingerprint, which the peer refused.
        ours: Fingerprint,
    },
    /// Reported as "cannot reach peer {addr}: {source}".
    #[error("cannot reach peer {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// What failed underneath.
        source: quinn::ConnectionError,
    },
    /// Reported as "connection lost: {0}".
    #[error("connection lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Failures of one region stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reported as "protocol error: {0}".
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// Reported as "peer closed the stream with {}: {reason}".
    #[error("peer closed the stream with {}: {reason}", ErrorCode::from_u32(*.code).map_or("an unknown error".to_owned(), |c| c.to_string()))]
    Peer {
        /// The error code (spec §7).
        code: u32,
        /// The reason given.
        reason: String,
    },
    /// Reported as "reading: {0}".
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Reported as "writing: {0}".
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reported as "stream ended in the middle of a frame".
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// Reported as "stream: {0}".
    #[error("stream: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// Reported as "connection: {0}".
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl StreamError {
    /// True when the connection (not just this stream) is gone, so reconnecting is the remedy.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            StreamError::Connection(_)
                | StreamError::Read(quinn::ReadExactError::ReadError(
                    quinn::ReadError::ConnectionLost(_)
                ))
                | StreamError::Write(quinn::WriteError::ConnectionLost(_))
        )
    }
}

/// Per-stream receive window: a 4 MiB chunk fits several times over, and a 30 ms path can still
/// carry about 1 GB/s. Lazy mounts need no smaller window: their urgent chunks travel on fetch
/// lanes (spec §8.7), not behind the region stream's backlog.
pub const STREAM_WINDOW: u32 = 32 << 20;

/// Largest UDP payload (IPv6), the upper bound of path MTU discovery.
const MAX_UDP_PAYLOAD: u16 = 65527;

/// Transport settings; `client` is the side that opens region streams, the only one that accepts
/// unidirectional streams (fetch lanes, one per region stream at most).
fn transport_config(client: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(128 << 20));
    t.send_window(128 << 20);
    t.max_concurrent_bidi_streams(VarInt::from_u32(
        memsync_protocol::wire::DEFAULT_MAX_REGIONS + 1,
    ));
    t.max_concurrent_uni_streams(VarInt::from_u32(if client {
        memsync_protocol::wire::DEFAULT_MAX_REGIONS
    } else {
        0
    }));
    // Path MTU discovery up to the largest UDP payload: Ethernet paths settle at ~1452 bytes as
    // before, while loopback and jumbo-frame paths carry a 64 KiB chunk in a few packets
    // instead of ~45 (fewer packets to seal, send, acknowledge and open).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        VarInt::from_u32(5_000).into(), // a dead peer is noticed within 5 s
    ));
    t
}

/// A bound QUIC endpoint with this peer's identity, able to connect and (if listening) accept.
/// Connections it opens are shared: one per peer, carrying every region and mount to it.
pub struct PeerEndpoint {
    /// The quinn endpoint.
    pub endpoint: Endpoint,
    verifier: Arc<PinnedVerifier>,
    ours: Fingerprint,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
}

impl PeerEndpoint {
    /// Binds `addr`; accepts incoming connections from trusted peers when `listen` is true.
    pub fn bind(
        addr: SocketAddr,
        id: &Identity,
        trust: TrustSet,
        listen: bool,
    ) -> Result<Self, TransportError> {
        let verifier = PinnedVerifier::new(trust);
        let client = QuicClientConfig::try_from(client_config(id, verifier.clone())?)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(Arc::new(transport_config(true)));
        let server = if listen {
            let s = QuicServerConfig::try_from(server_config(id, verifier.clone())?)
                .map_err(|e| TransportError::Quic(e.to_string()))?;
            let mut s = quinn::ServerConfig::with_crypto(Arc::new(s));
            s.transport_config(Arc::new(transport_config(false)));
            Some(s)
        } else {
            None
        };
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let mut endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(PeerEndpoint {
            endpoint,
            verifier,
            ours: id.fingerprint(),
            sessions: Mutex::default(),
        })
    }

    /// A listening endpoint on an ephemeral loopback port that trusts only `peer` (tests, benches,
    /// the demo).
    pub fn loopback(id: &Identity, peer: Fingerprint) -> Result<Self, TransportError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::bind(addr, id, TrustSet::new([peer]), true)
    }

    /// A client-only endpoint on an ephemeral port of the family of `peer`.
    pub fn client_for(
        peer: SocketAddr,
        id: &Identity,
        trust: TrustSet,
    ) -> Result<Self, TransportError> {
        let any: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        Self::bind(any, id, trust, false)
    }

    /// This peer's own fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.ours
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound socket")
    }

    /// The connection to the peer at `addr`: the live one if there is one (one connection per
    /// pair of peers, so a new mount finds its congestion window and path MTU already grown),
    /// else a new one (see [`PeerEndpoint::connect_new`]).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Session, TransportError> {
        if let Some(s) = self.sessions.lock().expect("sessions").get(&addr) {
            if s.conn.close_reason().is_none() {
                return Ok(s.clone());
            }
        }
        let s = self.connect_new(addr).await?;
        self.sessions
            .lock()
            .expect("sessions")
            .insert(addr, s.clone());
        Ok(s)
    }

    /// Opens a new connection to `addr` and runs the HELLO exchange, turning TLS refusals into
    /// messages that say which fingerprint to trust.
    async fn connect_new(&self, addr: SocketAddr) -> Result<Session, TransportError> {
        let connecting = self
            .endpoint
            .connect(addr, "memsync")
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let conn = match connecting.await {
            Ok(c) => c,
            Err(source) => return Err(self.explain(addr, source)),
        };
        // A server refuses a client certificate only after the client finished its side of the
        // handshake, so the refusal surfaces here, on the first use of the connection.
        let hello = async {
            let (mut send, recv) = conn.open_bi().await?;
            write_frame(&mut send, &Frame::Hello(Hello::default())).await?;
            let negotiated = read_hello(recv).await?;
            Ok::<_, StreamError>((send, negotiated))
        };
        match hello.await {
            Ok((send, negotiated)) => {
                let lanes = Arc::new(LaneRoutes::default());
                if negotiated.features & feature::FETCH_LANE != 0 {
                    tokio::spawn(route_lanes(conn.clone(), lanes.clone()));
                }
                Ok(Session {
                    conn,
                    negotiated,
                    lanes,
                    _control: Arc::new(send),
                })
            }
            Err(e) => match conn.close_reason() {
                Some(reason) => Err(self.explain(addr, reason)),
                None => Err(e.into()),
            },
        }
    }

    /// Completes an incoming connection (TLS, then HELLO). Run one per connection so a slow
    /// handshake never holds up the accept loop.
    pub async fn accept(incoming: quinn::Incoming) -> Result<Session, TransportError> {
        let conn = incoming.await?;
        let (mut send, recv) = conn.accept_bi().await?;
        let negotiated = read_hello(recv).await?;
        write_frame(&mut send, &Frame::Hello(Hello::default())).await?;
        Ok(Session {
            conn,
            negotiated,
            lanes: Arc::default(),
            _control: Arc::new(send),
        })
    }

    fn explain(&self, addr: SocketAddr, source: quinn::ConnectionError) -> TransportError {
        if let Some(fingerprint) = self.verifier.refused.lock().expect("lock").take() {
            return TransportError::Untrusted { addr, fingerprint };
        }
        // TLS alerts travel as CRYPTO_ERROR codes 0x100 + alert (RFC 9001 §4.8); a refusal of
        // our certificate arrives as one of them, closing the connection from the peer's side.
        let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
        let refused = match &source {
            quinn::ConnectionError::TransportError(t) => crypto(t.code),
            quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
            _ => false,
        };
        if refused {
            return TransportError::RefusedByPeer {
                addr,
                ours: self.ours,
            };
        }
        TransportError::Connect { addr, source }
    }
}

async fn read_hello(recv: RecvStream) -> Result<Negotiated, StreamError> {
    let mut reader = FrameReader::new(recv, memsync_protocol::wire::MIN_MAX_BODY);
    match reader.next().await? {
        Some(Frame::Hello(theirs)) => Ok(Hello::default().negotiate(&theirs)?),
        Some(Frame::Error { code, reason }) => Err(StreamError::Peer {
            code,
            reason: reason.to_owned(),
        }),
        _ => Err(WireError::new(
            ErrorCode::ProtocolViolation,
            "the control stream must start with HELLO",
        )
        .into()),
    }
}

/// An established, authenticated connection with its negotiated limits. Clones share it;
/// dropping the last finishes the control stream.
#[derive(Clone)]
pub struct Session {
    /// The QUIC connection.
    pub conn: Connection,
    /// What the two HELLOs agreed on (spec §5.1).
    pub negotiated: Negotiated,
    lanes: Arc<LaneRoutes>,
    _control: Arc<SendStream>,
}

/// Fetch lanes (spec §8.7) expected on a connection, by the ID of the region stream they serve.
#[derive(Default)]
struct LaneRoutes {
    waiting: Mutex<HashMap<u64, oneshot::Sender<FrameReader>>>,
}

/// Where the fetch lane of one region stream arrives. Dropping it stops expecting one.
pub struct LaneWait {
    rx: Option<oneshot::Receiver<FrameReader>>,
    routes: Arc<LaneRoutes>,
    stream: u64,
}

impl LaneWait {
    /// The lane, once the owner opened it (its LANE frame already read and checked); pending
    /// forever after it was delivered or can no longer come.
    pub async fn arrived(&mut self) -> FrameReader {
        match self.rx.as_mut() {
            Some(rx) => match rx.await {
                Ok(lane) => {
                    self.rx = None;
                    lane
                }
                Err(_) => {
                    self.rx = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for LaneWait {
    fn drop(&mut self) {
        self.routes
            .waiting
            .lock()
            .expect("lane routes")
            .remove(&self.stream);
    }
}

/// Body length of a LANE frame (spec §5.16).
const LANE_BODY_LEN: u32 = 8;

/// Accepts the unidirectional streams of a connection this peer opened: each must be a fetch
/// lane whose LANE frame names a region stream waiting for one; anything else is stopped.
async fn route_lanes(conn: Connection, routes: Arc<LaneRoutes>) {
    while let Ok(recv) = conn.accept_uni().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            // The first frame is read with the LANE body's size as the limit, so a stream that
            // starts otherwise is refused before a body buffer is made for it.
            let mut first = FrameReader::new(recv, LANE_BODY_LEN);
            let stream = match first.next().await {
                Ok(Some(Frame::Lane { stream })) => Some(stream),
                _ => None,
            };
            let to = stream.and_then(|s| routes.waiting.lock().expect("lane routes").remove(&s));
            match to {
                Some(to) => {
                    let lane = first.with_max_body(MAX_BODY);
                    if let Err(mut lane) = to.send(lane) {
                        lane.stop(ErrorCode::Shutdown);
                    }
                }
                None => first.stop(ErrorCode::ProtocolViolation),
            }
        });
    }
}

impl Session {
    /// Expects the fetch lane of region stream `stream` (call before asking for anything on it).
    pub fn lane_for(&self, stream: u64) -> LaneWait {
        let (tx, rx) = oneshot::channel();
        self.lanes
            .waiting
            .lock()
            .expect("lane routes")
            .insert(stream, tx);
        LaneWait {
            rx: Some(rx),
            routes: self.lanes.clone(),
            stream,
        }
    }

    /// The peer's fingerprint as verified during the handshake.
    pub fn peer_fingerprint(&self) -> Option<Fingerprint> {
        let certs = self
            .conn
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        certs.first().map(|c| Fingerprint::of(c))
    }
}

/// Reads whole frames from a stream; a body is never read before its header's length passed the
/// limit check. It takes what quinn has received a batch of segments at a time (`read_chunks`,
/// one lock of the connection for many packets' worth) and copies each body once, into a buffer
/// it reuses. [`FrameReader::next`] is cancel-safe: what was read stays in the reader, so it can
/// sit in a `select!` beside other events.
pub struct FrameReader {
    recv: RecvStream,
    /// Bytes received and not yet returned in a frame, in stream order.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Where `read_chunks` puts the segments it takes.
    slots: Vec<Bytes>,
    buf: Vec<u8>,
    max_body: u32,
    /// The stream's read error, kept: quinn reads a reset stream as finished after reporting it
    /// once, and a reset must not pass for a clean end.
    failed: Option<quinn::ReadError>,
}

/// Segments taken from quinn per read (each what one packet carried, or what quinn merged).
const READ_SEGMENTS: usize = 32;

impl FrameReader {
    /// Reads frames from `recv`, refusing bodies over `max_body` bytes before reading them.
    pub fn new(recv: RecvStream, max_body: u32) -> Self {
        FrameReader {
            recv,
            queue: VecDeque::new(),
            queued: 0,
            slots: vec![Bytes::new(); READ_SEGMENTS],
            buf: Vec::new(),
            max_body,
            failed: None,
        }
    }

    /// The same stream, with what was read past the last frame, and a new body limit.
    pub fn with_max_body(mut self, max_body: u32) -> Self {
        self.max_body = max_body;
        self
    }

    /// The next frame, or `None` when the peer finished the stream between frames.
    pub async fn next(&mut self) -> Result<Option<Frame<'_>>, StreamError> {
        let Some(header) = self.whole_frame().await? else {
            return Ok(None);
        };
        self.consume(HEADER_LEN, None);
        let mut body = std::mem::take(&mut self.buf);
        body.resize(header.len as usize, 0);
        self.consume(body.len(), Some(&mut body));
        self.buf = body;
        Ok(Some(Frame::decode_body(header, &self.buf)?))
    }

    /// Waits until a whole frame (or the stream's end) is here, without taking it: after it, the
    /// next [`FrameReader::next`] does not wait. Cancel-safe.
    pub async fn ready(&mut self) -> Result<(), StreamError> {
        self.whole_frame().await.map(drop)
    }

    /// Reads until a whole frame is queued and returns its header, or `None` at the stream's end
    /// between frames.
    async fn whole_frame(&mut self) -> Result<Option<Header>, StreamError> {
        if !self.fill(HEADER_LEN).await? {
            return match self.queued {
                0 => Ok(None),
                _ => Err(StreamError::Truncated),
            };
        }
        let mut h = [0u8; HEADER_LEN];
        self.peek(&mut h);
        let header = Header::parse(&h, self.max_body)?;
        if !self.fill(HEADER_LEN + header.len as usize).await? {
            return Err(StreamError::Truncated);
        }
        Ok(Some(header))
    }

    /// Reads until `want` bytes are queued; false if the stream ended first.
    async fn fill(&mut self, want: usize) -> Result<bool, StreamError> {
        let failed = |e| StreamError::Read(quinn::ReadExactError::ReadError(e));
        while self.queued < want {
            if let Some(e) = &self.failed {
                return Err(failed(e.clone()));
            }
            let read = self.recv.read_chunks(&mut self.slots).await;
            match read
                .inspect_err(|e| self.failed = Some(e.clone()))
                .map_err(failed)?
            {
                None => return Ok(false),
                Some(n) => {
                    for b in &mut self.slots[..n] {
                        self.queued += b.len();
                        self.queue.push_back(std::mem::take(b));
                    }
                }
            }
        }
        Ok(true)
    }

    /// Copies the first `out.len()` queued bytes (there are that many) into `out`.
    fn peek(&self, out: &mut [u8]) {
        let mut at = 0;
        for b in &self.queue {
            let n = b.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&b[..n]);
            at += n;
            if at == out.len() {
                break;
            }
        }
    }

    /// Takes `n` queued bytes (there are that many), copying them into `out` if given.
    fn consume(&mut self, n: usize, mut out: Option<&mut Vec<u8>>) {
        let mut at = 0;
        while at < n {
            let front = self.queue.front_mut().expect("that many bytes are queued");
            let k = front.len().min(n - at);
            if let Some(out) = &mut out {
                out[at..at + k].copy_from_slice(&front[..k]);
            }
            bytes::Buf::advance(front, k);
            if front.is_empty() {
                self.queue.pop_front();
            }
            at += k;
        }
        self.queued -= n;
    }

    /// The stream, to stop it. What was read past the last frame is dropped with the reader.
    pub fn into_inner(self) -> RecvStream {
        self.recv
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(VarInt::from_u32(code as u32));
    }
}

/// Encodes `frame` and writes it to `send`.
pub async fn write_frame(send: &mut SendStream, frame: &Frame<'_>) -> Result<(), StreamError> {
    send.write_all(&frame.to_vec()).await?;
    Ok(())
}

/// Reports `err` to the peer on this stream (ERROR frame, then a reset with its code) and stops
/// reading. Best effort: the stream may already be gone.
pub async fn fail_stream(send: &mut SendStream, reader: &mut FrameReader, err: &WireError) {
    let frame = Frame::Error {
        code: err.code as u32,
        reason: &err.reason,
    };
    let _ = send.write_all(&frame.to_vec()).await;
    let _ = send.finish();
    reader.stop(err.code);
}
