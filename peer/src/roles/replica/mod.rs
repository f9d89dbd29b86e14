//! The replica side of `peer serve`: accepts connections from trusted peers and, for every region
//! stream they open, keeps DIR/NAME identical to the owner's region, as far as the [`policy`]
//! lets each peer own or mount it.

pub mod archive;
mod lead;
pub mod policy;
pub mod postcopy;

pub use archive::Archive;
pub use policy::{Policy, PolicyError, Rule};
pub use postcopy::OwnedRegion;

use crate::detector::{Marks, Watchers};
use crate::nbd::exports::{HoldsWrites, Writes};
use crate::net::identity::Fingerprint;
use crate::net::transport::{fail_stream, FrameReader, PeerEndpoint, Session, StreamError};
use crate::ops::metrics::{RegionMetrics, Role};
use crate::region::{
    pending_journals, Journal, Loaded, Recovered, RegionError, ReplicaDir, ReplicaFile,
};
use crate::roles::owner::{drive_stream, SyncOptions, SyncRegion, SyncStats};
use futures::FutureExt;
use memsync_protocol::wire::{feature, ErrorCode, Frame, WireError, MAX_BODY};
use memsync_protocol::{Local, Replica, ReplicaEvent, ReplicaState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Which stream holds each region name. One stream per name at a time: a newer stream from the
/// same peer (a reconnect after a crash), or one of a newer ownership epoch from any peer (spec
/// §8.8), takes the region over once the older one has stopped; another peer's stream is refused
/// with REGION_BUSY.
struct Regions {
    policy: Policy,
    /// This peer's fingerprint, the owner of the regions it took over.
    me: Fingerprint,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// The regions this peer took over in a handoff while it runs: post-copy ones fetch what
    /// they lack from the old owner, and with `--nbd-dir` each is served over NBD.
    owned: Mutex<HashMap<String, Arc<OwnedRegion>>>,
    /// Those served over NBD (`--nbd-dir`), whose writes a migration of them holds.
    exported: Mutex<HashMap<String, Arc<OwnedRegion>>>,
}

/// How a stream holding a region is asked to stop, and what it tells its owner then.
#[derive(Default)]
struct Cancel {
    notify: Notify,
    why: Mutex<Option<WireError>>,
}

impl Cancel {
    fn cancel(&self, why: WireError) {
        *self.why.lock().expect("cancel lock") = Some(why);
        self.notify.notify_one();
    }

    async fn cancelled(&self) -> WireError {
        self.notify.notified().await;
        self.why
            .lock()
            .expect("cancel lock")
            .take()
            .unwrap_or_else(|| {
                WireError::new(
                    ErrorCode::RegionBusy,
                    "a newer stream took this region over",
                )
            })
    }
}

#[derive(Default)]
struct Slot {
    /// Held by the stream that writes the replica, for as long as it lives.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Who holds it, and how to ask them to stop.
    holder: Mutex<Option<(Fingerprint, Arc<Cancel>)>>,
    /// The write marks of the mounts served from the replica file: the stream writing it marks
    /// every write there, which is how those mounts learn what changed (nothing is scanned).
    mounts: Watchers,
    /// The replica's figures, kept across its streams (`peer status` lists it while serve runs).
    metrics: Mutex<Option<RegionMetrics>>,
    /// Its upload to an object store (`serve --to`), across its streams.
    archiving: Mutex<Option<archive::Archiving>>,
}

impl Slot {
    /// The replica's metrics, created with its first stream.
    fn metrics(&self, name: &str) -> RegionMetrics {
        self.metrics
            .lock()
            .expect("slot lock")
            .get_or_insert_with(|| RegionMetrics::new(name, Role::Replica))
            .clone()
    }

    /// Archives the replica (of `geometry`) with `archive`, unless that already runs.
    fn archive(
        self: &Arc<Self>,
        archive: &Arc<Archive>,
        dir: &Arc<ReplicaDir>,
        name: &str,
        geometry: memsync_protocol::Geometry,
    ) {
        let mut running = self.archiving.lock().expect("slot lock");
        if !running.as_ref().is_some_and(|a| a.covers(geometry)) {
            // The one before (of another size, or stopped) ends first.
            *running = None;
            let slot = self.clone();
            *running = Some(archive::start(
                archive.clone(),
                slot,
                dir.clone(),
                name,
                geometry,
            ));
        }
    }
}

/// A stream's hold on a region name.
struct Claim {
    slot: Arc<Slot>,
    cancel: Arc<Cancel>,
    _writer: tokio::sync::OwnedMutexGuard<()>,
}

impl Regions {
    fn slot(&self, name: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("regions lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    async fn claim(&self, name: &str, who: Fingerprint, epoch: u64) -> Result<Claim, WireError> {
        let newer = self.policy.admits(name, &self.me, &who, epoch)?;
        let slot = self.slot(name);
        if let Some((holder, cancel)) = &*slot.holder.lock().expect("slot lock") {
            let why = match (*holder == who, newer) {
                (true, _) => WireError::new(
                    ErrorCode::RegionBusy,
                    "a newer stream from the same peer took this region over",
                ),
                // The older epoch's stream ends before the newer one is answered (spec §8.8).
                (false, true) => WireError::new(
                    ErrorCode::Fenced,
                    format!(
                        "peer {who} owns region {name} at a newer epoch ({epoch}): peer {holder} \
                         is fenced"
                    ),
                ),
                (false, false) => {
                    return Err(WireError::new(
                        ErrorCode::RegionBusy,
                        format!("region {name} is being replicated here by peer {holder}"),
                    ))
                }
            };
            cancel.cancel(why);
        }
        let writer = slot.writer.clone().lock_owned().await;
        // Again, now that the older stream of the region ended: it may have taken the region
        // over meanwhile, and answering OPEN would then be a second owner's STATE (spec §8.2,
        // "One stream per region and owner").
        self.policy.claim(name, &self.me, &who, epoch)?;
        let cancel = Arc::new(Cancel::default());
        *slot.holder.lock().expect("slot lock") = Some((who, cancel.clone()));
        Ok(Claim {
            slot,
            cancel,
            _writer: writer,
        })
    }
}

impl Regions {
    /// The post-copy region `name` that peer `who`, its old owner at `epoch`, may serve on a new
    /// stream: only while chunks are missing, and only for the geometry it was taken at.
    fn resuming(
        &self,
        name: &str,
        who: &Fingerprint,
        epoch: u64,
        geometry: memsync_protocol::Geometry,
    ) -> Option<Arc<OwnedRegion>> {
        let owned = self.owned.lock().expect("owned lock").get(name)?.clone();
        let h = owned.handover();
        (h.from == *who && h.epoch == epoch && h.geometry == geometry && owned.missing() > 0)
            .then_some(owned)
    }

    /// Forgets `owned` once it lacks nothing: no old owner's stream has anything left to serve.
    fn settled(&self, owned: &Arc<OwnedRegion>) {
        let mut map = self.owned.lock().expect("owned lock");
        if owned.missing() == 0 && map.get(owned.name()).is_some_and(|o| Arc::ptr_eq(o, owned)) {
            map.remove(owned.name());
        }
    }

    /// Keeps `owned` while it lacks chunks (its old owner's streams find it here) and, with
    /// `--nbd-dir`, serves it over NBD (the export keeps it as long as serve runs); returns the
    /// export's URI.
    async fn own(&self, owned: Arc<OwnedRegion>, opts: &ServeOptions) -> Option<String> {
        let name = owned.name().to_owned();
        if owned.missing() > 0 {
            self.owned
                .lock()
                .expect("owned lock")
                .insert(name.clone(), owned.clone());
        }
        let dir = opts.nbd_dir.as_ref()?;
        let listen = crate::nbd::Listen::Unix(dir.join(format!("{name}.sock")));
        let server = match crate::nbd::NbdServer::bind(&listen).await {
            Ok(s) => s,
            Err(e) => {
                warn!("region {name}: serving it over NBD at {listen}: {e}");
                return None;
            }
        };
        let uri = server.uri(&name);
        info!("region {name}: served over NBD at {uri}");
        self.exported
            .lock()
            .expect("owned lock")
            .insert(name.clone(), owned.clone());
        tokio::spawn(server.serve(name, Arc::new(crate::nbd::OwnedExport(owned))));
        Some(uri)
    }

    /// The chunks region `name` still lacks after a post-copy handoff, if any.
    fn still_missing(&self, name: &str) -> Option<u64> {
        let owned = self.owned.lock().expect("owned lock");
        owned.get(name).map(|o| o.missing()).filter(|&n| n > 0)
    }

    /// The NBD export of region `name`, owned here, if it has one.
    fn owned_export(&self, name: &str) -> Option<Arc<OwnedRegion>> {
        self.exported.lock().expect("owned lock").get(name).cloned()
    }

    /// Forgets region `name` as owned here: it was handed on (its export refuses writes now).
    fn handed_on(&self, name: &str) {
        self.owned.lock().expect("owned lock").remove(name);
        self.exported.lock().expect("owned lock").remove(name);
    }
}

/// At the start of serve: the regions a post-copy handoff left unfinished (their old owner serves
/// the rest when it reconnects) and, with `--nbd-dir`, every region owned here since a handoff,
/// served again.
async fn reopen_owned(dir: &ReplicaDir, active: &Regions, opts: &ServeOptions) {
    let handed: HashMap<String, u64> = active.policy.handed_here().into_iter().collect();
    for name in postcopy::recorded(dir) {
        if !handed.contains_key(&name) {
            // Recorded before a HANDOFF_ACK that never went out: the old owner still owns it.
            info!("region {name}: dropping the record of a handoff that did not complete");
            let _ = std::fs::remove_file(dir.path().join(format!(".{name}.postcopy")));
        }
    }
    for (name, epoch) in handed {
        let metrics = active.slot(&name).metrics(&name);
        let owned = match OwnedRegion::reopen(dir, &name, opts.tolerance(), metrics.clone()) {
            Ok(Some(o)) if o.handover().epoch == epoch => o,
            Ok(Some(_)) => {
                warn!("region {name}: its post-copy record names another epoch than its owners line; not served");
                continue;
            }
            Ok(None) if opts.nbd_dir.is_none() => continue,
            // Handed over whole before this start: served as the file it is.
            Ok(None) => {
                let (shift, me) = (MOUNT_CHUNK_SHIFT, active.me);
                match OwnedRegion::whole(dir, &name, epoch, shift, me, opts.tolerance(), metrics) {
                    Ok(o) => o,
                    Err(e) => {
                        warn!("region {name}: not served over NBD: {e}");
                        continue;
                    }
                }
            }
            Err(e) => {
                warn!("region {name}: {e}; not served until an operator repairs or removes the record");
                continue;
            }
        };
        if owned.missing() > 0 {
            info!(
                "region {name}: post-copy unfinished, {} chunks still with peer {}; fetched when it reconnects",
                owned.missing(),
                owned.handover().from
            );
        }
        // A handoff of it was in flight when serve stopped: the peer may own it now. Its
        // writes wait until that peer reconnects and settles it (as owner, or asking for it).
        if lead::handing(dir, &name).exists() {
            info!("region {name}: a handoff of it was in flight; its writes are held until its peer reconnects");
            owned.set_writes(Writes::Held);
        }
        active.own(owned, opts).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut holder = self.slot.holder.lock().expect("slot lock");
        if holder
            .as_ref()
            .is_some_and(|(_, c)| Arc::ptr_eq(c, &self.cancel))
        {
            *holder = None;
        }
    }
}

/// Serves replicas into `dir` until the endpoint closes, to every trusted peer (no rules), each
/// region kept for its first owner.
pub async fn serve(ep: &PeerEndpoint, dir: ReplicaDir) -> Result<(), PolicyError> {
    let policy = Policy::load(dir.path(), Vec::new(), Vec::new())?;
    serve_with(ep, dir, policy, ServeOptions::default()).await;
    Ok(())
}

/// How `serve` runs.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The owner side of the lazy mounts it serves (e.g. a rate limit on their background push).
    pub mounts: SyncOptions,
    /// A shell command run once this peer took a region over in a handoff (to start the workload
    /// here), with `MEMSYNC_REGION` (the name), `MEMSYNC_PATH` (DIR/NAME) and
    /// `MEMSYNC_GENERATION` in its environment.
    pub on_handoff: Option<String>,
    /// When an ACK goes out: once a generation is applied, or once it is on stable storage.
    pub durability: Durability,
    /// Stage each generation in a journal and apply it whole at its COMMIT, so the replica file
    /// always holds exactly one committed generation (crash-consistent; implies durable ACKs).
    pub consistent: bool,
    /// Also keep every replica in an object store (`serve --to`).
    pub archive: Option<Arc<Archive>>,
    /// Serve every region taken over here (in a handoff) as an NBD export, at the Unix socket
    /// DIR/NAME.sock of this directory: during a post-copy handoff it is the only way to use the
    /// region before every chunk is here, since a read of a missing chunk waits for it.
    pub nbd_dir: Option<std::path::PathBuf>,
    /// How long a read or write of a chunk still missing after a post-copy handoff waits while
    /// the old owner is unreachable, before it fails ([`DEFAULT_OUTAGE_TOLERANCE`] if `None`).
    pub outage_tolerance: Option<std::time::Duration>,
    /// How a region owned here finds its changes while it streams them (spec §8.6 step 5).
    pub owned_detector: OwnedDetector,
}

/// How `peer serve` finds the changes of a region it owns since a handoff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OwnedDetector {
    /// Hash DIR/NAME every interval: sees every writer of the file.
    #[default]
    Hash,
    /// Mark the writes made through the region's NBD export (`--nbd-dir`): precise, nothing is
    /// scanned, and the export must be the region's only writer.
    Nbd,
}

