//! The `peer` command: identities, serving replicas, syncing regions, and the demo.

mod demo;
mod uffd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use memsync_peer::detector::{Marks, MarksDetector};
use memsync_peer::nbd;
use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::region::Source;
use memsync_peer::roles::mount::MemorySink;
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "peer",
    version,
    about = "Keep memory regions identical across machines"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct IdentityArgs {
    /// Directory holding this peer's key and certificate [default: $XDG_CONFIG_HOME/memsync/identity]
    #[arg(long, value_name = "DIR")]
    identity: Option<PathBuf>,
}

/// What one NBD export lets its clients hold.
#[derive(clap::Args)]
struct NbdLimitArgs {
    /// Most NBD clients served at once; more are closed as they connect.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65536))]
    nbd_max_connections: u64,
    /// Seconds an NBD client has to finish its handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    nbd_handshake_timeout: u64,
    /// Close an NBD client that sends no request for this many seconds [default: never, as a
    /// mounted block device may idle for hours].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    nbd_idle_timeout: Option<u64>,
}

impl NbdLimitArgs {
    fn limits(&self) -> nbd::server::Limits {
        nbd::server::Limits {
            max_connections: self.nbd_max_connections as usize,
            handshake_timeout: Duration::from_secs(self.nbd_handshake_timeout),
            idle_timeout: self.nbd_idle_timeout.map(Duration::from_secs),
        }
    }
}

