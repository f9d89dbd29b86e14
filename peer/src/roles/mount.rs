//! Lazy mounts: a replica of a remote region that can be read before it holds the data. The
//! driver speaks the lazy-replica role (MOUNT, then STATE with the LAZY flag) on one stream; the
//! remote peer pushes every chunk in the background while reads that miss send urgent FETCHes that
//! overtake it. Their answers come first on the fetch lane the owner opens (spec §8.7), so they
//! never wait behind the stream's backlog. Chunks land in a [`ChunkSink`] (a memory buffer for
//! NBD, UFFDIO_COPY for uffd).

use crate::net::transport::{FrameReader, LaneWait, PeerEndpoint, StreamError, TransportError};
use crate::ops::metrics::{RegionMetrics, Role};
use crate::store::format::Manifest;
use crate::store::RegionStore;
use memsync_protocol::wire::{feature, ErrorCode, MAX_BODY};
use memsync_protocol::{
    DirtySet, Frame, Geometry, LaneEvent, Local, Replica, ReplicaEvent, WireError,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Why a mount failed, or a read of it cannot be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MountError {
    /// Reported as "mounting {name} from {addr}: {reason}".
    #[error("mounting {name} from {addr}: {reason}")]
    Connect {
        /// The name concerned.
        name: String,
        /// The peer's address.
        addr: SocketAddr,
        /// The reason given.
        reason: String,
    },
    /// Reported as "mount of {name} failed: {reason}".
    #[error("mount of {name} failed: {reason}")]
    Failed {
        /// The region's name.
        name: String,
        /// The reason given.
        reason: String,
    },
}

/// Where a mounted region's chunks land as they arrive.
pub trait ChunkSink: Send + Sync + 'static {
    /// Stores chunk `index`: `data`, or zeros when `None`. Called in stream order, once per
    /// arrival (a chunk may arrive again when the owner changes it).
    fn write_chunk(&self, index: u64, data: Option<&[u8]>);

    /// Bytes `offset .. offset + len` of chunk `index` (`data`, or zeros when `None`) came
    /// ahead of their chunk, for a reader of them ([`RemoteRegion::fetch_urgent_part`]); the
    /// chunk follows. Sinks that serve only whole chunks ignore them.
    fn write_part(&self, _index: u64, _offset: u32, _len: u32, _data: Option<&[u8]>) {}
}

/// A chunk sink that is plain memory: a `Vec` behind a lock, readable by chunk.
pub struct MemorySink {
    geom: Geometry,
    bytes: Mutex<Vec<u8>>,
}

impl MemorySink {
    /// Zeroed memory for a region of `geom`.
    pub fn new(geom: Geometry) -> Self {
        MemorySink {
            geom,
            bytes: Mutex::new(vec![0; geom.size() as usize]),
        }
    }

    /// Copies `out.len()` bytes at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) {
        let b = self.bytes.lock().expect("sink lock");
        out.copy_from_slice(&b[offset as usize..offset as usize + out.len()]);
    }
}

impl ChunkSink for MemorySink {
    fn write_chunk(&self, index: u64, data: Option<&[u8]>) {
        let mut b = self.bytes.lock().expect("sink lock");
        let dst = &mut b[self.geom.range(index)];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
    }
}

/// Builds a mount's sink once the region's geometry is known.
pub type SinkFactory = Box<dyn FnOnce(Geometry) -> Arc<dyn ChunkSink> + Send>;

/// State shared by a mount's handle and its driver task.
struct Shared {
    present: Mutex<Presence>,
    /// Valid chunk copies received on the fetch lane (shown to readers or, when the region
    /// stream's copy came first, discarded).
    lane_copies: AtomicU64,
    /// Valid parts received on the fetch lane (shown to readers, or discarded as for copies).
    lane_parts: AtomicU64,
    failure: Mutex<Option<String>>,
    /// The mount's figures (missing chunks, fetch latency), for `--metrics` and `peer status`.
    metrics: RegionMetrics,
}

/// Which chunks have arrived, and who waits for which: an arrival wakes only the tasks waiting
/// for that chunk (the background pull lands thousands of chunks a second, and a broadcast to
/// every waiter on each one was a wake-up per chunk per waiter).
struct Presence {
    chunks: DirtySet,
    /// Chunks not yet here.
    missing: u64,
    waiting: HashMap<u64, Vec<Waker>>,
    /// Chunks that cannot arrive, and why (an object that failed its check): reads of them fail,
    /// the others go on.
    bad: HashMap<u64, String>,
}

