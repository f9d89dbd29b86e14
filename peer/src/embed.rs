//! Memory an application writes itself, replicated with uffd write tracking.
//!
//! Two ways in:
//! - **Embedded** ([`TrackedRegion`]): the application links memsync and gets a memfd-backed
//!   region to write into. Writes are tracked exactly by userfaultfd WP_ASYNC + PAGEMAP_SCAN on
//!   the application's mapping; [`TrackedRegion::sync_region`] builds a
//!   [`crate::roles::owner::SyncRegion`] for [`crate::roles::owner::run`], which replicates it to a
//!   `peer serve`. See `peer/examples/embedded.rs`.
//! - **Handed over** ([`serve_track_handovers`], `peer uffd track`): another process sends its
//!   uffd, a memfd and its pagemap over a Unix socket ([`crate::uffd::handover`] documents the
//!   message) and this peer tracks and replicates the region for it.
//!
//! The bytes the owner sends are read through a second, read-only mapping of the memfd (the
//! [`TrackedView`]): the application's `&mut [u8]` and the sender's reads then never alias in
//! Rust's sense, and only the application's mapping is registered for tracking.

use crate::detector::{HashDetector, UffdDetector};
use crate::net::transport::PeerEndpoint;
use crate::region::{RegionError, Source};
use crate::roles::owner::{SyncError, SyncOptions, SyncRegion, SyncStats};
use crate::uffd::handover::{self, HandoverError, TrackReply};
use crate::uffd::pagemap::WriteTracker;
use crate::uffd::{page_size, Mapping, Probe, Uffd, UffdError};
use memsync_protocol::Geometry;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Why tracked memory could not be set up or replicated.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// Reported as "creating the region's memory: {0}".
    #[error("creating the region's memory: {0}")]
    Io(#[from] std::io::Error),
    /// The region cannot have this size or chunk size; the reason says why.
    #[error("{0}")]
    Geometry(String),
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Reported as "this region is already being synced; one SyncRegion per TrackedRegion".
    #[error("this region is already being synced; one SyncRegion per TrackedRegion")]
    AlreadySyncing,
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Handover(#[from] HandoverError),
}

/// The memory behind a tracked region, shared by the application's handle and the view.
struct Memory {
    geom: Geometry,
    _memfd: OwnedFd,
    /// The application's mapping, the one writes are tracked on. Never dereferenced here
    /// except through `TrackedRegion`'s `&mut self` methods.
    write: Mapping,
    /// A read-only mapping of the same memfd that the owner reads chunks from.
    view: Mapping,
    syncing: AtomicBool,
}

/// A memfd-backed region the application writes into and memsync replicates, with uffd write
/// tracking. Dereferences to `[u8]` (the application's mapping). Build the replication with
/// [`TrackedRegion::sync_region`] and run it with [`crate::roles::owner::run`].
pub struct TrackedRegion {
    mem: Arc<Memory>,
}

impl TrackedRegion {
    /// A zeroed region of `size` bytes with 64 KiB chunks. Fails with a message naming Linux 6.7
    /// and the `hash` detector when the kernel lacks WP_ASYNC or PAGEMAP_SCAN.
    pub fn new(size: usize) -> Result<TrackedRegion, EmbedError> {
        Self::with_chunk_shift(size, 16)
    }

    /// Like [`TrackedRegion::new`] with chunks of `1 << chunk_shift` bytes (12..=22).
    pub fn with_chunk_shift(size: usize, chunk_shift: u8) -> Result<TrackedRegion, EmbedError> {
        Probe::run().require_write_tracking()?;
        let geom =
            Geometry::new(size as u64, chunk_shift).map_err(|e| EmbedError::Geometry(e.reason))?;
        let len = size.next_multiple_of(page_size());
        let memfd = rustix::fs::memfd_create("memsync-tracked", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        rustix::fs::ftruncate(&memfd, len as u64).map_err(std::io::Error::from)?;
        let write = Mapping::shared(memfd.as_fd(), len, true)?;
        let view = Mapping::shared(memfd.as_fd(), len, false)?;
        Ok(TrackedRegion {
            mem: Arc::new(Memory {
                geom,
                _memfd: memfd,
                write,
                view,
                syncing: AtomicBool::new(false),
            }),
        })
    }

    /// The region's geometry.
    pub fn geometry(&self) -> Geometry {
        self.mem.geom
    }

    /// The application's mapping, for code that wants a raw pointer (valid for
    /// `geometry().size()` bytes while `self` lives).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.mem.write.as_ptr()
    }

    /// A handle for reading the region's bytes from other threads (the owner's source).
    pub fn view(&self) -> Arc<TrackedView> {
        Arc::new(TrackedView {
            mem: self.mem.clone(),
        })
    }

    /// Starts write tracking and returns the region, named `name`, ready for
    /// [`crate::roles::owner::run`] with the `uffd` detector. Once per region. Must run outside a
    /// single-threaded tokio runtime (it hashes the region once, as a baseline).
    pub fn sync_region(&self, name: &str) -> Result<SyncRegion, EmbedError> {
        if self.mem.syncing.swap(true, Ordering::SeqCst) {
            return Err(EmbedError::AlreadySyncing);
        }
        let uffd = Arc::new(WriteTracker::open_uffd()?);
        let tracker =
            WriteTracker::start_self(uffd, self.mem.write.addr(), self.mem.write.len() as u64)?;
        let view = self.view();
        let detector = Box::new(UffdDetector::new(view.clone(), tracker));
        Ok(SyncRegion::new(view, name, detector)?)
    }
}

impl std::ops::Deref for TrackedRegion {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the write mapping holds `size` bytes for as long as `mem` lives (at least as
        // long as `self`); this process writes it only through `deref_mut`/`as_mut_ptr`, which
        // need `&mut self`. The kernel changes only its protection bits, never its bytes.
        unsafe {
            std::slice::from_raw_parts(self.mem.write.as_ptr(), self.mem.geom.size() as usize)
        }
    }
}

impl std::ops::DerefMut for TrackedRegion {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; `&mut self` makes this the only reference into the write mapping
        // (`TrackedRegion` is not `Clone`; the view reads other addresses).
        unsafe {
            std::slice::from_raw_parts_mut(self.mem.write.as_ptr(), self.mem.geom.size() as usize)
        }
    }
}