/// How long reads of chunks still missing after a post-copy handoff wait out an unreachable old
/// owner by default.
pub const DEFAULT_OUTAGE_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(60);

impl ServeOptions {
    fn tolerance(&self) -> std::time::Duration {
        self.outage_tolerance.unwrap_or(DEFAULT_OUTAGE_TOLERANCE)
    }
}

/// What a replica's ACK{g} promises its owner (spec §8.4, STATE flag DURABLE), like PostgreSQL's
/// `synchronous_commit` levels or DRBD's protocols B and C.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// The generation is applied: in the page cache here, lost if this machine loses power.
    #[default]
    None,
    /// The generation is on stable storage here (fdatasync(2) before the ACK): it survives a
    /// crash or power loss of this machine.
    Fsync,
}

impl From<SyncOptions> for ServeOptions {
    fn from(mounts: SyncOptions) -> Self {
        ServeOptions {
            mounts,
            ..ServeOptions::default()
        }
    }
}

/// [`serve`], with `policy` and `opts`.
pub async fn serve_with(ep: &PeerEndpoint, dir: ReplicaDir, policy: Policy, opts: ServeOptions) {
    tokio::task::block_in_place(|| recover_journals(&dir));
    let opts = Arc::new(opts);
    let active = Arc::new(Regions {
        policy,
        me: ep.fingerprint(),
        slots: Mutex::default(),
        owned: Mutex::default(),
        exported: Mutex::default(),
    });
    let dir = Arc::new(dir);
    reopen_owned(&dir, &active, &opts).await;
    while let Some(incoming) = ep.endpoint.accept().await {
        let (dir, active, opts) = (dir.clone(), active.clone(), opts.clone());
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            match PeerEndpoint::accept(incoming).await {
                Ok(session) => serve_session(session, dir, active, opts).await,
                Err(e) => warn!("connection from {addr} refused: {e}"),
            }
        });
    }
}