impl Presence {
    fn arrived(&mut self, index: u64) {
        if !self.chunks.contains(index) {
            self.missing = self.missing.saturating_sub(1);
        }
        self.chunks.insert(index);
        for w in self.waiting.remove(&index).unwrap_or_default() {
            w.wake();
        }
    }

    /// Wakes every waiter (the mount failed).
    fn wake_all(&mut self) {
        for w in self.waiting.drain().flat_map(|(_, v)| v) {
            w.wake();
        }
    }
}

impl Shared {
    fn new(name: &str, chunks: u64) -> Arc<Shared> {
        Arc::new(Shared {
            present: Mutex::new(Presence {
                chunks: DirtySet::new(chunks),
                missing: chunks,
                waiting: HashMap::new(),
                bad: HashMap::new(),
            }),
            lane_copies: AtomicU64::new(0),
            lane_parts: AtomicU64::new(0),
            failure: Mutex::new(None),
            metrics: RegionMetrics::new(name, Role::Mount),
        })
    }

    /// Chunk `index` will not arrive: the reads that need it fail with `why`.
    fn chunk_failed(&self, index: u64, why: String) {
        warn!("mount: {why}");
        let mut p = self.present.lock().expect("lock");
        p.bad.insert(index, why);
        p.wake_all();
    }

    /// Chunk `index` arrived: it is present from now on, and its waiters wake.
    fn arrived(&self, index: u64) {
        let mut p = self.present.lock().expect("lock");
        let before = p.missing;
        p.arrived(index);
        let missing = p.missing;
        drop(p);
        if missing != before {
            self.metrics.lazy_missing(missing);
            if missing == 0 {
                self.metrics.set_state("complete: every chunk here");
            }
        }
    }
}

/// What a mount's handle asks its driver to fetch.
enum Request {
    /// Chunks, urgently (a reader waits) or ahead of the background order.
    Chunks { range: Range<u64>, urgent: bool },
    /// Chunk `index` urgently, for a reader of bytes `offset .. offset + len` of it.
    Part { index: u64, offset: u32, len: u32 },
}

/// Where a lazy mount's chunks come from.
pub enum Origin<'a> {
    /// Region `name` at the `peer serve` at `addr`, over QUIC.
    Peer {
        /// This peer's endpoint.
        ep: &'a PeerEndpoint,
        /// The peer's address.
        addr: SocketAddr,
        /// The region's name there.
        name: &'a str,
    },
    /// One generation of a region in an object store.
    Store {
        /// The region's store.
        store: Arc<RegionStore>,
        /// The generation's manifest.
        manifest: Manifest,
        /// How its chunks are fetched.
        pull: StorePull,
    },
}

/// How a mount fetches a generation's chunks from an object store.
#[derive(Clone, Copy, Debug)]
pub struct StorePull {
    /// GETs in flight at once.
    pub parallel: usize,
    /// Every chunk is fetched in the background, those that readers wait for first; otherwise
    /// only those, and after a read that follows the previous one, the `parallel` chunks after it
    /// (read-ahead).
    pub background: bool,
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Peer { addr, name, .. } => write!(f, "{name} at {addr}"),
            Origin::Store {
                store, manifest, ..
            } => write!(f, "{}@{}", store.url().region(), manifest.generation),
        }
    }
}