/// The read side of a [`TrackedRegion`] (or of a handed-over memfd): a read-only mapping of the
/// memfd. Its bytes change as the application writes through its own mapping.
pub struct TrackedView {
    mem: Arc<Memory>,
}

impl Source for TrackedView {
    fn geometry(&self) -> Geometry {
        self.mem.geom
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the view is a live read-only mapping of at least `size` bytes. Its contents
        // change under concurrent writes by the application, as a shared file mapping's do;
        // readers only copy and hash them (see `region::Source`).
        unsafe { std::slice::from_raw_parts(self.mem.view.as_ptr(), self.mem.geom.size() as usize) }
    }
}

/// A read-only view of a memfd handed over by another process.
struct HandedSource {
    geom: Geometry,
    view: Mapping,
    _memfd: OwnedFd,
}

impl Source for HandedSource {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a live read-only mapping of at least `size` bytes (checked against the
        // memfd's size before mapping); contents change under the sender's writes, which
        // readers tolerate (see `region::Source`).
        unsafe { std::slice::from_raw_parts(self.view.as_ptr(), self.geom.size() as usize) }
    }
}

/// Accepts write-tracking hand-overs on `listener` (the format is in
/// [`crate::uffd::handover`]) and replicates each region to the peer at `addr` until its sender
/// disconnects; then reconciles it once more by hashes and stops. Runs until the listener fails.
pub async fn serve_track_handovers(
    listener: tokio::net::UnixListener,
    ep: Arc<PeerEndpoint>,
    addr: SocketAddr,
    opts: SyncOptions,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let (ep, opts) = (ep.clone(), opts.clone());
        tokio::spawn(async move {
            if let Err(e) = track_one(stream, ep, addr, opts).await {
                warn!("hand-over: {e}");
            }
        });
    }
}