#[derive(clap::Args)]
struct TrustArgs {
    /// Trust the peer with this fingerprint (as printed by `peer id`); repeatable.
    #[arg(long = "trust", value_name = "FP")]
    trust: Vec<String>,
    /// Trust every fingerprint listed in this file (one per line, # comments).
    #[arg(long = "trust-file", value_name = "FILE")]
    trust_file: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print this peer's fingerprint, creating the identity if absent.
    Id {
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// Accept regions from trusted peers; replicas live in DIR/NAME.
    Serve {
        /// Address to listen on (UDP).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// Directory for replicas.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Most MiB/s the background push of a lazy mount served here may use; chunks a mount
        /// fetches (its readers' faults, read-ahead) always go at once. Leaving headroom keeps
        /// their wait short while the push runs.
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        mount_max_rate: Option<u64>,
        /// Let peer FP own regions matching PATTERN (a name, prefix* or *; FP a fingerprint or *),
        /// repeatable. Without it every trusted peer may own a region nobody owns yet; a region
        /// stays with its first owner either way (DIR/.memsync/owners).
        #[arg(long, value_name = "PATTERN=FP")]
        allow_owner: Vec<memsync_peer::roles::replica::Rule>,
        /// Let peer FP mount regions matching PATTERN, repeatable. Without it every trusted peer
        /// may mount every region; with it, only the peers it names and each region's owner.
        #[arg(long, value_name = "PATTERN=FP")]
        allow_mount: Vec<memsync_peer::roles::replica::Rule>,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Own FILE(s) and keep their replicas on the peer at ADDR identical.
    Sync {
        /// File to replicate; repeatable (all regions share one connection).
        #[arg(long = "region", value_name = "FILE", required = true)]
        regions: Vec<PathBuf>,
        /// Address of the peer running `peer serve`.
        #[arg(long, value_name = "ADDR")]
        peer: String,
        /// Region name on the peer [default: the file's name]; only with a single --region.
        #[arg(long)]
        name: Option<String>,
        /// Change detector.
        #[arg(long, value_enum, default_value = "hash")]
        detector: Detector,
        /// Chunk size in bytes: a power of two from 4096 to 4194304.
        #[arg(long, default_value_t = 65536, value_name = "N")]
        chunk_size: u64,
        /// Milliseconds between detector runs.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval: u64,
        /// Seconds to keep reconnecting after the connection is lost.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        reconnect_for: u64,
        /// Exit 0 once the replica matches the file as it was when the last round began.
        #[arg(long)]
        once: bool,
        /// With --detector nbd: serve the region as an NBD export here (HOST:PORT or unix:PATH);
        /// writes through it are replicated without any scan.
        #[arg(long, value_name = "ADDR|unix:PATH")]
        nbd_listen: Option<nbd::Listen>,
        #[command(flatten)]
        nbd_limits: NbdLimitArgs,
        /// With --detector nbd: FLUSH and FUA writes complete only once the replica acknowledged
        /// them (like DRBD's protocol C), not just once they are durable here.
        #[arg(long)]
        flush_waits_for_replica: bool,
        /// Most MiB/s a round may send (like rsync's --bwlimit); default: as fast as QUIC goes.
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        max_rate: Option<u64>,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Mount a remote region lazily as a read-only NBD export: reads of data not yet here are
    /// fetched at once, the rest streams in the background.
    Mount {
        /// Address of the peer holding the region (`peer serve`).
        #[arg(long, value_name = "ADDR")]
        peer: String,
        /// Region name on that peer.
        #[arg(long)]
        name: String,
        /// Where to serve the NBD export (HOST:PORT or unix:PATH).
        #[arg(long, value_name = "ADDR|unix:PATH")]
        nbd_listen: nbd::Listen,
        #[command(flatten)]
        nbd_limits: NbdLimitArgs,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// userfaultfd: probe the kernel, replicate memory other processes hand over, serve a VMM's
    /// page faults from a remote peer.
    #[command(subcommand)]
    Uffd(uffd::UffdCmd),
    /// Two peers in one process on loopback: a generated region, a writer mutating it, live
    /// throughput and lag, and a final byte-for-byte check.
    Demo(demo::DemoArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Detector {
    /// xxh3 scan of every chunk (portable).
    Hash,
    /// Serve the region over NBD (--nbd-listen); every write through it is a precise mark.
    Nbd,
    /// userfaultfd write tracking: only for memory written through the tracking process's own
    /// mapping (embedded `memsync_peer::embed`, or `peer uffd track`); refused for files.
    Uffd,
}

fn main() {
    let cli = Cli::parse();
    let default = match (cli.verbose, &cli.cmd) {
        (0, Cmd::Demo(_)) => "warn,peer::demo=info",
        (0, _) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEMSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(cli.verbose > 0)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        eprintln!("error: {}", report(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each said once: many errors already include their
/// source in their own message, and `{:#}` would repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Id { id } => {
            let dir = identity_dir(&id)?;
            let ident = Identity::load_or_create(&dir)?;
            println!("{}", ident.fingerprint());
            Ok(())
        }
        Cmd::Serve {
            listen,
            dir,
            mount_max_rate,
            allow_owner,
            allow_mount,
            id,
            trust,
        } => {
            let mounts = SyncOptions {
                max_rate: mount_max_rate.map(mib_per_sec),
                ..SyncOptions::default()
            };
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let trust = trust_set(&trust)?;
            let dir = memsync_peer::region::ReplicaDir::open(&dir).context("replica directory")?;
            let policy =
                memsync_peer::roles::replica::Policy::load(dir.path(), allow_owner, allow_mount)?;
            let addr = resolve(&listen)?;
            let ep = PeerEndpoint::bind(addr, &ident, trust, true)?;
            tracing::info!(
                "serving replicas into {} on {} as {}",
                dir.path().display(),
                ep.local_addr(),
                ident.fingerprint()
            );
            tokio::select! {
                _ = memsync_peer::roles::replica::serve_with(&ep, dir, policy, mounts) => Ok(()),
                _ = tokio::signal::ctrl_c() => {
                    ep.endpoint.close(0u32.into(), b"shutdown");
                    Ok(())
                }
            }
        }
        Cmd::Sync {
            regions,
            peer,
            name,
            detector,
            chunk_size,
            interval,
            reconnect_for,
            once,
            nbd_listen,
            nbd_limits,
            flush_waits_for_replica,
            max_rate,
            id,
            trust,
        } => {
            if !chunk_size.is_power_of_two() || !(4096..=4 << 20).contains(&chunk_size) {
                bail!("--chunk-size {chunk_size} must be a power of two from 4096 to 4194304");
            }
            if name.is_some() && regions.len() > 1 {
                bail!("--name applies to a single --region; with several, each is named after its file");
            }
            if let Detector::Uffd = detector {
                bail!(
                    "--detector uffd cannot watch {}: uffd sees only writes made through this process's \
                     own mapping, and the processes writing the file would go unseen. Use --detector hash \
                     for files written by other processes, or embed memsync in the writing application \
                     (memsync_peer::embed::TrackedRegion) or hand its memory over with its uffd \
                     (`peer uffd track`)",
                    regions[0].display()
                );
            }
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let trust = trust_set(&trust)?;
            let addr = resolve(&peer)?;
            let shift = chunk_size.trailing_zeros() as u8;
            match (detector, &nbd_listen, regions.len()) {
                (Detector::Nbd, None, _) => {
                    bail!("--detector nbd needs --nbd-listen ADDR|unix:PATH")
                }
                (Detector::Nbd, Some(_), n) if n > 1 => {
                    bail!("--detector nbd serves one region per process; start one `peer sync` per region")
                }
                (Detector::Hash, Some(_), _) => bail!("--nbd-listen needs --detector nbd"),
                _ => {}
            }
            let mut opened = Vec::new();
            for path in &regions {
                let name = match &name {
                    Some(n) => n.clone(),
                    None => file_name(path)?,
                };
                check_region_name(&name)?;
                let region = match (detector, &nbd_listen) {
                    (Detector::Nbd, Some(listen)) => {
                        let flush = flush_waits_for_replica;
                        let limits = nbd_limits.limits();
                        serve_nbd_region(path, &name, shift, listen, limits, flush).await?
                    }
                    _ => SyncRegion::open(path, &name, shift)
                        .with_context(|| format!("opening {}", path.display()))?,
                };
                opened.push(region);
            }
            let ep = PeerEndpoint::client_for(addr, &ident, trust)?;
            let opts = SyncOptions {
                interval: Duration::from_millis(interval.max(1)),
                once,
                reconnect_for: Duration::from_secs(reconnect_for),
                progress: true,
                max_rate: max_rate.map(mib_per_sec),
            };
            let stats = Arc::new(SyncStats::default());
            tokio::select! {
                r = memsync_peer::roles::owner::run(&ep, addr, opened, &opts, stats) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Cmd::Mount {
            peer,
            name,
            nbd_listen,
            nbd_limits,
            id,
            trust,
        } => {
            check_region_name(&name)?;
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let trust = trust_set(&trust)?;
            let addr = resolve(&peer)?;
            let ep = PeerEndpoint::client_for(addr, &ident, trust)?;
            let (remote, sink) = mount_remote(&ep, addr, &name).await?;
            let server = nbd::NbdServer::bind(&nbd_listen)
                .await
                .with_context(|| format!("listening for NBD on {nbd_listen}"))?
                .with_limits(nbd_limits.limits());
            tracing::info!(
                "{name} ({} bytes) mounted lazily from {addr}; NBD export at {}",
                remote.geometry().size(),
                server.uri(&name)
            );
            let export = Arc::new(nbd::MountExport::new(remote, sink));
            tokio::spawn(server.serve(name.clone(), export.clone()));
            tokio::select! {
                r = export.remote().complete() => {
                    r?;
                    tracing::info!("{name}: every chunk is here");
                    tokio::signal::ctrl_c().await?;
                }
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Cmd::Uffd(cmd) => uffd::run(cmd).await,
        Cmd::Demo(args) => demo::run(args).await,
    }
}

/// Opens `path` for `--detector nbd`: an NBD export whose writes mark chunks for the sync loop.
async fn serve_nbd_region(
    path: &Path,
    name: &str,
    shift: u8,
    listen: &nbd::Listen,
    limits: nbd::server::Limits,
    flush_waits_for_replica: bool,
) -> Result<SyncRegion> {
    let source = Arc::new(
        memsync_peer::region::SourceFile::open(path, shift)
            .with_context(|| format!("opening {}", path.display()))?,
    );
    let marks = Marks::new(source.geometry());
    let export = nbd::FileExport::open(path, marks.clone(), flush_waits_for_replica)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    let server = nbd::NbdServer::bind(listen)
        .await
        .with_context(|| format!("listening for NBD on {listen}"))?
        .with_limits(limits);
    tracing::info!(
        "serving {} as NBD export {}",
        path.display(),
        server.uri(name)
    );
    tokio::spawn(server.serve(name.to_owned(), Arc::new(export)));
    let detector = Box::new(MarksDetector::nbd(marks, source.clone()));
    Ok(SyncRegion::new(source, name, detector)?)
}

/// Mounts `name` from the peer at `addr` into memory.
async fn mount_remote(
    ep: &PeerEndpoint,
    addr: SocketAddr,
    name: &str,
) -> Result<(memsync_peer::roles::mount::RemoteRegion, Arc<MemorySink>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let make = Box::new(move |geom| {
        let sink = Arc::new(MemorySink::new(geom));
        let _ = tx.send(sink.clone());
        sink as Arc<dyn memsync_peer::roles::mount::ChunkSink>
    });
    let remote = memsync_peer::roles::mount::RemoteRegion::mount_with(ep, addr, name, make).await?;
    let sink = rx
        .recv()
        .context("the mount closed before describing the region")?;
    Ok((remote, sink))
}

/// Refuses a region name the protocol would refuse (spec §5.3), before any network work.
fn check_region_name(name: &str) -> Result<()> {
    memsync_protocol::wire::check_name(name)
        .map_err(|e| anyhow::anyhow!("{}", e.reason))
        .with_context(|| format!("region name {name:?}"))
}

fn identity_dir(a: &IdentityArgs) -> Result<PathBuf> {
    match &a.identity {
        Some(d) => Ok(d.clone()),
        None => Ok(Identity::default_dir()?),
    }
}

fn trust_set(a: &TrustArgs) -> Result<TrustSet> {
    let mut t = TrustSet::default();
    for fp in &a.trust {
        t.insert(Fingerprint::parse(fp)?);
    }
    for f in &a.trust_file {
        t.add_file(f)?;
    }
    if t.is_empty() {
        bail!(
            "no trusted peers: pass --trust FP (the other peer's `peer id`) or --trust-file FILE"
        );
    }
    Ok(t)
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable file name; pass --name", path.display()))
}

/// A rate given in MiB/s, in bytes per second.
fn mib_per_sec(mib: u64) -> u64 {
    mib.saturating_mul(1 << 20)
}
