//! The owner side of `peer sync`: one QUIC connection to the replica's peer, one stream per region.
//! Each region's task runs detector → owner state machine → stream, reads ACKs and FETCHes back,
//! and reports a status line per acknowledged round. A lost connection is re-established and every
//! region reconciles again, so only differing chunks move.

use crate::detector::{
    ChangeDetector, DetectorError, HashDetector, InotifyDetector, Marks, MarksDetector,
};
use crate::net::transport::{FrameReader, PeerEndpoint, Session, StreamError, TransportError};
use crate::ops::metrics::{RegionMetrics, Role};
use crate::region::{Promotion, RegionError, Source, SourceFile};
use crate::roles::migrate::{
    Freezer, MigrateOptions, Migration, MigrationReport, Phase, RoundReport,
};
use bytes::{Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressStyle};
use memsync_protocol::lane::LaneGate;
use memsync_protocol::wire::{
    feature, ErrorCode, Frame, WireError, CHUNK_HEADER_LEN, HEADER_LEN, MAX_BODY,
};
use memsync_protocol::{DirtySet, Owner, OwnerEvent, OwnerState, Transmit};
use quinn::{Connection, VarInt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Why a sync ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Reported as "region {region}: {source}".
    #[error("region {region}: {source}")]
    Stream {
        /// The region's name.
        region: String,
        /// What failed underneath.
        source: StreamError,
    },
    /// Reported as "region {region}: {source}".
    #[error("region {region}: {source}")]
    Detector {
        /// The region's name.
        region: String,
        /// What failed underneath.
        source: DetectorError,
    },
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A protocol error of the owner state machine.
    #[error("{0}")]
    Protocol(#[from] WireError),
    /// Reported as "the peer accepts at most {max} regions on one connection; {asked} were given".
    #[error("the peer accepts at most {max} regions on one connection; {asked} were given")]
    TooManyRegions {
        /// The most the peer accepts.
        max: u32,
        /// How many were given.
        asked: usize,
    },
    /// A handoff was offered and its answer lost, and the peer could not be asked since: it may
    /// own the region now (spec §8.6). The writers stay frozen.
    #[error(
        "region {region}: the handoff at generation {generation} went out and its answer was lost \
         ({source}); the peer may own the region now, so its writers stay frozen. Run the same \
         `peer migrate` again once the peer is reachable: it asks the peer, and either finishes the \
         move or learns that the peer owns the region"
    )]
    HandoffUnsettled {
        /// The region's name.
        region: String,
        /// The generation the HANDOFF named.
        generation: u64,
        /// Why the peer could not be asked.
        source: Box<SyncError>,
    },
}

/// How a sync runs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Time between detector runs.
    pub interval: Duration,
    /// Stop once the replica matches the file as of the last round's start.
    pub once: bool,
    /// How long to keep trying to reconnect after a connection is lost.
    pub reconnect_for: Duration,
    /// Show a progress bar for initial transfers.
    pub progress: bool,
    /// Most bytes per second a round may send (None: as fast as QUIC goes). Chunks a replica
    /// fetches are never held back: a lazy replica's readers get them at once, and the
    /// headroom left keeps the queues short that their copies would wait in (QEMU's
    /// max-postcopy-bandwidth serves the same end).
    pub max_rate: Option<u64>,
    /// Refuse a replica that acknowledges before its bytes are on stable storage (NOT_DURABLE,
    /// spec §8.4): every ACK, and so every `--once` and every FLUSH that waits for the replica,
    /// then means "on the replica's disk".
    pub require_durable: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            interval: Duration::from_millis(1000),
            once: false,
            reconnect_for: Duration::from_secs(60),
            progress: false,
            max_rate: None,
            require_durable: false,
        }
    }
}

/// Counters shared with whoever watches a sync (the demo's live display, tests, benches).
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Bytes of CHUNK frames written to streams.
    pub bytes_sent: AtomicU64,
    /// CHUNK frames written to streams.
    pub chunks_sent: AtomicU64,
    /// Rounds begun: generations whose changes were sent.
    pub rounds_begun: AtomicU64,
    /// Rounds acknowledged by the replica (one ACK may acknowledge several).
    pub rounds_acked: AtomicU64,
    /// Bytes of CHUNK frames in the rounds the replica acknowledged.
    pub bytes_acked: AtomicU64,
    /// Time from the detector run that found a round's changes to the round's ACK, last round.
    pub last_lag_us: AtomicU64,
    /// Reconciliations completed (one per stream start).
    pub reconciles: AtomicU64,
    /// Connections made (the first and every reconnect).
    pub connections: AtomicU64,
    /// The latest acknowledged rounds, oldest first (at most [`ROUND_LOG`]; see
    /// [`SyncStats::take_rounds`]): when each round's changes were found and when its ACK came,
    /// for whoever measures the lag of single writes.
    round_log: Mutex<std::collections::VecDeque<AckedRound>>,
}

/// How many acknowledged rounds [`SyncStats::round_log`] keeps.
pub const ROUND_LOG: usize = 4096;

/// An acknowledged round, as [`SyncStats::round_log`] keeps it. Every write that completed
/// before `detected` is in this round or an earlier one.
#[derive(Clone, Copy, Debug)]
pub struct AckedRound {
    /// When the detector run that found the round's changes began.
    pub detected: Instant,
    /// When the replica's ACK of it was read.
    pub acked: Instant,
}

impl SyncStats {
    /// Takes the acknowledged rounds logged since the last call, oldest first. Only the newest
    /// [`ROUND_LOG`] are kept between calls: `rounds_acked` tells whether any were dropped.
    pub fn take_rounds(&self) -> Vec<AckedRound> {
        let mut log = self.round_log.lock().expect("round log lock");
        log.drain(..).collect()
    }

    fn log_round(&self, round: &Round) {
        let mut log = self.round_log.lock().expect("round log lock");
        if log.len() == ROUND_LOG {
            log.pop_front();
        }
        log.push_back(AckedRound {
            detected: round.detected,
            acked: Instant::now(),
        });
        self.rounds_acked.fetch_add(1, Relaxed);
    }
}

/// A region this peer owns and replicates.
pub struct SyncRegion {
    /// Where the region's bytes are read.
    pub source: Arc<dyn Source>,
    /// The owner's state machine.
    pub owner: Owner,
    /// What finds the chunks that changed.
    pub detector: Box<dyn ChangeDetector>,
    /// A migration of the region to the replica, when one was asked for.
    pub migration: Option<Migration>,
    /// Its figures, for `--metrics` and `peer status`.
    pub metrics: RegionMetrics,
    /// A migration asked for while it streams ([`ask_migration`]), not started yet.
    asked: Arc<Mutex<Option<Asked>>>,
    /// Where the report of the migration asked for goes.
    reply: Option<MigrationReply>,
    /// Freezes what else writes the region (e.g. its NBD export) for a migration asked for.
    pub freeze_also: Option<Arc<dyn Fn() -> Box<dyn Freezer> + Send + Sync>>,
    /// The ownership epoch this peer owns the region at (spec §8.8; 1 unless a handoff or a
    /// promotion made this peer its owner, see [`crate::roles::replica::policy::owned_at`]).
    pub epoch: u64,
    /// For a region promoted here, the replica as it was promoted: what a reconciled replica holds
    /// beyond it, where this peer did not change it, is a fenced owner's writes.
    pub promotion: Option<Promotion>,
    /// The replica's peer takes post-copy handoffs (the POSTCOPY feature, spec §8.10).
    peer_postcopy: bool,
    /// The region's file, when this peer stays its new owner's replica after a handoff (spec
    /// §8.6 step 5, [`crate::roles::follow`]): the file then receives the new owner's writes, and
    /// a handoff back makes this peer the owner again.
    pub follow: Option<std::path::PathBuf>,
    /// The new owner's last generation applied here while following.
    pub(crate) followed: u64,
    /// The peer said it owns the region (HANDED_OVER, FENCED) and this peer follows it.
    following: bool,
}