/// Finishes the rounds a crash left in the journals of `dir` (`--consistent`), so that every
/// replica holds one committed generation before any peer or reader is served. [`serve_with`]
/// starts with it; calling it before is harmless (it then finds nothing).
pub fn recover_journals(dir: &ReplicaDir) {
    for (name, geom) in pending_journals(dir) {
        let done = ReplicaFile::open(dir, &name, geom, true)
            .and_then(|mut f| crate::region::recover(dir, &name, &mut f));
        match done {
            Ok(r) => report_recovery(&name, &r),
            Err(e) => warn!("region {name}: recovering its journal: {e}"),
        }
    }
}

fn report_recovery(name: &str, r: &Recovered) {
    match r {
        Recovered::Nothing => {}
        Recovered::Replayed { generation, chunks } => info!(
            "region {name}: applied generation {generation} again from its journal ({chunks} chunks)"
        ),
        Recovered::Discarded { chunks } => info!(
            "region {name}: dropped an unfinished round from its journal ({chunks} chunks); the replica holds its last committed generation"
        ),
    }
}

async fn serve_session(
    session: Session,
    dir: Arc<ReplicaDir>,
    active: Arc<Regions>,
    opts: Arc<ServeOptions>,
) {
    let addr = session.conn.remote_address();
    let Some(who) = session.peer_fingerprint() else {
        warn!("connection from {addr} without a certificate");
        return;
    };
    info!("peer {who} connected from {addr}");
    loop {
        match session.conn.accept_bi().await {
            Ok((send, recv)) => {
                let (dir, active, opts) = (dir.clone(), active.clone(), opts.clone());
                // Mounts get a fetch lane when the peer takes them (spec §8.7).
                let lane = (session.negotiated.features & feature::FETCH_LANE != 0)
                    .then(|| session.conn.clone());
                let max_body = session.negotiated.max_body;
                // Durable ACKs are promised only to a peer that knows the flag (spec §8.4).
                // A consistent replica syncs each generation before its ACK anyway.
                let durable = (opts.durability == Durability::Fsync || opts.consistent)
                    && session.negotiated.features & feature::DURABLE != 0;
                let stream = Stream {
                    durable,
                    epochs: session.negotiated.features & feature::EPOCH != 0,
                    dir,
                    active,
                    who,
                    max_body,
                    lane,
                    opts,
                };
                tokio::spawn(replica_stream(send, recv, stream));
            }
            Err(e) => {
                info!("peer {who} at {addr} disconnected: {e}");
                return;
            }
        }
    }
}