/// A lazy replica of region `name` held by the peer at `addr`.
pub struct RemoteRegion {
    name: String,
    geom: Geometry,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteRegion {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RemoteRegion {
    /// Connects, asks for `name` and returns once the owner described the region; chunks then
    /// flow into `sink` in the background.
    pub async fn mount(
        ep: &PeerEndpoint,
        addr: SocketAddr,
        name: &str,
        sink: Arc<dyn ChunkSink>,
    ) -> Result<RemoteRegion, MountError> {
        Self::mount_with(ep, addr, name, Box::new(move |_| sink)).await
    }

    /// Like [`RemoteRegion::mount`], for sinks that need the region's geometry: `make_sink` is
    /// called once the owner described the region, before any chunk arrives.
    pub async fn mount_with(
        ep: &PeerEndpoint,
        addr: SocketAddr,
        name: &str,
        make_sink: SinkFactory,
    ) -> Result<RemoteRegion, MountError> {
        let connect_err = |reason: String| MountError::Connect {
            name: name.to_owned(),
            addr,
            reason,
        };
        let replica = Replica::mount(name).map_err(|e| connect_err(e.to_string()))?;
        let session = ep
            .connect(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (send, recv) = session
            .conn
            .open_bi()
            .await
            .map_err(|e| connect_err(TransportError::Lost(e).to_string()))?;
        // Expected before MOUNT goes out, so the lane cannot arrive unannounced.
        let lane_wait = session.lane_for(send.id().into());
        let want = feature::FETCH_LANE | feature::FETCH_PARTS;
        let parts = session.negotiated.features & want == want;
        let (opened_tx, opened_rx) = oneshot::channel();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let shared = Shared::new(name, 0);
        shared.metrics.set_peer(addr.to_string());
        shared.metrics.set_state("opening");
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let reader = FrameReader::new(recv, MAX_BODY);
                let mut d = Driver {
                    replica,
                    send,
                    lane_wait,
                    lane: None,
                    parts,
                    shared: shared.clone(),
                    sink: None,
                    make_sink: Some(make_sink),
                    opened: Some(opened_tx),
                };
                let res = d.run(reader, req_rx).await;
                let reason = match res {
                    Ok(()) => "the owner closed the mount".to_owned(),
                    Err(e) => e.to_string(),
                };
                warn!("mount ended: {reason}");
                shared.metrics.set_state(&format!("failed: {reason}"));
                *shared.failure.lock().expect("lock") = Some(reason);
                shared.present.lock().expect("lock").wake_all();
                drop(session);
            })
        };
        let geom = opened_rx.await.map_err(|_| {
            connect_err(
                shared
                    .failure
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or_else(|| "the stream closed".into()),
            )
        })?;
        Ok(RemoteRegion {
            name: name.to_owned(),
            geom,
            shared,
            requests: req_tx,
            task,
        })
    }

    /// Mounts the region `origin` names; chunks land in the sink `make_sink` builds once the
    /// region's geometry is known.
    pub async fn open(
        origin: Origin<'_>,
        make_sink: SinkFactory,
    ) -> Result<RemoteRegion, MountError> {
        match origin {
            Origin::Peer { ep, addr, name } => Self::mount_with(ep, addr, name, make_sink).await,
            Origin::Store {
                store,
                manifest,
                pull,
            } => Ok(Self::from_store(store, manifest, make_sink, pull)),
        }
    }