/// The outcome of a migration asked for through [`ask_migration`]: its report, or why it failed.
pub type MigrationOutcome = Result<MigrationReport, String>;
type MigrationReply = tokio::sync::oneshot::Sender<MigrationOutcome>;

struct Asked {
    migration: Migration,
    reply: MigrationReply,
}

type AskSlots = Mutex<std::collections::HashMap<String, std::sync::Weak<Mutex<Option<Asked>>>>>;

/// The regions of this process that a migration can be asked for, by name.
fn askable() -> &'static AskSlots {
    static ASKABLE: std::sync::OnceLock<AskSlots> = std::sync::OnceLock::new();
    ASKABLE.get_or_init(Mutex::default)
}

/// Asks the running owner driver of `region` (a `peer sync` of this process) to migrate it to its
/// replica with `migration`: it starts at the driver's next idle moment, from the state the stream
/// is in (no reconciliation from scratch). The receiver gets the report once the replica owns the
/// region, or why the migration failed.
pub fn ask_migration(
    region: &str,
    migration: Migration,
) -> Result<tokio::sync::oneshot::Receiver<MigrationOutcome>, String> {
    let slot = askable()
        .lock()
        .expect("askable lock")
        .get(region)
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| format!("this process replicates no region named {region}"))?;
    let mut slot = slot.lock().expect("asked lock");
    if slot.is_some() {
        return Err(format!("a migration of {region} was already asked for"));
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    *slot = Some(Asked { migration, reply });
    Ok(rx)
}

impl SyncRegion {
    /// Maps the file at `path` for the `hash` detector.
    pub fn open(path: &Path, name: &str, chunk_shift: u8) -> Result<Self, SyncError> {
        let source: Arc<dyn Source> = Arc::new(SourceFile::open(path, chunk_shift)?);
        let detector = Box::new(HashDetector::new(source.clone()));
        Self::new(source, name, detector)
    }

    /// Maps the file at `path` for the `inotify` detector (hashed only after the kernel reported
    /// a write to it).
    pub fn open_inotify(path: &Path, name: &str, chunk_shift: u8) -> Result<Self, SyncError> {
        let source: Arc<dyn Source> = Arc::new(SourceFile::open(path, chunk_shift)?);
        let detector =
            InotifyDetector::new(source.clone(), path).map_err(|e| SyncError::Detector {
                region: name.to_owned(),
                source: DetectorError::Inotify(e),
            })?;
        Self::new(source, name, Box::new(detector))
    }

    /// Maps `file` (at `path`) to serve a lazy mount. The replica holds nothing, so every chunk is
    /// sent and reconciliation never compares hashes: the initial hash pass is skipped (zeros
    /// stand in until each chunk is sent), which keeps a mount's first read fast. Changes are
    /// the writes marked on the [`Marks`] handed to `watch` before anything is read (the file's
    /// writer marks them).
    pub fn for_mount(
        file: std::fs::File,
        path: &Path,
        name: &str,
        chunk_shift: u8,
        watch: impl FnOnce(&Arc<Marks>),
    ) -> Result<Self, SyncError> {
        let source: Arc<dyn Source> = Arc::new(SourceFile::from_file(file, path, chunk_shift)?);
        let marks = Marks::new(source.geometry());
        watch(&marks);
        let detector = Box::new(MarksDetector::replica_writes(marks, source.clone()));
        let known = vec![0; source.geometry().chunk_count() as usize];
        Self::with_known(source, name, detector, known, 0)
    }

    /// A region read from `source` whose changes `detector` reports. Hashes the region once: the
    /// hashes are what reconciliation compares against.
    pub fn new(
        source: Arc<dyn Source>,
        name: &str,
        detector: Box<dyn ChangeDetector>,
    ) -> Result<Self, SyncError> {
        let known = tokio::task::block_in_place(|| source.hashes());
        source.check()?;
        Self::with_known(source, name, detector, known, 0)
    }

    /// A region read from `source` whose chunks hash to `known` (as last hashed or received),
    /// its last generation `generation`, whose changes `detector` reports.
    pub fn with_known(
        source: Arc<dyn Source>,
        name: &str,
        detector: Box<dyn ChangeDetector>,
        known: Vec<u64>,
        generation: u64,
    ) -> Result<Self, SyncError> {
        let owner = Owner::new(source.geometry(), name, known, generation)?;
        Ok(SyncRegion {
            source,
            owner,
            detector,
            migration: None,
            metrics: RegionMetrics::new(name, Role::Owner),
            asked: Arc::default(),
            reply: None,
            freeze_also: None,
            epoch: memsync_protocol::epoch::FIRST,
            promotion: None,
            peer_postcopy: false,
            follow: None,
            followed: 0,
            following: false,
        })
    }

    /// The region's name on the replica.
    pub fn name(&self) -> &str {
        self.owner.name()
    }