async fn track_one(
    stream: UnixStream,
    ep: Arc<PeerEndpoint>,
    addr: SocketAddr,
    opts: SyncOptions,
) -> Result<(), EmbedError> {
    let stream = Arc::new(stream);
    let s = stream.clone();
    let setup = tokio::task::spawn_blocking(move || accept_track(&s))
        .await
        .expect("hand-over task");
    let (source, region) = match setup {
        Ok(r) => r,
        Err(e) => {
            let _ = handover::send_reply(
                &stream,
                &TrackReply {
                    ok: false,
                    error: Some(e.to_string()),
                },
            );
            return Err(e);
        }
    };
    let name = region.name().to_owned();
    handover::send_reply(
        &stream,
        &TrackReply {
            ok: true,
            error: None,
        },
    )?;
    info!(
        "hand-over: tracking region {name} ({} bytes) for its sender",
        source.geometry().size()
    );
    let s = stream.clone();
    let mut gone = tokio::task::spawn_blocking(move || wait_eof(&s));
    let stats = Arc::new(SyncStats::default());
    let res = tokio::select! {
        r = crate::roles::owner::run(&ep, addr, vec![region], &opts, stats.clone()) => Some(r),
        _ = &mut gone => None,
    };
    match res {
        Some(Ok(())) => return Ok(()),
        Some(Err(e)) => {
            // A tracking failure while the sender lives is reported to it by closing the
            // socket; one because the sender went away ends like a disconnect.
            let sender_gone = tokio::time::timeout(Duration::from_secs(2), &mut gone)
                .await
                .is_ok();
            if !sender_gone {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Err(e.into());
            }
            info!("{name}: tracking ended ({e}); the sender is gone")
        }
        None => info!("{name}: the sender disconnected"),
    }
    // Writes since the last scan are in the memfd but their record went with the sender's
    // address space: reconcile by hashes, once.
    let final_opts = SyncOptions { once: true, ..opts };
    let detector = Box::new(HashDetector::new(source.clone()));
    let region = tokio::task::block_in_place(|| SyncRegion::new(source, &name, detector))?;
    crate::roles::owner::run(&ep, addr, vec![region], &final_opts, stats).await?;
    info!("{name}: final state replicated; hand-over done");
    Ok(())
}

/// Receives and sets up one hand-over: negotiates the uffd, maps the memfd, starts tracking.
fn accept_track(stream: &UnixStream) -> Result<(Arc<dyn Source>, SyncRegion), EmbedError> {
    let got = handover::recv_track(stream, Duration::from_secs(30))?;
    let req = &got.request;
    memsync_protocol::wire::check_name(&req.name).map_err(|e| {
        HandoverError::Malformed(format!("region name {:?}: {}", req.name, e.reason))
    })?;
    if !req.chunk_size.is_power_of_two() || !(4096..=4 << 20).contains(&req.chunk_size) {
        return Err(HandoverError::Malformed(format!(
            "chunk_size {} must be a power of two from 4096 to 4194304",
            req.chunk_size
        ))
        .into());
    }
    let geom = Geometry::new(req.size, req.chunk_size.trailing_zeros() as u8)
        .map_err(|e| EmbedError::Geometry(e.reason))?;
    let memfd_len = rustix::fs::fstat(&got.memfd)
        .map_err(std::io::Error::from)?
        .st_size as u64;
    if memfd_len < req.size {
        return Err(HandoverError::Malformed(format!(
            "the memfd holds {memfd_len} bytes, less than the region's {}",
            req.size
        ))
        .into());
    }
    let probe = Probe::run();
    probe.require_write_tracking()?;
    let uffd = Arc::new(Uffd::from_fd(
        got.uffd,
        WriteTracker::wanted_features(probe.features),
    )?);
    let view = Mapping::shared(got.memfd.as_fd(), req.size as usize, false)?;
    let tracker = WriteTracker::start(uffd, got.pagemap, req.addr, req.size)?;
    let source: Arc<dyn Source> = Arc::new(HandedSource {
        geom,
        view,
        _memfd: got.memfd,
    });
    let detector = Box::new(UffdDetector::new(source.clone(), tracker));
    let region = SyncRegion::new(source.clone(), &req.name, detector)?;
    Ok((source, region))
}

/// Blocks until the peer closes its end (bytes it sends meanwhile are ignored).
fn wait_eof(stream: &UnixStream) {
    use std::io::Read;
    let mut buf = [0u8; 256];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl From<RegionError> for EmbedError {
    fn from(e: RegionError) -> Self {
        EmbedError::Sync(SyncError::Region(e))
    }
}