/// What a region stream of a session is served with.
struct Stream {
    dir: Arc<ReplicaDir>,
    active: Arc<Regions>,
    /// The peer's fingerprint.
    who: Fingerprint,
    /// The body size the peer accepts.
    max_body: u32,
    /// The connection, when the peer takes fetch lanes.
    lane: Option<quinn::Connection>,
    opts: Arc<ServeOptions>,
    /// Each ACK waits for stable storage.
    durable: bool,
    /// The peer knows ownership epochs (spec §8.8).
    epochs: bool,
}

/// Serves one region stream: the replica role, or the owner role of a region owned here (a lazy
/// mount, or the stream turned around after a handoff, spec §8.6 step 5), as often as the region
/// changes hands on it.
async fn replica_stream(send: quinn::SendStream, recv: quinn::RecvStream, s: Stream) {
    let mut stream = (send, FrameReader::new(recv, MAX_BODY));
    loop {
        let (send, reader) = stream;
        let Some((l, send, reader)) = replica_role(send, reader, &s).await else {
            return;
        };
        match lead::lead(send, reader, l, &s).await {
            Some(turned) => stream = turned,
            None => return,
        }
    }
}

/// The replica role on a stream, until it ends or this peer leads the region on it.
async fn replica_role(
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    s: &Stream,
) -> Option<(lead::Lead, quinn::SendStream, FrameReader)> {
    let mut claim = None;
    let mut replica = Replica::new(0);
    // HASHES frames must fit the body size the owner accepts.
    replica.set_max_body(s.max_body);
    replica.set_durable(s.durable);
    match receive(&mut send, &mut reader, &mut replica, s, &mut claim).await {
        Ok(Next::Lead(l)) => return Some((l, send, reader)),
        Ok(Next::Mount(mount)) => {
            let slot = s.active.slot(&mount);
            let lane = s.lane.clone();
            serve_mount(send, reader, &s.dir, &mount, &slot, lane, &s.opts.mounts).await
        }
        Ok(Next::Fetch(owned)) => {
            let name = owned.name().to_owned();
            match owned.fetch_on(send, reader, replica).await {
                Ok(()) => {}
                Err(e) => warn!(
                    "region {name}: the old owner's stream ended with {} chunks still missing: \
                     {e}; they are fetched when it reconnects",
                    owned.missing()
                ),
            }
            s.active.settled(&owned);
        }
        Ok(Next::Done) => {
            let _ = send.finish();
        }
        Err(StreamError::Wire(w)) => {
            warn!("region stream closed: {w}");
            fail_stream(&mut send, &mut reader, &w).await;
        }
        Err(e) => info!("region stream ended: {e}"),
    }
    None
}