    /// The report of the migration set in [`SyncRegion::migration`], once the replica owns the
    /// region (and, post-copy, holds every chunk), or why it failed.
    pub fn when_migrated(&mut self) -> tokio::sync::oneshot::Receiver<MigrationOutcome> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.reply = Some(reply);
        rx
    }

    /// Lets [`ask_migration`] find this region by its name.
    pub fn askable(self) -> Self {
        self.ask_here();
        self
    }

    fn ask_here(&self) {
        askable()
            .lock()
            .expect("askable lock")
            .insert(self.name().to_owned(), Arc::downgrade(&self.asked));
    }

    /// The region was handed back at `generation` to this peer, which followed it and holds
    /// chunks hashing to `known`: it owns the region again at `epoch`, with the detector it had,
    /// and a migration of it may be asked for again.
    pub(crate) fn taken_back(
        &mut self,
        generation: u64,
        epoch: u64,
        known: Vec<u64>,
    ) -> Result<(), WireError> {
        self.owner = Owner::new(*self.owner.geometry(), self.owner.name(), known, generation)?;
        self.epoch = epoch;
        self.following = false;
        if let Some(mut m) = self.migration.take() {
            m.taken_back();
        }
        self.ask_here();
        self.show_state();
        Ok(())
    }

    /// The peer owns the region, which this process learns only now (`why`): the writers it
    /// knows of stop for good, as after a handoff (a migration's freezers, the export's writes),
    /// since their file is the owner's replica from now on.
    fn stop_writers_for_good(&mut self, why: &str) -> Result<(), StreamError> {
        let mut m = match self.migration.take() {
            Some(m) => m,
            None => Migration::new(MigrateOptions::default(), Vec::new()),
        };
        if let Some(f) = &self.freeze_also {
            m.freeze_also(f());
        }
        tokio::task::block_in_place(|| m.freeze(why.to_owned(), 0))
            .map_err(|e| WireError::new(ErrorCode::LocalIo, e.to_string()))?;
        m.handed_off(0, None, 0);
        self.migration = Some(m);
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(format!("nothing moved: {why}")));
        }
        Ok(())
    }

    /// Takes up a migration asked for, if none runs.
    fn take_asked(&mut self) {
        if self.migration.is_some() {
            return;
        }
        let Some(Asked {
            mut migration,
            reply,
        }) = self.asked.lock().expect("asked lock").take()
        else {
            return;
        };
        if let Some(f) = &self.freeze_also {
            migration.freeze_also(f());
        }
        info!("{}: migrating to the replica, as asked", self.name());
        self.migration = Some(migration);
        self.reply = Some(reply);
    }

    /// Answers the migration's caller with its report, once ownership moved and (post-copy) the
    /// new owner holds everything; no more migrations of the region can be asked for here.
    fn migration_over(&mut self) {
        let Some(m) = &self.migration else {
            return;
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Ok(m.report().lock().expect("report lock").clone()));
        }
        let mut askable = askable().lock().expect("askable lock");
        if askable
            .get(self.owner.name())
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.asked)))
        {
            askable.remove(self.owner.name());
        }
    }

    /// Offers the region to the replica once the writers are frozen: post-copy where the
    /// migration wants it and the peer takes it (spec §8.10), else a plain handoff.
    fn offer(&mut self) -> Result<(), WireError> {
        let postcopy = self
            .migration
            .as_ref()
            .is_some_and(Migration::wants_postcopy);
        if postcopy && !self.peer_postcopy {
            warn!(
                "{}: the replica's peer does not take post-copy handoffs; the last changes go \
                 before the handoff",
                self.name()
            );
        }
        if postcopy && self.peer_postcopy {
            self.owner.begin_postcopy()
        } else {
            self.owner.begin_handoff()
        }
    }

    /// Shows what the region is doing in `peer status`.
    fn show_state(&self) {
        let migrating = self.migration.as_ref().map(Migration::phase);
        let state = match (self.owner.state(), migrating) {
            (OwnerState::Opening, _) => "opening",
            (OwnerState::Probing { .. }, _) => "asking whether the replica took the handoff",
            (OwnerState::Reconciling { .. }, _) => "reconciling",
            (OwnerState::Streaming, Some(Phase::PreCopy)) => "migrating: pre-copy",
            (OwnerState::Streaming | OwnerState::Draining, Some(Phase::Frozen)) => {
                "migrating: frozen, last round"
            }
            (OwnerState::Streaming, _) => "streaming",
            (OwnerState::Draining, _) => "draining for the handoff",
            (OwnerState::HandingOff { .. }, _) => "handing off",
            (OwnerState::Serving { .. }, _) => "post-copy: serving the new owner's fetches",
            (OwnerState::HandedOff, _) => "handed off",
        };
        self.metrics.set_state(state);
    }
}