    /// A lazy mount of one generation of a region in an object store (spec/STORAGE.md), its
    /// chunks fetched as `pull` says. Each object is checked against its name; one that fails the
    /// check fails only the reads that need its chunk.
    pub fn from_store(
        store: Arc<RegionStore>,
        manifest: Manifest,
        make_sink: SinkFactory,
        pull: StorePull,
    ) -> RemoteRegion {
        let geom = manifest.geometry;
        let name = manifest.name.clone();
        let n = geom.chunk_count();
        let shared = Shared::new(&name, n);
        shared.metrics.set_peer(store.url().region());
        shared.metrics.lazy(n, n);
        shared.metrics.set_state(match pull.background {
            true => "lazy: pulling in the background",
            false => "lazy: fetching what is read",
        });
        let sink = make_sink(geom);
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pull_from_store(
            store,
            Arc::new(manifest),
            sink,
            shared.clone(),
            rx,
            pull,
        ));
        RemoteRegion {
            name,
            geom,
            shared,
            requests,
            task,
        }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geom
    }

    /// Whether chunk `index` has arrived.
    pub fn is_present(&self, index: u64) -> bool {
        self.shared
            .present
            .lock()
            .expect("lock")
            .chunks
            .contains(index)
    }

    /// Valid chunk copies received on the fetch lane, whether shown to readers or discarded
    /// because the region stream's copy came first.
    pub fn lane_copies(&self) -> u64 {
        self.shared.lane_copies.load(Relaxed)
    }

    /// Valid parts received on the fetch lane, shown to readers or discarded
    /// ([`RemoteRegion::fetch_urgent_part`]).
    pub fn lane_parts(&self) -> u64 {
        self.shared.lane_parts.load(Relaxed)
    }

    /// Chunks not yet arrived.
    pub fn missing(&self) -> u64 {
        self.geom.chunk_count() - self.shared.present.lock().expect("lock").chunks.count()
    }

    fn failed(&self) -> Option<MountError> {
        self.shared
            .failure
            .lock()
            .expect("lock")
            .clone()
            .map(|reason| MountError::Failed {
                name: self.name.clone(),
                reason,
            })
    }

    /// Fetches the chunks in `range` urgently; returns once all are in the sink, or an error if
    /// the mount failed (the owner went away) first.
    pub async fn ensure(&self, range: Range<u64>) -> Result<(), MountError> {
        self.wait(range, false).await
    }

    /// Asks for the chunks in `range` urgently, without waiting: callable from any thread (a
    /// fault handler asks at once, then waits with [`RemoteRegion::arrival`]).
    pub fn fetch_urgent(&self, range: Range<u64>) {
        let _ = self.requests.send(Request::Chunks {
            range,
            urgent: true,
        });
    }

    /// Asks for chunk `index` urgently for a reader of its bytes `offset .. offset + len`, which
    /// the owner sends first when it can (FETCH_PART, spec §8.7); they reach the sink's
    /// [`ChunkSink::write_part`] before the chunk arrives. Callable from any thread. Where the
    /// peer does not take parts this is [`RemoteRegion::fetch_urgent`] of the chunk.
    pub fn fetch_urgent_part(&self, index: u64, offset: u32, len: u32) {
        let _ = self.requests.send(Request::Part { index, offset, len });
    }

    /// Returns once every chunk in `range` is in the sink (asked for by someone else), or an
    /// error if the mount failed first.
    pub async fn arrival(&self, range: Range<u64>) -> Result<(), MountError> {
        self.wait(range, true).await
    }

    async fn wait(&self, range: Range<u64>, mut asked: bool) -> Result<(), MountError> {
        let range = range.start..range.end.min(self.geom.chunk_count());
        // Chunks before `next` have arrived (chunks never leave).
        let mut next = range.start;
        let mut blocked: Option<std::time::Instant> = None;
        std::future::poll_fn(|cx| {
            // The driver records a failure, then wakes every waiter under the presence lock:
            // looking for it under that lock, before registering, never misses the wake-up.
            let mut p = self.shared.present.lock().expect("lock");
            while next < range.end && p.chunks.contains(next) {
                next += 1;
            }
            if next == range.end {
                if let Some(t) = blocked {
                    self.shared.metrics.fetched(t.elapsed());
                }
                return Poll::Ready(Ok(()));
            }
            blocked.get_or_insert_with(std::time::Instant::now);
            if let Some(e) = self.failed() {
                return Poll::Ready(Err(e));
            }
            if let Some(why) = (next..range.end).find_map(|i| p.bad.get(&i)) {
                return Poll::Ready(Err(MountError::Failed {
                    name: self.name.clone(),
                    reason: why.clone(),
                }));
            }
            if !asked {
                asked = true;
                self.fetch_urgent(next..range.end);
            }
            // Wait for the last chunk still missing: chunks mostly arrive in order, so one
            // wake-up covers the whole range.
            let last = (next..range.end)
                .rev()
                .find(|&i| !p.chunks.contains(i))
                .expect("`next` is missing");
            let w = p.waiting.entry(last).or_default();
            if !w.iter().any(|w| w.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Asks for `range` ahead of the background order (read-ahead, user priorities).
    pub fn prefetch(&self, range: Range<u64>) {
        let _ = self.requests.send(Request::Chunks {
            range,
            urgent: false,
        });
    }

    /// Resolves once every chunk is present. Asks for nothing: the owner pushes every chunk,
    /// and asking would make each one urgent (sent twice, on the lane and the stream).
    pub async fn complete(&self) -> Result<(), MountError> {
        self.arrival(0..self.geom.chunk_count()).await
    }
}

/// The mount's stream: frames in, sink writes and FETCHes out.
struct Driver {
    replica: Replica,
    send: quinn::SendStream,
    /// Where the owner's fetch lane arrives, then the lane (its LANE frame already checked).
    /// One lane per mount: a second is never taken (spec §8.7).
    lane_wait: LaneWait,
    lane: Option<FrameReader>,
    /// The peer takes FETCH_PART (FETCH_LANE and FETCH_PARTS negotiated).
    parts: bool,
    shared: Arc<Shared>,
    sink: Option<Arc<dyn ChunkSink>>,
    make_sink: Option<SinkFactory>,
    opened: Option<oneshot::Sender<Geometry>>,
}

impl Driver {
    async fn run(
        &mut self,
        mut reader: FrameReader,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) -> Result<(), StreamError> {
        self.flush().await?;
        loop {
            tokio::select! {
                biased;
                req = requests.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    self.fetch(req);
                    while let Ok(req) = requests.try_recv() {
                        self.fetch(req);
                    }
                }
                frame = next_on_lane(&mut self.lane) => {
                    let ended = match frame {
                        Ok(Some(frame)) => match on_lane_frame(
                            &mut self.replica,
                            self.sink.as_deref(),
                            &self.shared,
                            &frame,
                        ) {
                            Ok(()) => None,
                            Err(e) => {
                                warn!("mount: fetch lane refused: {e}");
                                Some(e.code)
                            }
                        },
                        Ok(None) => Some(ErrorCode::Shutdown),
                        Err(e) => {
                            debug!("mount: fetch lane ended: {e}");
                            Some(ErrorCode::Shutdown)
                        }
                    };
                    if let Some(code) = ended {
                        if let Some(mut lane) = self.lane.take() {
                            lane.stop(code);
                        }
                    }
                }
                lane = self.lane_wait.arrived() => self.lane = Some(lane),
                frame = reader.next() => {
                    let Some(frame) = frame? else { return Ok(()) };
                    self.on_region_frame(&frame)?;
                    // Frames already received are handled without another trip through the
                    // select above, unless a request is waiting.
                    for _ in 0..DRAIN_FRAMES {
                        if !requests.is_empty() {
                            break;
                        }
                        let next = reader.next();
                        tokio::pin!(next);
                        let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx)));
                        match polled.await {
                            Poll::Ready(frame) => {
                                let Some(frame) = frame? else { return Ok(()) };
                                self.on_region_frame(&frame)?;
                            }
                            Poll::Pending => break,
                        }
                    }
                }
            }
            self.flush().await?;
        }
    }

    /// Handles a frame from the region stream.
    fn on_region_frame(&mut self, frame: &Frame<'_>) -> Result<(), StreamError> {
        match self.replica.handle(frame)? {
            ReplicaEvent::Opened { geometry, .. } => {
                let n = geometry.chunk_count();
                {
                    let mut p = self.shared.present.lock().expect("lock");
                    p.chunks = DirtySet::new(n);
                    p.missing = n;
                }
                self.shared.metrics.lazy(n, n);
                self.shared
                    .metrics
                    .set_state("lazy: pulling in the background");
                if let Some(make) = self.make_sink.take() {
                    self.sink = Some(make(geometry));
                }
                self.replica.local_state(Local::Lazy)?;
                if let Some(tx) = self.opened.take() {
                    let _ = tx.send(geometry);
                }
            }
            ReplicaEvent::Write { index, data } => {
                if let Some(sink) = &self.sink {
                    sink.write_chunk(index, data);
                }
                self.shared.arrived(index);
            }
            ReplicaEvent::Committed { generation } => {
                debug!("mount: generation {generation} complete");
            }
            ReplicaEvent::PeerError { code, reason } => {
                return Err(StreamError::Peer {
                    code,
                    reason: reason.to_owned(),
                });
            }
            ReplicaEvent::BecameOwner { .. } => {
                return Err(WireError::new(
                    ErrorCode::ProtocolViolation,
                    "a mount does not take ownership",
                )
                .into());
            }
            ReplicaEvent::None => {}
        }
        Ok(())
    }

    fn fetch(&mut self, req: Request) {
        let Some(n) = self.replica.geometry().map(|g| g.chunk_count()) else {
            return;
        };
        let (range, urgent) = match req {
            Request::Part { index, offset, len } if self.parts => {
                self.replica.fetch_part(index, offset, len);
                return;
            }
            Request::Part { index, .. } => (index..index.saturating_add(1), true),
            Request::Chunks { range, urgent } => (range, urgent),
        };
        let end = range.end.min(n);
        let mut first = range.start;
        while first < end {
            let count = (end - first).min(u32::MAX as u64) as u32;
            self.replica.fetch(first, count, urgent);
            first += count as u64;
        }
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        while let Some(f) = self.replica.poll_transmit() {
            self.send.write_all(&f).await?;
        }
        Ok(())
    }
}