/// Serves a lazy mount of the replica DIR/NAME: this peer takes the owner role on the stream,
/// reading the replica file, and keeps pushing what changes in it as it receives updates from
/// the region's owner. Those updates are the only writes to the file (DIR is `serve`'s to
/// write), so the stream writing them marks them for the mount and nothing is ever scanned.
async fn serve_mount(
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    dir: &ReplicaDir,
    name: &str,
    slot: &Slot,
    lane: Option<quinn::Connection>,
    opts: &SyncOptions,
) {
    let file = match dir.open_existing(name) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let e = WireError::new(ErrorCode::NotFound, format!("no region named {name} here"));
            fail_stream(&mut send, &mut reader, &e).await;
            return;
        }
        Err(e) => {
            warn!("mount of {name} refused: {e}");
            fail_stream(&mut send, &mut reader, &refusal(e)).await;
            return;
        }
    };
    // Marks are taken from before the first chunk is read: a write is either in the file when
    // its chunk is read or marked for sending again.
    let watch = |marks: &Arc<Marks>| slot.mounts.watch(marks);
    let path = dir.display(name);
    let mut region = match SyncRegion::for_mount(file, &path, name, MOUNT_CHUNK_SHIFT, watch) {
        Ok(r) => r,
        Err(e) => {
            let e = WireError::new(ErrorCode::LocalIo, e.to_string());
            fail_stream(&mut send, &mut reader, &e).await;
            return;
        }
    };
    info!("region {name}: serving a lazy mount");
    let stats = SyncStats::default();
    // A mount is never handed over: its stream ends with it.
    if let Err(e) = drive_stream(send, reader, &mut region, opts, &stats, lane, None).await {
        info!("mount of {name} ended: {e}");
    }
}

/// Takes region `name` over before the handoff is acknowledged: only from its recorded owner,
/// with the replica's bytes on stable storage, and recorded as owned here (so no peer's OPEN writes
/// it again, across restarts too).
async fn take_over(
    file: &mut ReplicaFile,
    name: &str,
    generation: u64,
    epoch: u64,
    s: &Stream,
) -> Result<(), WireError> {
    if !s.active.policy.may_take_over(name, &s.who, epoch) {
        return Err(WireError::new(
            ErrorCode::Forbidden,
            format!(
                "peer {} does not own region {name} here and cannot hand it over",
                s.who
            ),
        ));
    }
    sync(file)?;
    s.active.policy.became_owner(name, epoch, &s.who)?;
    debug!(
        "region {name}: taking it over at generation {generation}, epoch {}",
        epoch + 1
    );
    Ok(())
}