/// Replicates `regions` to the peer at `addr` until done (`once`) or a fatal error. A migration
/// that fails settles its writers first: thawed while this peer still owns the region, frozen
/// when a HANDOFF went out unanswered ([`SyncError::HandoffUnsettled`]).
pub async fn run(
    ep: &PeerEndpoint,
    addr: SocketAddr,
    mut regions: Vec<SyncRegion>,
    opts: &SyncOptions,
    stats: Arc<SyncStats>,
) -> Result<(), SyncError> {
    let Err(e) = run_regions(ep, addr, &mut regions, opts, stats).await else {
        return Ok(());
    };
    // The replica said it owns the region: nothing thaws.
    let handed_over = matches!(&e, SyncError::Stream { source: StreamError::Peer { code, .. }, .. }
        if *code == ErrorCode::HandedOver as u32);
    let mut unsettled = None;
    for r in &mut regions {
        // Frozen, or handed over in a post-copy handoff whose new owner still fetches.
        let unfinished = r.owner.state() != OwnerState::HandedOff;
        let Some(m) = r.migration.as_mut().filter(|m| {
            m.phase() == Phase::Frozen || (m.phase() == Phase::HandedOff && unfinished)
        }) else {
            if let Some(reply) = r.reply.take() {
                let _ = reply.send(Err(e.to_string()));
            }
            continue;
        };
        match r.owner.state() {
            OwnerState::HandingOff { generation }
            | OwnerState::Probing { generation }
            | OwnerState::Serving { generation } => {
                let region = r.owner.name().to_owned();
                let why = if m.phase() == Phase::HandedOff {
                    format!(
                        "region {region}: the new owner took it at generation {generation} in a \
                         post-copy handoff and still lacks chunks only this peer holds ({e}); its \
                         writers stay frozen"
                    )
                } else {
                    format!(
                        "region {region}: the handoff at generation {generation} went out and its \
                         answer was lost ({e}); its writers stay frozen"
                    )
                };
                if let Some(reply) = r.reply.take() {
                    let _ = reply.send(Err(why));
                }
                unsettled.get_or_insert((region, generation));
            }
            _ if handed_over => {
                if let Some(reply) = r.reply.take() {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            // No HANDOFF is outstanding: this peer owns the region, and its writers go on.
            _ => {
                warn!(
                    "{}: the migration failed before the handoff; this peer still owns the region \
                     and thaws its writers",
                    r.owner.name()
                );
                m.refused();
                if let Some(reply) = r.reply.take() {
                    let _ = reply.send(Err(format!("{e}; the writers were thawed")));
                }
            }
        }
    }
    match unsettled {
        Some((region, generation)) => Err(SyncError::HandoffUnsettled {
            region,
            generation,
            source: Box::new(e),
        }),
        None => Err(e),
    }
}

async fn run_regions(
    ep: &PeerEndpoint,
    addr: SocketAddr,
    regions: &mut Vec<SyncRegion>,
    opts: &SyncOptions,
    stats: Arc<SyncStats>,
) -> Result<(), SyncError> {
    let mut lost_at: Option<Instant> = None;
    loop {
        let session = match ep.connect(addr).await {
            Ok(s) => s,
            Err(e @ (TransportError::Untrusted { .. } | TransportError::RefusedByPeer { .. })) => {
                return Err(e.into())
            }
            Err(e) => match lost_at {
                Some(t) if t.elapsed() < opts.reconnect_for => {
                    debug!("reconnect failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                _ => return Err(e.into()),
            },
        };
        if lost_at.take().is_some() {
            info!("reconnected to {addr}");
        }
        for r in regions.iter() {
            r.metrics.set_peer(addr.to_string());
        }
        stats.connections.fetch_add(1, Relaxed);
        if regions.len() > session.negotiated.max_regions as usize {
            return Err(SyncError::TooManyRegions {
                max: session.negotiated.max_regions,
                asked: regions.len(),
            });
        }
        match run_session(&session, regions, opts, &stats).await {
            Ok(()) => {
                session
                    .conn
                    .close(VarInt::from_u32(ErrorCode::Shutdown as u32), b"done");
                ep.endpoint.wait_idle().await;
                return Ok(());
            }
            Err(e) if is_connection_lost(&e) => {
                warn!("connection to {addr} lost ({e}); reconnecting");
                lost_at = Some(Instant::now());
                for r in regions.iter() {
                    r.metrics.reconnect();
                    r.metrics.set_state("disconnected, reconnecting");
                }
            }
            Err(e) => {
                let code = match &e {
                    SyncError::Stream {
                        source: StreamError::Wire(w),
                        ..
                    } => w.code,
                    _ => ErrorCode::Internal,
                };
                session
                    .conn
                    .close(VarInt::from_u32(code as u32), e.to_string().as_bytes());
                ep.endpoint.wait_idle().await;
                return Err(e);
            }
        }
    }
}

fn is_connection_lost(e: &SyncError) -> bool {
    match e {
        SyncError::Stream { source, .. } => source.is_connection_lost(),
        SyncError::Transport(TransportError::Lost(_)) => true,
        _ => false,
    }
}

/// Runs every region on one connection; returns when all are done or the first fails.
async fn run_session(
    session: &Session,
    regions: &mut Vec<SyncRegion>,
    opts: &SyncOptions,
    stats: &Arc<SyncStats>,
) -> Result<(), SyncError> {
    let mut tasks = tokio::task::JoinSet::new();
    // A region handed over is done, unless this peer follows it: on a new connection it asks for
    // it as a replica.
    let (done, live): (Vec<_>, Vec<_>) = regions
        .drain(..)
        .partition(|r| r.owner.state() == OwnerState::HandedOff && r.follow.is_none());
    regions.extend(done);
    // The epoch travels in OPEN where the peer knows epochs (spec §8.8).
    let epochs = session.negotiated.features & feature::EPOCH != 0;
    let postcopy = session.negotiated.features & feature::POSTCOPY != 0;
    for mut r in live {
        r.peer_postcopy = postcopy;
        let conn = session.conn.clone();
        let opts = opts.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            let res = drive(&conn, &mut r, &opts, &stats, epochs).await;
            (r, res)
        });
    }
    let mut first_err: Option<SyncError> = None;
    while let Some(joined) = tasks.join_next().await {
        let (r, res) = joined.expect("region task panicked");
        regions.push(r);
        if let Err(e) = res {
            if !is_connection_lost(&e) && first_err.as_ref().is_none_or(is_connection_lost) {
                // A region failed for good: close the connection so the others stop too.
                session.conn.close(
                    VarInt::from_u32(ErrorCode::Internal as u32),
                    e.to_string().as_bytes(),
                );
                first_err = Some(e);
            } else if first_err.is_none() {
                first_err = Some(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A round in flight: when its changes were found, and what it sent so far.
struct Round {
    detected: Instant,
    /// When its first frame was queued.
    started: Instant,
    /// The detector's position when the round began: the round carries every change up to it.
    position: u64,
    chunks: u64,
    bytes: u64,
}

/// One region's stream, from OPEN until done or failed. After a handoff, a region this peer
/// follows ([`SyncRegion::follow`]) stays on the stream as the new owner's replica, and becomes
/// the owner again if it is handed back; on a new connection it asks for the region with MOUNT.
async fn drive(
    conn: &Connection,
    r: &mut SyncRegion,
    opts: &SyncOptions,
    stats: &SyncStats,
    epochs: bool,
) -> Result<(), SyncError> {
    let region = r.name().to_owned();
    let failed = |source| SyncError::Stream {
        region: region.clone(),
        source,
    };
    let open = || async {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| failed(StreamError::Connection(e)))?;
        Ok::<_, SyncError>((send, FrameReader::new(recv, MAX_BODY)))
    };
    let (mut send, mut reader) = open().await?;
    // Handed over before this stream: follow it by asking for it (MOUNT).
    let mut mount = r.owner.state() == OwnerState::HandedOff || r.following;
    loop {
        if !mount {
            let epoch = epochs.then_some(r.epoch);
            match drive_stream(send, reader, r, opts, stats, None, epoch).await {
                Ok(Some(turned)) => (send, reader) = turned,
                // After post-copy the new owner ended the stream: a follower asks anew.
                Ok(None) if r.follow.is_some() && r.owner.state() == OwnerState::HandedOff => {
                    (send, reader) = open().await?;
                    mount = true;
                }
                Ok(None) => return Ok(()),
                // The peer owns the region (a handoff this process does not remember, e.g. it
                // was restarted) and nothing is frozen here: a follower stops the writers it
                // knows of for good, as after a handoff, and follows it.
                Err(StreamError::Peer { code, reason })
                    if r.follow.is_some()
                        && code == ErrorCode::HandedOver as u32
                        && r.migration
                            .as_ref()
                            .is_none_or(|m| m.phase() == Phase::PreCopy) =>
                {
                    r.stop_writers_for_good(&reason).map_err(failed)?;
                    info!("{region}: {reason}; following its owner as its replica (--follow)");
                    r.following = true;
                    (send, reader) = open().await?;
                    mount = true;
                }
                Err(e) => return Err(failed(e)),
            }
        }
        if r.follow.is_none() {
            // The new owner's OPEN (spec §8.6 step 5) is not answered: it learns at once.
            let _ = reader.into_inner().stop(VarInt::from_u32(0));
            let _ = send.finish();
            return Ok(());
        }
        match crate::roles::follow::follow(send, reader, r, mount, epochs)
            .await
            .map_err(failed)?
        {
            Some(turned) => {
                (send, reader) = turned;
                mount = false;
            }
            // The owner ended the stream: a follower asks for the region again.
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                (send, reader) = open().await?;
                mount = true;
            }
        }
    }
}

/// A region stream turned around after a handoff (spec §8.6 step 5): its send side and its reader,
/// for the role this peer takes next on it.
pub type Turned = (quinn::SendStream, FrameReader);

/// Runs the owner side of one region on an open stream (sync opens it; serve accepts it for a
/// MOUNT, or takes it over in a handoff) until done or failed. Protocol errors are reported to the
/// peer before returning. With `lane` (a connection whose peer takes fetch lanes), urgent FETCHes
/// are also answered on a fetch lane (spec §8.7) the moment they are read. OPEN carries `epoch`,
/// the ownership epoch, where the peer knows epochs (spec §8.8). Returns the stream, still open,
/// once the region was handed off on it: the caller turns it around or ends it.
pub async fn drive_stream(
    mut send: quinn::SendStream,
    reader: FrameReader,
    r: &mut SyncRegion,
    opts: &SyncOptions,
    stats: &SyncStats,
    lane: Option<Connection>,
    epoch: Option<u64>,
) -> Result<Option<Turned>, StreamError> {
    // After a HANDOFF whose answer was lost, this OPEN is a probe: the replica's answer settles
    // who owns the region (spec §8.6).
    r.owner.restart()?;
    r.owner.set_epoch(epoch)?;
    // A `peer migrate` run again after its process was lost may find the new owner of a
    // post-copy handoff still fetching: it answers this OPEN as a probe (spec §8.10).
    if r.migration.is_some() && r.peer_postcopy && r.owner.state() == OwnerState::Opening {
        r.owner.accept_postcopy_resume()?;
    }
    r.owner.set_require_durable(opts.require_durable);
    r.show_state();
    if let OwnerState::Probing { generation } = r.owner.state() {
        info!(
            "{}: asking the replica whether it took the handoff at generation {generation}",
            r.owner.name()
        );
    }
    let lane = lane.map(|conn| {
        Arc::new(Lane {
            conn,
            region_stream: send.id().into(),
            gate: Mutex::new(LaneGate::new(*r.owner.geometry())),
            source: r.source.clone(),
        })
    });
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, StreamError>>(64);
    // After each HANDOFF_ACK the reader waits to be told whether the stream is still this owner's
    // (post-copy) or turns around (spec §8.6 step 5), and then gives the reader back.
    let (go, mut go_on) = mpsc::channel::<bool>(1);
    let reader = {
        let mut lane = lane.clone();
        let mut reader = reader;
        tokio::spawn(async move {
            let mut lane_stream = None;
            loop {
                let mut acked = false;
                let (item, urgent) = match reader.next().await {
                    Ok(Some(f)) => {
                        acked = matches!(f, Frame::HandoffAck { .. });
                        let urgent = match f {
                            Frame::Fetch {
                                first,
                                count,
                                urgent: true,
                            } => Some((first, count, None)),
                            Frame::FetchPart { index, offset, len } => {
                                Some((index, 1, Some((offset, len))))
                            }
                            _ => None,
                        };
                        (Ok(f.to_vec()), urgent)
                    }
                    Ok(None) => (Err(StreamError::Truncated), None),
                    Err(e) => (Err(e), None),
                };
                if let (Some(l), Some((first, count, part))) = (&lane, urgent) {
                    if let Err(e) = l.answer(&mut lane_stream, first, count, part).await {
                        // One lane per region stream, ever (spec §8.7): no second one.
                        debug!("fetch lane closed: {e}; urgent chunks take the region stream");
                        lane = None;
                    }
                }
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return None;
                }
                if acked && !go_on.recv().await.unwrap_or(false) {
                    return Some(reader);
                }
            }
        })
    };
    let result = match pump(r, &mut send, &mut rx, &go, opts, stats, lane.as_deref()).await {
        // A peer that stops reading tells why in an ERROR frame on its side of the stream.
        Err(e @ StreamError::Write(quinn::WriteError::Stopped(_))) => {
            Err(peer_reason(&mut rx).await.unwrap_or(e))
        }
        result => result,
    };
    match result {
        Ok(()) if r.owner.state() == OwnerState::HandedOff => {
            let _ = go.try_send(false);
            match reader.await {
                Ok(Some(reader)) => Ok(Some((send, reader))),
                // The new owner ended the stream (after post-copy).
                _ => {
                    let _ = send.finish();
                    Ok(None)
                }
            }
        }
        Ok(()) => {
            reader.abort();
            let _ = send.finish();
            Ok(None)
        }
        Err(StreamError::Wire(w)) => {
            reader.abort();
            let frame = Frame::Error {
                code: w.code as u32,
                reason: &w.reason,
            };
            let _ = send.write_all(&frame.to_vec()).await;
            let _ = send.finish();
            Err(StreamError::Wire(w))
        }
        Err(e) => {
            reader.abort();
            Err(e)
        }
    }
}

/// The peer's ERROR among the frames still arriving after it stopped reading our stream.
async fn peer_reason(rx: &mut mpsc::Receiver<Result<Vec<u8>, StreamError>>) -> Option<StreamError> {
    let wait = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(wait);
    loop {
        let bytes = tokio::select! {
            item = rx.recv() => item?.ok()?,
            _ = &mut wait => return None,
        };
        if let Ok(Some((Frame::Error { code, reason }, _))) = Frame::decode(&bytes, MAX_BODY) {
            return Some(StreamError::Peer {
                code,
                reason: reason.to_owned(),
            });
        }
    }
}

/// The region's send loop: drains incoming frames, sends what the owner wants sent, and runs the
/// detector every interval while idle.
async fn pump(
    r: &mut SyncRegion,
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Result<Vec<u8>, StreamError>>,
    go: &mpsc::Sender<bool>,
    opts: &SyncOptions,
    stats: &SyncStats,
    lane: Option<&Lane>,
) -> Result<(), StreamError> {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut last_detect = Instant::now();
    let mut rounds: BTreeMap<u64, Round> = BTreeMap::new();
    let mut final_scan_done = false;
    let mut progress: Option<ProgressBar> = None;
    let mut dirty = DirtySet::new(r.owner.geometry().chunk_count());
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0;
    let mut arenas = Arenas::default();
    let mut since_yield = 0;
    let mut pacer = opts.max_rate.map(Pacer::new);
    loop {
        // Nothing after HANDOFF_ACK is ours to read: the stream is the new owner's (spec §8.6).
        while r.owner.state() != OwnerState::HandedOff {
            match rx.try_recv() {
                Ok(item) => received(r, Some(item), go, &mut rounds, &mut progress, opts, stats)?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    received(r, None, go, &mut rounds, &mut progress, opts, stats)?
                }
            }
        }
        if r.owner.state() == OwnerState::HandedOff {
            flush_batch(send, &mut batch, &mut batched).await?;
            return Ok(());
        }
        let gen_before = r.owner.generation();
        let handing_off = matches!(r.owner.state(), OwnerState::HandingOff { .. });
        let t = match pacer.as_ref().and_then(Pacer::due) {
            // The round waits for the pacer; frames and fetched chunks do not.
            Some(due) => match r.owner.poll_fetched() {
                Some(t) => Some(t),
                None => {
                    flush_batch(send, &mut batch, &mut batched).await?;
                    tokio::select! {
                        item = rx.recv() => received(r, item, go, &mut rounds, &mut progress, opts, stats)?,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    continue;
                }
            },
            None => r.owner.poll_transmit(),
        };
        if let (false, OwnerState::HandingOff { generation }) = (handing_off, r.owner.state()) {
            info!(
                "{}: offering ownership at generation {generation} (HANDOFF)",
                r.name()
            );
        }
        if r.owner.generation() != gen_before {
            r.metrics.generation(r.owner.generation());
            stats.rounds_begun.fetch_add(1, Relaxed);
            rounds.insert(
                r.owner.generation(),
                Round {
                    detected: last_detect,
                    started: Instant::now(),
                    position: r.detector.position(),
                    chunks: 0,
                    bytes: 0,
                },
            );
        }
        match t {
            // Control frames join the batch in order: a post-copy drain sends a STALE per run of
            // dirty chunks, and a write per frame would cost a wake-up of the connection each.
            Some(Transmit::Frame(f)) => {
                batched += f.len();
                batch.push(Bytes::from(f));
                if batched >= BATCH_BYTES {
                    flush_batch(send, &mut batch, &mut batched).await?;
                }
            }
            Some(Transmit::Chunk { index, fetched }) => {
                // The gate is held while the bytes are read, so a lane copy is either read
                // before this copy or not sent at all (spec §8.7).
                let gate = lane.map(|l| {
                    let mut g = l.gate.lock().expect("lane gate");
                    g.on_region_stream(index);
                    g
                });
                let data = r.source.chunk(index);
                let mut buf = arenas.frame_buffer(HEADER_LEN + CHUNK_HEADER_LEN + data.len());
                buf.extend_from_slice(&[0; HEADER_LEN + CHUNK_HEADER_LEN]);
                buf.extend_from_slice(data);
                drop(gate);
                if !r.source.intact() {
                    // The file shrank under this read: the copy holds zeros it does not.
                    return Err(region_failed(r.source.check().err()));
                }
                let (hdr, with_payload) =
                    r.owner
                        .encode_chunk(index, fetched, &buf[HEADER_LEN + CHUNK_HEADER_LEN..]);
                buf[..hdr.len()].copy_from_slice(&hdr);
                if !with_payload {
                    buf.truncate(hdr.len());
                }
                let n = buf.len() as u64;
                if let (Some(p), false) = (&mut pacer, fetched) {
                    p.sent(n);
                }
                batch.push(buf.freeze());
                batched += n as usize;
                if batched >= BATCH_BYTES {
                    flush_batch(send, &mut batch, &mut batched).await?;
                }
                // Reading and hashing chunks is CPU work between awaits, and QUIC writes that
                // complete at once do not yield: hand the worker thread over every few chunks,
                // so the task answering urgent fetches never waits behind a whole batch (or,
                // for a region of zeros, which fills no batch, behind the whole round).
                since_yield += 1;
                if since_yield == YIELD_EVERY_CHUNKS {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
                stats.bytes_sent.fetch_add(n, Relaxed);
                stats.chunks_sent.fetch_add(1, Relaxed);
                r.metrics.sent(n);
                if let Some(round) = rounds.get_mut(&r.owner.generation()) {
                    round.chunks += 1;
                    round.bytes += n;
                }
                if let Some(pb) = &progress {
                    pb.inc(data.len() as u64);
                }
            }
            None => {
                flush_batch(send, &mut batch, &mut batched).await?;
                if migration_step(r, &mut dirty, &mut last_detect)? {
                    continue;
                }
                let streaming = r.owner.state() == OwnerState::Streaming;
                let migrating = r.migration.is_some();
                let wake = r.detector.wakeup();
                if opts.once && r.owner.is_synced() {
                    if final_scan_done {
                        return Ok(());
                    }
                    // One last look: changes made while we synced form the final round.
                    final_scan_done = true;
                    detect(r, &mut dirty, &mut last_detect)?;
                    continue;
                }
                tokio::select! {
                    item = rx.recv() => received(r, item, go, &mut rounds, &mut progress, opts, stats)?,
                    // A migration scans after each of its rounds instead (`migration_step`).
                    _ = tick.tick(), if streaming && !opts.once && !migrating => detect(r, &mut dirty, &mut last_detect)?,
                    _ = async { wake.as_ref().expect("guarded").notified().await }, if streaming && wake.is_some() && !migrating => {
                        detect(r, &mut dirty, &mut last_detect)?
                    }
                }
            }
        }
    }
}

/// Holds a round's chunks to a rate ([`SyncOptions::max_rate`]): the next may go once `next`
/// has passed, and sending `n` bytes moves `next` on by `n / rate`. A pause earns at most
/// [`PACE_BURST`] of credit, so a round after an idle spell does not start with a burst.
struct Pacer {
    bytes_per_sec: f64,
    next: tokio::time::Instant,
}

/// Most sending time a paced round may catch up at once.
const PACE_BURST: Duration = Duration::from_millis(1);

impl Pacer {
    fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: tokio::time::Instant::now(),
        }
    }

    /// When the next round chunk may go, if that is still ahead.
    fn due(&self) -> Option<tokio::time::Instant> {
        (self.next > tokio::time::Instant::now()).then_some(self.next)
    }

    fn sent(&mut self, bytes: u64) {
        let now = tokio::time::Instant::now();
        let earliest = now.checked_sub(PACE_BURST).unwrap_or(now);
        self.next =
            self.next.max(earliest) + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
    }
}

/// Chunks the send loop encodes before it lets other tasks run.
const YIELD_EVERY_CHUNKS: u32 = 8;

/// Chunk frames are cut from arenas of this size, reused once QUIC has let go of every frame
/// in them: a fresh allocation per frame costs page faults and zeroing on every chunk, which
/// perf showed as a third of the sender's time.
const ARENA_BYTES: usize = 4 << 20;

/// Arenas kept for reuse: enough to cover a stream window of frames waiting in QUIC (32 MiB)
/// plus the bytes sent and not yet acknowledged, so a long transfer cycles through memory that
/// is faulted in already (fresh arenas still cost 2% of a pull's CPU time in page faults).
const ARENAS_KEPT: usize = 16;

/// Where chunk frames are cut from: the current arena and the earlier ones, whose memory is
/// taken again once QUIC has dropped every frame cut from them.
#[derive(Default)]
struct Arenas {
    current: BytesMut,
    earlier: std::collections::VecDeque<BytesMut>,
}

impl Arenas {
    /// An empty buffer with room for `len` bytes.
    fn frame_buffer(&mut self, len: usize) -> BytesMut {
        if self.current.capacity() < len && !self.current.try_reclaim(len) {
            // The oldest arena is the likeliest to be free again.
            let free = self
                .earlier
                .iter_mut()
                .position(|a| len <= ARENA_BYTES && a.try_reclaim(ARENA_BYTES));
            let next = match free {
                Some(i) => self.earlier.remove(i).expect("index from position"),
                None => BytesMut::with_capacity(ARENA_BYTES.max(len)),
            };
            self.earlier
                .push_back(std::mem::replace(&mut self.current, next));
            if self.earlier.len() > ARENAS_KEPT {
                self.earlier.pop_front();
            }
        }
        let mut buf = self.current.split_off(0);
        // `buf` holds the arena's spare capacity; give back what this frame does not need.
        self.current = buf.split_off(len);
        buf
    }
}

/// A fetch lane of one region stream (spec §8.7): opened at the first urgent FETCH, written by
/// the task that reads the region stream, so an urgent chunk leaves as soon as it is asked for,
/// on a stream QUIC sends before the region stream's backlog.
pub(crate) struct Lane {
    conn: Connection,
    region_stream: u64,
    gate: Mutex<LaneGate>,
    source: Arc<dyn Source>,
}

/// Most chunks one urgent FETCH gets on the lane; the rest come on the region stream.
const LANE_CHUNKS_PER_FETCH: u64 = 64;

impl Lane {
    /// Answers an urgent FETCH of `count` chunks from `first` on the lane, or a FETCH_PART of
    /// chunk `first` (`part`: the bytes its reader waits for, sent ahead of the chunk).
    async fn answer(
        &self,
        stream: &mut Option<quinn::SendStream>,
        first: u64,
        count: u32,
        part: Option<(u32, u32)>,
    ) -> Result<(), StreamError> {
        if let Some(frame) = part.and_then(|p| self.read(first, Some(p))) {
            self.write(stream, &frame).await?;
            // Let the connection send the part on its own before the chunk is queued behind
            // it: on a link with large datagrams both would otherwise share the first one.
            tokio::task::yield_now().await;
        }
        // `first` and `count` come from the peer and are not checked yet (the owner checks them
        // after this): saturate, and let the gate refuse indices past the region.
        let end = first.saturating_add(u64::from(count).min(LANE_CHUNKS_PER_FETCH));
        for index in first..end {
            if let Some(frame) = self.read(index, None) {
                self.write(stream, &frame).await?;
            }
        }
        Ok(())
    }

    /// The lane frame for chunk `index`, or for bytes `offset .. offset + len` of it: read and
    /// encoded under the gate, so only while no region-stream copy was sent (spec §8.7). `None`
    /// when the gate refuses it or the bytes are not inside the chunk.
    fn read(&self, index: u64, part: Option<(u32, u32)>) -> Option<Vec<u8>> {
        let gate = self.gate.lock().expect("lane gate");
        if !gate.may_send(index) {
            return None;
        }
        let chunk = self.source.chunk(index);
        if !self.source.intact() {
            // The region stream's copy reports the resize.
            return None;
        }
        let frame = |header: &[u8], with_payload: bool, data: &[u8]| {
            let mut f = Vec::with_capacity(header.len() + data.len());
            f.extend_from_slice(header);
            if with_payload {
                f.extend_from_slice(data);
            }
            f
        };
        match part {
            None => {
                let (header, with_payload) = gate.encode(index, chunk)?;
                Some(frame(&header, with_payload, chunk))
            }
            Some((offset, len)) => {
                let end = (offset as usize).checked_add(len as usize)?;
                let data = chunk.get(offset as usize..end)?;
                let (header, with_payload) = gate.encode_part(index, offset, data)?;
                Some(frame(&header, with_payload, data))
            }
        }
    }

    /// Writes `frame` on the lane, opening it first if this is its first frame.
    async fn write(
        &self,
        stream: &mut Option<quinn::SendStream>,
        frame: &[u8],
    ) -> Result<(), StreamError> {
        let s = match stream {
            Some(s) => s,
            None => {
                let mut s = self.conn.open_uni().await?;
                s.set_priority(LANE_PRIORITY)?;
                let lane = Frame::Lane {
                    stream: self.region_stream,
                };
                s.write_all(&lane.to_vec()).await?;
                stream.insert(s)
            }
        };
        s.write_all(frame).await?;
        Ok(())
    }
}

/// QUIC send priority of fetch lanes; region streams keep the default, 0.
const LANE_PRIORITY: i32 = 1;

/// Chunk frames are handed to QUIC in batches of about this many bytes: fewer wake-ups of the
/// connection, while an urgent FETCH still waits behind at most one batch.
const BATCH_BYTES: usize = 1 << 20;

async fn flush_batch(
    send: &mut quinn::SendStream,
    batch: &mut Vec<Bytes>,
    batched: &mut usize,
) -> Result<(), StreamError> {
    if !batch.is_empty() {
        send.write_all_chunks(batch).await?;
        batch.clear();
        *batched = 0;
    }
    Ok(())
}

/// Moves a migration on while the stream is idle: after each acknowledged pre-copy round, a scan
/// and the decision to go on or freeze; once frozen, the handoff. True when something was queued
/// to send.
fn migration_step(
    r: &mut SyncRegion,
    dirty: &mut DirtySet,
    last_detect: &mut Instant,
) -> Result<bool, StreamError> {
    r.take_asked();
    let Some(phase) = r.migration.as_ref().map(Migration::phase) else {
        return Ok(false);
    };
    let streaming = r.owner.state() == OwnerState::Streaming;
    match phase {
        Phase::PreCopy if streaming && r.owner.is_synced() => {
            let run = Instant::now();
            detect(r, dirty, last_detect)?;
            let found_in = run.elapsed();
            let bytes = dirty.count() * r.owner.geometry().chunk_size();
            let m = r.migration.as_mut().expect("checked above");
            if let Some(why) = m.should_freeze(bytes, found_in) {
                if let Err(e) = tokio::task::block_in_place(|| m.freeze(why, bytes)) {
                    // Asked for through the control socket: the migration fails, the sync goes on.
                    if let Some(reply) = r.reply.take() {
                        warn!("{}: the migration asked for failed: {e}", r.owner.name());
                        let _ = reply.send(Err(format!("{e}; nothing was frozen")));
                        r.migration = None;
                        r.show_state();
                        return Ok(false);
                    }
                    return Err(WireError::new(ErrorCode::LocalIo, e.to_string()).into());
                }
                // The writers' last changes, made between the scan above and the freeze. If that
                // fails, no HANDOFF went out: this peer still owns the region and thaws them.
                let offered = detect(r, dirty, last_detect)
                    .and_then(|()| r.offer().map_err(StreamError::from));
                if offered.is_err() {
                    r.migration.as_mut().expect("checked above").refused();
                }
                offered?;
                r.show_state();
            }
            Ok(true)
        }
        // Frozen, and the stream restarted (a reconnect) before HANDOFF went out: offer it again.
        Phase::Frozen if streaming => {
            r.offer()?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn detect(
    r: &mut SyncRegion,
    dirty: &mut DirtySet,
    last_detect: &mut Instant,
) -> Result<(), StreamError> {
    *last_detect = Instant::now();
    dirty.clear();
    let SyncRegion {
        owner, detector, ..
    } = r;
    tokio::task::block_in_place(|| detector.collect(owner.known_hashes(), dirty)).map_err(|e| {
        match e {
            DetectorError::Region(e) => region_failed(Some(e)),
            e => WireError::new(ErrorCode::LocalIo, e.to_string()).into(),
        }
    })?;
    owner.on_dirty(dirty);
    Ok(())
}

/// The stream error for a region that can no longer be read as it was opened: RESIZED for a
/// file that changed size (`None`: it shrank under a read and is gone again), LOCAL_IO else.
fn region_failed(e: Option<RegionError>) -> StreamError {
    let (code, reason) = match e {
        Some(e @ RegionError::Resized { .. }) => (ErrorCode::Resized, e.to_string()),
        Some(e) => (ErrorCode::LocalIo, e.to_string()),
        None => (
            ErrorCode::Resized,
            "the region's file shrank while it was read".to_owned(),
        ),
    };
    WireError::new(code, reason).into()
}

/// Handles what the reader task passed on: a frame, or the end of the stream, which after a
/// post-copy handoff means the new owner holds every chunk (spec §8.10).
fn received(
    r: &mut SyncRegion,
    item: Option<Result<Vec<u8>, StreamError>>,
    go: &mpsc::Sender<bool>,
    rounds: &mut BTreeMap<u64, Round>,
    progress: &mut Option<ProgressBar>,
    opts: &SyncOptions,
    stats: &SyncStats,
) -> Result<(), StreamError> {
    match item {
        Some(Ok(bytes)) => {
            if on_frame(r, &bytes, rounds, progress, opts, stats)? {
                // The reader reads on only while the stream is still this owner's.
                let _ = go.try_send(r.owner.state() != OwnerState::HandedOff);
            }
            Ok(())
        }
        Some(Err(StreamError::Truncated)) | None => {
            let Some(generation) = r.owner.finish() else {
                return Err(StreamError::Truncated);
            };
            info!(
                "{}: the new owner holds every chunk of generation {generation} and its own \
                 writes: post-copy done",
                r.name()
            );
            r.show_state();
            let bytes = r.owner.bytes_sent();
            if let Some(m) = &mut r.migration {
                m.postcopy_done(bytes);
            }
            r.migration_over();
            Ok(())
        }
        Some(Err(e)) => Err(e),
    }
}

fn on_frame(
    r: &mut SyncRegion,
    bytes: &[u8],
    rounds: &mut BTreeMap<u64, Round>,
    progress: &mut Option<ProgressBar>,
    opts: &SyncOptions,
    stats: &SyncStats,
) -> Result<bool, StreamError> {
    let (frame, _) = Frame::decode(bytes, MAX_BODY)?.ok_or(StreamError::Truncated)?;
    let acked = matches!(frame, Frame::HandoffAck { .. });
    let probing = matches!(r.owner.state(), OwnerState::Probing { .. });
    let event = r.owner.handle(&frame)?;
    r.show_state();
    match (probing, r.owner.state()) {
        (true, OwnerState::HandedOff) => info!(
            "{}: the replica had taken the handoff before the link broke (HANDED_OVER)",
            r.name()
        ),
        (true, s) if !matches!(s, OwnerState::Probing { .. }) => info!(
            "{}: the replica did not take the handoff (it answered as a replica): this peer still \
             owns the region and offers it again once reconciled",
            r.name()
        ),
        _ => {}
    }
    match event {
        OwnerEvent::None => {}
        OwnerEvent::Reconciled { differing, .. } => {
            let total = r.owner.geometry().chunk_count();
            stats.reconciles.fetch_add(1, Relaxed);
            let split = match r.promotion.as_ref().filter(|_| differing > 0) {
                Some(p) => {
                    let known = r.owner.known_hashes();
                    let fenced = (r.owner.pending().iter())
                        .filter(|&i| known[i as usize] == p.hashes[i as usize])
                        .count() as u64;
                    format!(
                        " ({fenced} written by the fenced owner after generation {}, discarded; \
                         {} changed here since the promotion)",
                        p.generation,
                        differing - fenced
                    )
                }
                None => String::new(),
            };
            info!(
                "{}: replica reconciled, {differing} of {total} chunks differ{split}",
                r.name()
            );
            if opts.progress && differing > 0 {
                let pb = ProgressBar::new(differing * r.owner.geometry().chunk_size());
                pb.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("template"),
                );
                pb.set_message(r.name().to_owned());
                *progress = Some(pb);
            }
        }
        OwnerEvent::Acked { generation } => {
            let mut chunks = 0;
            let mut bytes = 0;
            let mut detected = None;
            let mut started = None;
            let mut position = None;
            while let Some(e) = rounds.first_entry() {
                if *e.key() > generation {
                    break;
                }
                let round = e.remove();
                stats.log_round(&round);
                chunks += round.chunks;
                bytes += round.bytes;
                detected.get_or_insert(round.detected);
                started.get_or_insert(round.started);
                position = Some(round.position);
            }
            if let Some(p) = position {
                r.detector.acknowledged(p);
            }
            let lag = detected.map_or(Duration::ZERO, |d| d.elapsed());
            stats.bytes_acked.fetch_add(bytes, Relaxed);
            stats.last_lag_us.store(lag.as_micros() as u64, Relaxed);
            r.metrics.acked(generation, lag);
            if let Some(pb) = progress.take() {
                pb.finish_and_clear();
            }
            info!(
                "{}: generation {generation} acknowledged: {chunks} chunks changed, {} sent, lag {:.1} ms",
                r.name(),
                human_bytes(bytes),
                lag.as_secs_f64() * 1e3
            );
            if let Some(m) = &mut r.migration {
                // Sending time, for the rate: from the round's first frame to its ACK.
                let duration = started.map_or(lag, |s| s.elapsed());
                m.round_acked(RoundReport {
                    generation,
                    chunks,
                    bytes,
                    duration,
                });
            }
        }
        OwnerEvent::PeerError { code, reason } => {
            let name = r.owner.name().to_owned();
            // HANDED_OVER: the replica owns the region (a handoff this peer does not remember);
            // FENCED: another peer owns it at a newer epoch (spec §8.8). Either way the writers
            // must not go on here. In Probing only STATE or HANDED_OVER settles the lost HANDOFF
            // (spec §8.6): any other answer leaves the writers frozen too.
            let handed_over =
                code == ErrorCode::HandedOver as u32 || code == ErrorCode::Fenced as u32;
            if let Some(m) = r.migration.as_mut().filter(|m| m.phase() == Phase::Frozen) {
                if !handed_over && !probing {
                    warn!("{name}: the replica refused the handoff; writers thawed");
                    m.refused();
                }
            }
            return Err(StreamError::Peer { code, reason });
        }
        OwnerEvent::HandedOff { generation } => {
            let serving = matches!(r.owner.state(), OwnerState::Serving { .. });
            let stale = r.owner.pending().count();
            let bytes = r.owner.bytes_sent();
            match (serving, r.migration.as_ref().map(Migration::phase)) {
                (false, _) => info!(
                    "{}: ownership handed to the replica at generation {generation}",
                    r.name()
                ),
                (true, Some(Phase::HandedOff)) => info!(
                    "{}: the new owner still lacks chunks of generation {generation}: serving them \
                     again",
                    r.name()
                ),
                (true, Some(Phase::PreCopy)) => info!(
                    "{}: the replica took the region in a post-copy handoff at generation \
                     {generation} that is unfinished: serving the chunks it still lacks",
                    r.name()
                ),
                (true, _) => info!(
                    "{}: ownership handed to the replica at generation {generation} (post-copy): \
                     serving the {stale} chunks it lacks",
                    r.name()
                ),
            }
            let Some(m) = &mut r.migration else {
                return Ok(acked);
            };
            if m.phase() == Phase::PreCopy {
                // A restarted `peer migrate` learns that the new owner took the region in a
                // post-copy handoff and still fetches: the writers stop for good here.
                tokio::task::block_in_place(|| {
                    m.freeze("the new owner took the region already".into(), 0)
                })
                .map_err(|e| WireError::new(ErrorCode::LocalIo, e.to_string()))?;
            }
            if m.phase() == Phase::Frozen {
                m.handed_off(generation, serving.then_some(stale), bytes);
            }
            if !serving {
                r.migration_over();
            }
        }
    }
    Ok(acked)
}

/// Formats a byte count with a binary unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