/// Pulls every chunk of `manifest` from `store` into `sink`, at most `parallel` GETs at a time,
/// the chunks readers asked for first; zero chunks are never fetched.
async fn pull_from_store(
    store: Arc<RegionStore>,
    manifest: Arc<Manifest>,
    sink: Arc<dyn ChunkSink>,
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    pull: StorePull,
) {
    let n = manifest.geometry.chunk_count();
    let parallel = pull.parallel.max(1);
    // Chunks fetched, being fetched, or zeros.
    let mut taken = DirtySet::new(n);
    let mut asked: std::collections::VecDeque<u64> = Default::default();
    // The next chunk of the background pull (none without one).
    let mut next = if pull.background { 0 } else { n };
    // Where the last read waited for (with its read-ahead) ended: a read starting there is
    // sequential.
    let mut last_end = u64::MAX;
    let mut gets = tokio::task::JoinSet::new();
    let mut reported = !pull.background;
    loop {
        if !reported && next == n && gets.is_empty() {
            reported = true;
            if let Some(cache) = store.cache() {
                let (hits, misses) = cache.counts();
                tracing::info!(
                    "{}@{}: every chunk fetched, {hits} from the local cache {} and {misses} \
                     from the store",
                    store.url().region(),
                    manifest.generation,
                    cache.dir().display()
                );
            }
        }
        while gets.len() < parallel {
            let index = match asked.pop_front() {
                Some(i) if taken.contains(i) => continue,
                Some(i) => i,
                None => {
                    while next < n && taken.contains(next) {
                        next += 1;
                    }
                    if next == n {
                        break;
                    }
                    next
                }
            };
            taken.insert(index);
            if manifest.chunks[index as usize] == crate::store::format::ZERO {
                sink.write_chunk(index, None);
                shared.arrived(index);
                continue;
            }
            let (store, manifest) = (store.clone(), manifest.clone());
            gets.spawn(async move { (index, store.chunk(&manifest, index).await) });
        }
        tokio::select! {
            req = requests.recv() => {
                let (range, urgent) = match req {
                    None => return,
                    Some(Request::Chunks { range, urgent }) => (range, urgent),
                    Some(Request::Part { index, .. }) => (index..index.saturating_add(1), true),
                };
                let mut end = range.end.min(n);
                if urgent && !pull.background {
                    // Reads of chunks already here ask for nothing, so a read that starts where
                    // the last read-ahead ended is sequential too.
                    if range.start == last_end {
                        end = end.saturating_add(parallel as u64).min(n);
                    }
                    last_end = end;
                }
                asked.extend((range.start..end).filter(|&i| !taken.contains(i)));
            }
            Some(done) = gets.join_next() => match done {
                Ok((index, Ok(data))) => {
                    sink.write_chunk(index, data.as_deref());
                    shared.arrived(index);
                }
                Ok((index, Err(e))) => shared.chunk_failed(index, e.to_string()),
                Err(e) => {
                    *shared.failure.lock().expect("lock") = Some(format!("a fetch failed: {e}"));
                    shared.present.lock().expect("lock").wake_all();
                    return;
                }
            },
        }
    }
}