/// Puts every chunk written to `file` so far on stable storage (before a durable ACK, and before
/// HANDOFF_ACK).
fn sync(file: &mut ReplicaFile) -> Result<(), WireError> {
    tokio::task::block_in_place(|| file.sync())
        .map_err(|e| WireError::new(ErrorCode::LocalIo, format!("syncing the replica: {e}")))
}

/// Starts the `--on-handoff` command for region `name`, now owned here at `path` (and served
/// over NBD at `nbd`); its exit is logged.
fn run_on_handoff(
    cmd: &str,
    name: &str,
    path: &std::path::Path,
    generation: u64,
    nbd: Option<&str>,
) {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("MEMSYNC_REGION", name)
        .env("MEMSYNC_PATH", path)
        .env("MEMSYNC_GENERATION", generation.to_string());
    if let Some(uri) = nbd {
        command.env("MEMSYNC_NBD", uri);
    }
    let spawned = command.spawn();
    match spawned {
        Ok(mut child) => {
            let name = name.to_owned();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(s) => info!("region {name}: on-handoff command ended: {s}"),
                    Err(e) => warn!("region {name}: on-handoff command: {e}"),
                }
            });
        }
        Err(e) => warn!("region {name}: starting the on-handoff command: {e}"),
    }
}

/// What the peer is told when DIR/NAME cannot be used: the replica's path stays this peer's own,
/// only the reason goes out.
fn refusal(e: RegionError) -> WireError {
    let reason = match &e {
        RegionError::Refused { reason, .. } => format!("the replica here {reason}"),
        e => e.to_string(),
    };
    WireError::new(ErrorCode::LocalIo, reason)
}

/// Chunk size of mounts served from replicas: 64 KiB.
const MOUNT_CHUNK_SHIFT: u8 = 16;

/// What a region stream goes on with once [`receive`] returns.
enum Next {
    /// Nothing: the stream ends.
    Done,
    /// The peer mounts replica NAME lazily: this peer serves it as the owner.
    Mount(String),
    /// This peer took the region over in a post-copy handoff and fetches what it lacks from the
    /// old owner on this stream ([`OwnedRegion::fetch_on`]).
    Fetch(Arc<OwnedRegion>),
    /// This peer owns the region and streams it as its owner on this stream: the old owner's,
    /// turned around after a plain handoff, or a MOUNT of it.
    Lead(lead::Lead),
}