/// Most frames handled per wake-up of the mount's task before it looks at the fetch lane
/// again (requests are checked between frames).
const DRAIN_FRAMES: usize = 64;

/// The next frame on the fetch lane; pending while there is none.
async fn next_on_lane(lane: &mut Option<FrameReader>) -> Result<Option<Frame<'_>>, StreamError> {
    match lane {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

/// Handles a frame from the fetch lane: shown to readers until the region stream's copy of its
/// chunk arrives.
fn on_lane_frame(
    replica: &mut Replica,
    sink: Option<&dyn ChunkSink>,
    shared: &Shared,
    frame: &Frame<'_>,
) -> Result<(), WireError> {
    match replica.handle_lane(frame)? {
        LaneEvent::Discard => {
            let counter = match frame {
                Frame::Part { .. } => &shared.lane_parts,
                _ => &shared.lane_copies,
            };
            counter.fetch_add(1, Relaxed);
        }
        LaneEvent::Chunk { index, data } => {
            shared.lane_copies.fetch_add(1, Relaxed);
            if let Some(sink) = sink {
                sink.write_chunk(index, data);
            }
            shared.arrived(index);
        }
        LaneEvent::Part {
            index,
            offset,
            len,
            data,
        } => {
            shared.lane_parts.fetch_add(1, Relaxed);
            if let Some(sink) = sink {
                sink.write_part(index, offset, len, data);
            }
        }
    }
    Ok(())
}