async fn receive(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    replica: &mut Replica,
    s: &Stream,
    claim: &mut Option<Claim>,
) -> Result<Next, StreamError> {
    let (dir, active, who) = (&*s.dir, &*s.active, s.who);
    let mut file: Option<(ReplicaFile, String)> = None;
    // The ownership epoch of the stream's OPEN.
    let mut epoch = memsync_protocol::epoch::FIRST;
    // With --consistent: the open round, staged.
    let mut journal: Option<Journal> = None;
    // Shown as disconnected once the stream ends, unless this peer took the region over.
    struct Shown(Option<RegionMetrics>);
    impl Drop for Shown {
        fn drop(&mut self) {
            if let Some(m) = &self.0 {
                m.set_state("disconnected");
            }
        }
    }
    let mut shown = Shown(None);
    let writing = |e: std::io::Error| WireError::new(ErrorCode::LocalIo, format!("writing: {e}"));
    loop {
        // Chunks held for one write with the next ones land before the stream is waited on.
        if let Some((f, _)) = file.as_mut().filter(|(f, _)| f.holding()) {
            if reader.ready().now_or_never().is_none() {
                f.land().map_err(writing)?;
            }
        }
        let next = match claim.as_ref().map(|c| c.cancel.clone()) {
            Some(cancel) => tokio::select! {
                next = reader.next() => next?,
                why = cancel.cancelled() => return Err(why.into()),
            },
            None => reader.next().await?,
        };
        let Some(frame) = next else {
            return Ok(Next::Done);
        };
        if let (Frame::Mount { name }, ReplicaState::AwaitOpen) = (&frame, replica.state()) {
            active
                .policy
                .may_mount(name, &who)
                .inspect_err(|e| warn!("{e}"))?;
            // Owned here since a handoff: its writes are this peer's, found by hashing. While a
            // post-copy handoff still fetches chunks, DIR/NAME holds stale ones: not mounted.
            if let Some(n) = active.still_missing(name) {
                let e = WireError::new(
                    ErrorCode::RegionBusy,
                    format!(
                        "region {name} is still arriving from its old owner (post-copy, {n} \
                         chunks missing); mount it once they are here"
                    ),
                );
                warn!("{e}");
                return Err(e.into());
            }
            if let Some(epoch) = active.policy.owned_here(name) {
                return Ok(Next::Lead(lead::Lead {
                    name: (*name).to_owned(),
                    epoch,
                    geometry: None,
                    handed: None,
                }));
            }
            return Ok(Next::Mount((*name).to_owned()));
        }
        // A post-copy HANDOFF ends with the stream, even with nothing missing (spec §8.10).
        let postcopy_handoff = matches!(frame, Frame::Handoff { postcopy: true, .. });
        match replica.handle(&frame)? {
            ReplicaEvent::None => {}
            ReplicaEvent::Opened {
                name,
                geometry,
                epoch: e,
                ..
            } => {
                // Without the EPOCH feature an OPEN is of the first epoch (spec §8.8).
                epoch = e.unwrap_or(memsync_protocol::epoch::FIRST);
                // The old owner of a post-copy handoff still under way, back (its probe, or a
                // `peer migrate` run again): it serves what this peer still lacks (spec §8.10).
                if let Some(owned) = active.resuming(name, &who, epoch, geometry) {
                    replica.resume_postcopy(owned.handover().generation, &owned.missing_set())?;
                    info!(
                        "region {name}: the old owner is back; fetching the {} chunks still missing",
                        owned.missing()
                    );
                    return Ok(Next::Fetch(owned));
                }
                *claim = Some(
                    active
                        .claim(name, who, epoch)
                        .await
                        .inspect_err(|e| warn!("{e}"))?,
                );
                // Another peer owns the region now (a newer epoch): an export of it from when
                // this peer owned it refuses writes (it may have been left holding them by a
                // handoff whose answer was lost).
                lead::settled(dir, name);
                if let Some(o) = active.owned_export(name) {
                    o.set_writes(Writes::Refused);
                    active.handed_on(name);
                }
                // Mounts of the region learn of each run of chunks once it is in the file.
                let slot = claim.as_ref().map(|c| c.slot.clone());
                // `name` passed check_name in the decoder (no separators, no leading dot), and
                // the replica directory opens it without following links.
                let (f, j) = tokio::task::block_in_place(|| {
                    let mut f = ReplicaFile::open(dir, name, geometry, s.durable)?;
                    if let Some(slot) = slot {
                        f.on_landed(move |chunks| {
                            let start = geometry.offset(chunks.start);
                            let end = geometry.range(chunks.end - 1).end as u64;
                            slot.mounts.mark(start, end - start);
                        });
                    }
                    report_recovery(name, &crate::region::recover(dir, name, &mut f)?);
                    let j = s
                        .opts
                        .consistent
                        .then(|| Journal::create(dir, name, geometry))
                        .transpose()?;
                    Ok((f, j))
                })
                .map_err(|e: RegionError| {
                    warn!("region {name} refused: {e}");
                    refusal(e)
                })?;
                journal = j;
                // Mounts of the region check its (possibly new) size.
                if let Some(c) = claim {
                    c.slot.mounts.each(Marks::wake);
                    if let Some(a) = &s.opts.archive {
                        c.slot.archive(a, &s.dir, name, geometry);
                    }
                    let m = c.slot.metrics(name);
                    m.set_peer(who.to_string());
                    m.set_state("receiving");
                    m.generation(replica.committed());
                    shown.0 = Some(m);
                }
                replica.set_committed(f.committed())?;
                replica.local_state(Local::Hashes(f.hashes()))?;
                let found = match f.loaded() {
                    Loaded::Reused { rehashed } => {
                        format!("hashes from its index, {rehashed} chunks rehashed")
                    }
                    Loaded::Rebuilt { reason } => {
                        format!("index rebuilt ({reason}), every chunk hashed")
                    }
                };
                info!(
                    "region {name}: {} bytes in {} chunks, {found}; reconciling",
                    geometry.size(),
                    geometry.chunk_count()
                );
                file = Some((f, name.to_owned()));
            }
            ReplicaEvent::Write { index, data } => {
                let (f, _) = file.as_mut().ok_or_else(|| {
                    WireError::new(ErrorCode::Internal, "write before the region opened")
                })?;
                if let Some(m) = &shown.0 {
                    m.received(data.map_or(0, |d| d.len() as u64));
                }
                if let Some(j) = &mut journal {
                    // Applied, and shown to mounts, at COMMIT.
                    j.stage(index, data).map_err(writing)?;
                } else {
                    f.write_chunk(index, data).map_err(writing)?;
                }
            }
            ReplicaEvent::Committed { generation } => {
                debug!("generation {generation} applied");
                if let Some(m) = &shown.0 {
                    m.generation(generation);
                    m.set_state("receiving");
                }
                // Durable: the ACK queued goes out below, once the generation is on stable
                // storage. Otherwise each generation starts on its way to the disk, so that a
                // handoff (which waits for stable storage) finds little left to write.
                if let Some((f, _)) = &mut file {
                    if let Some(j) = &mut journal {
                        tokio::task::block_in_place(|| j.apply(generation, f)).map_err(|e| {
                            WireError::new(
                                ErrorCode::LocalIo,
                                format!("applying generation {generation}: {e}"),
                            )
                        })?;
                    } else if s.durable {
                        sync(f)?;
                    } else {
                        tokio::task::block_in_place(|| f.start_writeback()).map_err(writing)?;
                    }
                    tokio::task::block_in_place(|| f.commit(generation)).map_err(|e| {
                        WireError::new(ErrorCode::LocalIo, format!("recording the commit: {e}"))
                    })?;
                }
            }
            ReplicaEvent::BecameOwner { generation } => {
                let (f, name) = file.as_mut().ok_or_else(|| {
                    WireError::new(ErrorCode::Internal, "handoff before the region opened")
                })?;
                let postcopy = replica.state() == ReplicaState::PostCopy;
                // Post-copy: what is missing is on stable storage before HANDOFF_ACK (§8.10).
                let owned = if postcopy || s.opts.nbd_dir.is_some() {
                    let handover = postcopy::Handover {
                        generation,
                        from: who,
                        epoch,
                        geometry: *f.geometry(),
                    };
                    let metrics = claim.as_ref().map_or_else(
                        || RegionMetrics::new(name, Role::Replica),
                        |c| c.slot.metrics(name),
                    );
                    let o = tokio::task::block_in_place(|| {
                        OwnedRegion::take(dir, name, handover, replica, s.opts.tolerance(), metrics)
                    })
                    .map_err(|e| {
                        WireError::new(ErrorCode::LocalIo, format!("recording the handoff: {e}"))
                    })?;
                    Some(o)
                } else {
                    None
                };
                // The hashes of what it holds, for the owner role (before the index is dropped).
                let handed = (f.hashes().to_vec(), generation);
                take_over(f, name, generation, epoch, s).await?;
                // Neither the index nor the journal describes the region from now on.
                if let Some(j) = &mut journal {
                    tokio::task::block_in_place(|| j.clear()).map_err(|e| {
                        WireError::new(ErrorCode::LocalIo, format!("clearing the journal: {e}"))
                    })?;
                }
                f.owned_here();
                if let Some(c) = claim {
                    if c.slot.archiving.lock().expect("slot lock").take().is_some() {
                        info!(
                            "region {name}: archiving stopped, its writes are this peer's now \
                             (keep it in the store with `peer sync --to`)"
                        );
                    }
                }
                if let Some(m) = shown.0.take() {
                    m.set_state("owned here (handed over)");
                }
                let uri = match &owned {
                    Some(o) => active.own(o.clone(), &s.opts).await,
                    None => None,
                };
                let missing = owned.as_ref().map_or(0, |o| o.missing());
                info!(
                    "region {name}: this peer owns it now (handed over at generation {generation}{})",
                    match missing {
                        0 => String::new(),
                        n => format!(", post-copy: {n} chunks to fetch from the old owner"),
                    }
                );
                if let Some(cmd) = &s.opts.on_handoff {
                    match (&owned, &uri) {
                        // The file holds stale chunks until they arrive: without an export that
                        // waits for them, the workload starts once every chunk is here.
                        (Some(o), None) if missing > 0 => {
                            info!("region {name}: the on-handoff command runs once post-copy is done (no --nbd-dir)");
                            let (o, cmd, path) = (o.clone(), cmd.clone(), dir.display(name));
                            tokio::spawn(async move {
                                o.complete().await;
                                run_on_handoff(&cmd, o.name(), &path, generation, None);
                            });
                        }
                        _ => run_on_handoff(
                            cmd,
                            name,
                            &dir.display(name),
                            generation,
                            uri.as_deref(),
                        ),
                    }
                }
                if postcopy {
                    // HANDOFF_ACK and the FETCHes go out from the fetching stream.
                    return Ok(Next::Fetch(owned.expect("post-copy records what it lacks")));
                }
                // HANDOFF_ACK: from now on this peer owns the region (spec §8.6 step 4).
                while let Some(f) = replica.poll_transmit() {
                    send.write_all(&f).await?;
                }
                // After a post-copy HANDOFF the old owner serves fetches until this peer ends
                // the stream, which it does at once: nothing is missing (§8.10).
                if postcopy_handoff {
                    return Ok(Next::Done);
                }
                // Step 5: the stream turns around, and the old owner may follow as a replica.
                return Ok(Next::Lead(lead::Lead {
                    name: name.clone(),
                    epoch: epoch + 1,
                    geometry: Some(*f.geometry()),
                    handed: Some(handed),
                }));
            }
            ReplicaEvent::PeerError { code, reason } => {
                return Err(StreamError::Peer {
                    code,
                    reason: reason.to_owned(),
                });
            }
        }
        while let Some(f) = replica.poll_transmit() {
            send.write_all(&f).await?;
        }
    }
}
