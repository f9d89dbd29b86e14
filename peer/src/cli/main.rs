//! The `peer` command: identities, serving replicas, syncing regions, and the demo.

mod compare;
mod config;
mod demo;
mod store;
mod uffd;
mod units;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use memsync_peer::detector::{Marks, MarksDetector};
use memsync_peer::nbd;
use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::net::transport::StreamError;
use memsync_peer::region::Source;
use memsync_peer::roles::migrate::{Freezer, MigrateRequest, Postcopy};
use memsync_peer::roles::mount::MemorySink;
use memsync_peer::roles::owner::{SyncError, SyncOptions, SyncRegion, SyncStats};
use memsync_peer::roles::replica::policy::{owned_at, Owned};
use memsync_protocol::wire::ErrorCode;
use std::io::IsTerminal;
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

/// Where a running peer reports to its operator.
#[derive(clap::Args)]
struct OpsArgs {
    /// Serve metrics (OpenMetrics text, for Prometheus) over HTTP on ADDR, e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// The control socket `peer status` asks [default: DIR/COMMAND-PID.sock, DIR as `peer status`
    /// says].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

impl OpsArgs {
    /// Opens the control socket and the metrics endpoint; both close when the guard drops.
    async fn start(self, command: &str) -> Result<memsync_peer::ops::control::ControlSocket> {
        use memsync_peer::ops::control;
        if let Some(addr) = self.metrics {
            let at = control::serve_metrics(addr)
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!("metrics at http://{at}/metrics");
        }
        let socket = control::ControlSocket::bind(command, self.control)
            .context("opening the control socket")?;
        tracing::debug!("control socket {}", socket.path().display());
        Ok(socket)
    }
}

/// What one NBD export lets its clients hold.
#[derive(clap::Args)]
struct NbdLimitArgs {
    /// Most NBD clients served at once; more are closed as they connect.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65536))]
    nbd_max_connections: u64,
    /// Seconds an NBD client has to finish its handshake (or a duration: 30s, 1m).
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = units::secs_min_1)]
    nbd_handshake_timeout: u64,
    /// Close an NBD client that sends no request for this many seconds [default: never, as a
    /// mounted block device may idle for hours; a duration also works: 2h].
    #[arg(long, value_name = "SECS", value_parser = units::secs_min_1)]
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
    #[command(args_override_self = true)]
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
        #[arg(long, value_name = "MIB", value_parser = units::mib_per_sec)]
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
        /// Run this shell command when this peer takes a region over in a handoff (`peer
        /// migrate` at its owner), with MEMSYNC_REGION, MEMSYNC_PATH and MEMSYNC_GENERATION set,
        /// and MEMSYNC_NBD (the export's URI) with --nbd-dir. After a post-copy handoff without
        /// --nbd-dir it runs once every chunk is here.
        #[arg(long, value_name = "CMD")]
        on_handoff: Option<String>,
        /// Serve every region taken over here in a handoff as an NBD export at the Unix socket
        /// NBD_DIR/NAME.sock (URI nbd+unix:///NAME?socket=NBD_DIR/NAME.sock), read-write, from
        /// the handoff on. After a post-copy handoff (`peer migrate --postcopy`) it is how the
        /// region is used before every chunk is here: a read of a missing chunk waits for it.
        #[arg(long, value_name = "NBD_DIR")]
        nbd_dir: Option<PathBuf>,
        /// After a post-copy handoff, how long reads and writes of chunks still with the old
        /// owner wait while it is unreachable before they fail with EIO (QEMU's
        /// postcopy-paused; or 30s, 5m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        outage_tolerance: Duration,
        /// How a region owned here since a handoff finds its changes while this peer streams it
        /// to the old owner following it (or to a mount): `hash` scans DIR/NAME every second;
        /// `nbd` marks the writes through its --nbd-dir export, which must then be its only
        /// writer.
        #[arg(long, value_enum, default_value = "hash", value_name = "DETECTOR")]
        owned_detector: memsync_peer::roles::replica::OwnedDetector,
        /// When an ACK goes to the owner: `none` once a generation is applied (in the page
        /// cache), `fsync` once it is on stable storage here (fdatasync first; survives a power
        /// loss of this machine). Owners with --require-durable refuse `none`.
        #[arg(long, value_enum, default_value = "none")]
        durability: memsync_peer::roles::replica::Durability,
        /// Crash-consistent replicas: stage each generation in DIR/.NAME.journal and apply it
        /// whole at its COMMIT, so that after a crash or power loss at any instant DIR/NAME holds
        /// exactly one committed generation, and readers that take a shared flock(2) of it never
        /// see one half applied. ACKs are then durable too.
        #[arg(long)]
        consistent: bool,
        /// Also keep every replica in an S3-compatible object store, region NAME as
        /// s3://BUCKET/ROOT/NAME (spec/STORAGE.md): the chunks its owner's streams wrote are
        /// uploaded and a generation published, at most once per --to-interval. Credentials and
        /// endpoint from the environment, as for `sync --to`.
        #[arg(long, value_name = "s3://BUCKET[/ROOT]")]
        to: Option<String>,
        /// With --to: the shortest time between two generations of a region (or 30s, 2m).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "to")]
        to_interval: Duration,
        /// With --to: chunk uploads in flight at once, per region.
        #[arg(long, default_value_t = 16, value_name = "N", requires = "to")]
        to_parallel: usize,
        /// With --to: take each region over from the peer that last claimed it in the store
        /// (that writer is gone for good); without it such a region is left to that writer.
        #[arg(long, requires = "to")]
        take_over: bool,
        /// Read flags from the `[COMMAND]` table of this TOML file (command-line flags override
        /// them, list flags add to them) [default: $XDG_CONFIG_HOME/memsync/config.toml if it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: OpsArgs,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Own FILE(s) and keep their replicas on the peer at ADDR identical.
    #[command(args_override_self = true)]
    Sync {
        /// File to replicate; repeatable (all regions share one connection).
        #[arg(long = "region", value_name = "FILE", required = true)]
        regions: Vec<PathBuf>,
        /// Address of the peer running `peer serve`.
        #[arg(long, value_name = "ADDR", required_unless_present = "to")]
        peer: Option<String>,
        /// Instead of a peer, keep the region in an S3-compatible object store: every round
        /// uploads the chunks that changed and publishes a generation (spec/STORAGE.md).
        /// Credentials and endpoint from the environment (AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP).
        #[arg(long, value_name = "s3://BUCKET/[ROOT/]NAME", conflicts_with_all = ["peer", "name", "require_durable", "flush_waits_for_replica", "max_rate"])]
        to: Option<String>,
        /// With --to: take the region over from the peer that last claimed it (its owner is gone
        /// for good); without it such a region is refused.
        #[arg(long, requires = "to")]
        take_over: bool,
        /// With --to: chunk uploads in flight at once.
        #[arg(long, default_value_t = 16, value_name = "N", requires = "to")]
        parallel: usize,
        /// Region name on the peer [default: the file's name]; only with a single --region.
        #[arg(long)]
        name: Option<String>,
        /// Change detector.
        #[arg(long, value_enum, default_value = "hash")]
        detector: Detector,
        /// Chunk size in bytes (or 64KiB, 1MiB): a power of two from 4 KiB to 4 MiB.
        #[arg(long, default_value_t = 65536, value_name = "N", value_parser = units::bytes)]
        chunk_size: u64,
        /// Milliseconds between detector runs (or a duration: 250ms, 2s).
        #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = units::millis)]
        interval: u64,
        /// Seconds to keep reconnecting after the connection is lost (or a duration: 5m).
        #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = units::secs)]
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
        /// With --detector fuse: mount the region here (an existing empty directory) as DIR/NAME,
        /// which applications read, write and mmap; writes through it are replicated without any
        /// scan.
        #[arg(long, value_name = "DIR")]
        fuse_mount: Option<PathBuf>,
        /// With --detector nbd or fuse: FLUSH and FUA writes (fsync and close through the mount)
        /// complete only once the replica acknowledged them, not just once they are durable here;
        /// with --require-durable, once they are on the replica's stable storage too (DRBD's
        /// protocol C).
        #[arg(long)]
        flush_waits_for_replica: bool,
        /// Refuse a replica that acknowledges generations before they are on its stable storage
        /// (its `peer serve` must run with --durability fsync): every acknowledgement, `--once`
        /// included, then means "on the replica's disk".
        #[arg(long)]
        require_durable: bool,
        /// After a handoff, stay the new owner's replica (spec §8.6 step 5): the region's file
        /// receives its writes on the same stream (after a broken link, on a new one), and a
        /// migration back (`peer migrate --sync` at the new owner's `peer serve`) makes this
        /// process the region's owner again, with its detector.
        #[arg(long)]
        follow: bool,
        /// Most MiB/s a round may send (like rsync's --bwlimit; or 1GiB, 500MB); default: as fast
        /// as QUIC goes.
        #[arg(long, value_name = "MIB", value_parser = units::mib_per_sec)]
        max_rate: Option<u64>,
        /// Read flags from the `[COMMAND]` table of this TOML file (command-line flags override
        /// them, list flags add to them) [default: $XDG_CONFIG_HOME/memsync/config.toml if it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: OpsArgs,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Move a region's ownership to the peer that replicates it, while it is written: pre-copy
    /// rounds until what is dirty fits the downtime target, then the writers are frozen, the last
    /// changes sent, and the replica becomes the owner (spec §8.6). Prints a report.
    Migrate {
        /// The region file.
        #[arg(long, value_name = "FILE", required_unless_present = "sync")]
        region: Option<PathBuf>,
        /// The `peer serve` that replicates it and will own it.
        #[arg(long, value_name = "ADDR", required_unless_present = "sync")]
        peer: Option<String>,
        /// Instead of streaming the region itself, ask the running `peer sync` with this control
        /// socket (a path, or its PID) to migrate its region --name to the peer it replicates it
        /// to: the sync goes on from where its stream is, with no new reconciliation. A `peer
        /// serve` that owns the region since a handoff migrates it back the same way, to the old
        /// owner following it (`--follow`).
        #[arg(long, value_name = "SOCKET|PID", conflicts_with_all = ["region", "peer", "detector", "nbd_listen", "max_rate"])]
        sync: Option<String>,
        /// The region's name at the peer [default: the file's name].
        #[arg(long)]
        name: Option<String>,
        /// Chunk size in bytes (or 64KiB, 1MiB): a power of two from 4 KiB to 4 MiB.
        #[arg(long, default_value_t = 65536, value_name = "N", value_parser = units::bytes)]
        chunk_size: u64,
        /// The pause the writers may see, in milliseconds (QEMU's downtime-limit; or 50ms, 1s).
        #[arg(long, default_value_t = 300, value_name = "MS", value_parser = units::millis)]
        downtime_ms: u64,
        /// Pre-copy rounds at most before the writers are frozen anyway.
        #[arg(long, default_value_t = 30, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_rounds: u32,
        /// Hand the region over before the peer holds every chunk (post-copy, spec §8.10): the
        /// pause is the freeze and one round trip whatever is dirty; the peer then fetches what
        /// it lacks from here, and this command serves it until it holds everything. `always`:
        /// at the freeze; `fallback`: only when pre-copy did not converge to the downtime target.
        #[arg(long, value_enum, default_value_t = Postcopy::Never, num_args = 0..=1, default_missing_value = "always", value_name = "WHEN")]
        postcopy: Postcopy,
        /// Freeze this process (SIGSTOP) for the handoff; it stays stopped afterwards. Repeatable.
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..))]
        freeze_pid: Vec<i32>,
        /// Freeze this cgroup v2 (cgroup.freeze) for the handoff; it stays frozen afterwards.
        #[arg(long, value_name = "DIR")]
        freeze_cgroup: Vec<PathBuf>,
        /// Shell command that stops the writers; it must return once they stopped.
        #[arg(long, value_name = "CMD")]
        before_freeze: Option<String>,
        /// Shell command run once the peer owns the region.
        #[arg(long, value_name = "CMD")]
        after_handoff: Option<String>,
        /// Shell command run when the handoff failed and the writers may go on.
        #[arg(long, value_name = "CMD")]
        on_thaw: Option<String>,
        /// Seconds to keep trying to reconnect after a lost connection (or a duration: 5m).
        #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = units::secs)]
        reconnect_for: u64,
        /// Most MiB/s the migration's rounds may send (QEMU's max-bandwidth; or 1GiB, 500MB);
        /// default: as fast as QUIC goes. The downtime estimate uses the rate reached.
        #[arg(long, value_name = "MIB", value_parser = units::mib_per_sec)]
        max_rate: Option<u64>,
        /// How changes are found: `hash` scans the file; `nbd` serves it as an NBD export whose
        /// writes are marks, held at the freeze and refused (EPERM) once the peer owns the
        /// region, while this process keeps serving the export read-only until stopped.
        #[arg(long, value_enum, default_value = "hash")]
        detector: Detector,
        /// Where the NBD export listens, with `--detector nbd`.
        #[arg(long, value_name = "ADDR|unix:PATH")]
        nbd_listen: Option<nbd::Listen>,
        #[command(flatten)]
        nbd_limits: NbdLimitArgs,
        /// After a handoff, stay the new owner's replica (spec §8.6 step 5): the region's file
        /// receives its writes on the same stream (after a broken link, on a new one), and a
        /// migration back (`peer migrate --sync` at the new owner's `peer serve`) makes this
        /// process the region's owner again, with its detector.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        ops: OpsArgs,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Mount a remote region lazily as a read-only NBD export: reads of data not yet here are
    /// fetched at once, the rest streams in the background.
    Mount {
        /// A generation in an object store instead of a peer: s3://BUCKET/[ROOT/]NAME (the
        /// newest) or …NAME@GENERATION; every chunk is checked against its name.
        #[arg(value_name = "s3://BUCKET/[ROOT/]NAME[@GENERATION]", conflicts_with_all = ["peer", "name"])]
        source: Option<String>,
        /// Address of the peer holding the region (`peer serve`).
        #[arg(long, value_name = "ADDR", required_unless_present = "source")]
        peer: Option<String>,
        /// Region name on that peer.
        #[arg(long, required_unless_present = "source")]
        name: Option<String>,
        #[command(flatten)]
        from_store: store::StoreReadArgs,
        /// Where to serve the NBD export (HOST:PORT or unix:PATH).
        #[arg(long, value_name = "ADDR|unix:PATH")]
        nbd_listen: nbd::Listen,
        #[command(flatten)]
        nbd_limits: NbdLimitArgs,
        #[command(flatten)]
        ops: OpsArgs,
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
    /// Measure every change detector this machine supports against a real replica (a `peer
    /// serve` on loopback): CPU, the writer's slowdown, bytes on the wire, change → ACK lag and
    /// idle cost, per workload; prints a table and writes a report with plots and a
    /// recommendation per use case.
    Compare(compare::CompareArgs),
    /// Make this peer the owner of replica DIR/NAME when its owner is lost for good (an
    /// operator's decision), at the next ownership epoch: the lost owner is fenced (its OPENs
    /// are refused, here and at every replica this peer then syncs to, saying how to rejoin),
    /// and DIR/NAME can be written and replicated from here (`peer sync --region DIR/NAME`). Run
    /// it with the directory's `peer serve` stopped.
    Promote {
        /// The replica directory of `peer serve`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The region to own.
        name: String,
    },
    /// The generations of a region kept in an object store (`peer sync --to`).
    #[command(subcommand)]
    Snapshot(store::SnapshotCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff, for `man -l -`) to stdout.
    Man,
    /// Show every region of the peers running here (serve, sync, migrate, mount): role, peer,
    /// state, generations, lag and bytes, as a table or as JSON. Asks the control sockets in
    /// $MEMSYNC_CONTROL_DIR, else $XDG_RUNTIME_DIR/memsync, else /run/memsync (root) or
    /// /tmp/memsync-UID.
    Status {
        /// One control socket, or a directory of them, instead of the default directory.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Print JSON (an array with one object per process) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Detector {
    /// xxh3 scan of every chunk (portable).
    Hash,
    /// Serve the region over NBD (--nbd-listen); every write through it is a precise mark.
    Nbd,
    /// userfaultfd write tracking: only for memory written through the tracking process's own
    /// mapping (embedded `memsync_peer::embed`, or `peer uffd track`); refused for files.
    Uffd,
    /// inotify(7): hash the file only after the kernel reported a write(2) to it (idle costs
    /// nothing); while a process maps it shared and writable, hash at every interval.
    Inotify,
    /// Mount the region with FUSE (--fuse-mount DIR); every write through DIR/NAME is a precise
    /// mark.
    Fuse,
}

/// Colour (ANSI escapes) in log lines only on a terminal, and never with `NO_COLOR` set to
/// anything non-empty (no-color.org).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() {
    let args = match config::expand::<Cli>(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let default = match (cli.verbose, &cli.cmd) {
        (0, Cmd::Demo(_)) => "warn,peer::demo=info",
        (0, Cmd::Compare(_)) => "warn,peer::compare=info",
        (0, _) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEMSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
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
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "peer", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Status { control, json } => status(control, json),
        Cmd::Promote { dir, name } => promote(&dir, &name),
        Cmd::Snapshot(cmd) => store::snapshot(cmd).await,
        Cmd::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
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
            on_handoff,
            nbd_dir,
            outage_tolerance,
            owned_detector,
            durability,
            consistent,
            to,
            to_interval,
            to_parallel,
            take_over,
            id,
            trust,
            ops,
            config: _,
        } => {
            let _ops = ops.start("serve").await?;
            use memsync_peer::roles::replica::{Archive, Durability};
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let archive = match to {
                Some(root) => {
                    let me = ident.fingerprint().bytes();
                    let a = Archive::open(&root, me, to_interval, to_parallel, take_over)
                        .await
                        .with_context(|| format!("--to {root}"))?;
                    tracing::info!("keeping every replica in {} too", a.url());
                    Some(Arc::new(a))
                }
                None => None,
            };
            let opts = memsync_peer::roles::replica::ServeOptions {
                mounts: SyncOptions {
                    max_rate: mount_max_rate.map(mib_per_sec),
                    ..SyncOptions::default()
                },
                on_handoff,
                durability,
                consistent,
                archive,
                nbd_dir,
                outage_tolerance: Some(outage_tolerance),
                owned_detector,
            };
            if opts.owned_detector == memsync_peer::roles::replica::OwnedDetector::Nbd
                && opts.nbd_dir.is_none()
            {
                bail!("--owned-detector nbd needs --nbd-dir: it marks the writes of that export");
            }
            let trust = trust_set(&trust)?;
            let dir = memsync_peer::region::ReplicaDir::open(&dir).context("replica directory")?;
            let policy =
                memsync_peer::roles::replica::Policy::load(dir.path(), allow_owner, allow_mount)?;
            let addr = resolve(&listen)?;
            let ep = PeerEndpoint::bind(addr, &ident, trust, true)?;
            // Replicas a crash left mid-generation are whole again before anyone is told that
            // serve is up.
            memsync_peer::roles::replica::recover_journals(&dir);
            tracing::info!(
                "serving replicas into {} on {} as {}; acknowledging {}",
                dir.path().display(),
                ep.local_addr(),
                ident.fingerprint(),
                match (consistent, durability) {
                    (true, _) => "whole generations on stable storage (--consistent)",
                    (false, Durability::None) => "applied generations (--durability none)",
                    (false, Durability::Fsync) =>
                        "generations on stable storage (--durability fsync)",
                }
            );
            ready();
            tokio::select! {
                _ = memsync_peer::roles::replica::serve_with(&ep, dir, policy, opts) => Ok(()),
                _ = stop_signal() => {
                    ep.endpoint.close(0u32.into(), b"shutdown");
                    Ok(())
                }
            }
        }
        Cmd::Sync {
            regions,
            peer,
            to,
            take_over,
            parallel,
            name,
            detector,
            chunk_size,
            interval,
            reconnect_for,
            once,
            nbd_listen,
            nbd_limits,
            fuse_mount,
            flush_waits_for_replica,
            require_durable,
            follow,
            max_rate,
            id,
            trust,
            ops,
            config: _,
        } => {
            let control = ops.start("sync").await?;
            let shift = chunk_shift(chunk_size)?;
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
            if to.is_some() && regions.len() > 1 {
                bail!("--to names one region; start one `peer sync --to` per region");
            }
            match (detector, &nbd_listen, regions.len()) {
                (Detector::Nbd, None, _) => {
                    bail!("--detector nbd needs --nbd-listen ADDR|unix:PATH")
                }
                (Detector::Nbd, Some(_), n) if n > 1 => {
                    bail!("--detector nbd serves one region per process; start one `peer sync` per region")
                }
                (Detector::Hash | Detector::Inotify | Detector::Fuse, Some(_), _) => {
                    bail!("--nbd-listen needs --detector nbd")
                }
                _ => {}
            }
            match (detector, &fuse_mount, regions.len()) {
                (Detector::Fuse, None, _) => bail!("--detector fuse needs --fuse-mount DIR"),
                (Detector::Fuse, Some(_), n) if n > 1 => {
                    bail!("--detector fuse mounts one region per process; start one `peer sync` per region")
                }
                (
                    Detector::Hash | Detector::Nbd | Detector::Uffd | Detector::Inotify,
                    Some(_),
                    _,
                ) => {
                    bail!("--fuse-mount needs --detector fuse")
                }
                _ => {}
            }
            let mut opened = Vec::new();
            // Mounted for as long as the sync runs.
            let mut mounted = Vec::new();
            for path in &regions {
                let name = match &name {
                    Some(n) => n.clone(),
                    None => file_name(path)?,
                };
                check_region_name(&name)?;
                let owned = owned_at(path, &name)?;
                let mut region = match (detector, &nbd_listen) {
                    (Detector::Nbd, Some(listen)) => {
                        let flush = flush_waits_for_replica;
                        let limits = nbd_limits.limits();
                        let (mut r, export) =
                            serve_nbd_region(path, &name, shift, listen, limits, flush).await?;
                        // A migration asked for through the control socket holds the export's
                        // writes at the freeze too.
                        r.freeze_also = Some(Arc::new(move || {
                            Box::new(nbd::ExportFreezer(export.clone())) as Box<dyn Freezer>
                        }));
                        r
                    }
                    (Detector::Inotify, _) => SyncRegion::open_inotify(path, &name, shift)
                        .with_context(|| format!("opening {}", path.display()))?,
                    (Detector::Fuse, _) => {
                        let at = fuse_mount.as_deref().expect("checked above");
                        let flush = flush_waits_for_replica;
                        let (mut r, export, mount) =
                            serve_fuse_region(path, &name, shift, at, flush)?;
                        mounted.push(mount);
                        r.freeze_also = Some(Arc::new(move || {
                            Box::new(nbd::ExportFreezer(export.clone())) as Box<dyn Freezer>
                        }));
                        r
                    }
                    _ => SyncRegion::open(path, &name, shift)
                        .with_context(|| format!("opening {}", path.display()))?,
                };
                owned_here(&mut region, path, owned);
                region.follow = follow.then(|| path.clone());
                opened.push(region.askable());
            }
            if let Some(url) = to {
                let opts = memsync_peer::store::upload::UploadOptions {
                    interval: Duration::from_millis(interval.max(1)),
                    once,
                    parallel,
                    take_over,
                    settle: false,
                };
                let region = opened.pop().expect("one region");
                ready();
                return tokio::select! {
                    r = store::sync_to(&url, region, &ident, &opts) => r,
                    _ = stop_signal() => Ok(()),
                };
            }
            let trust = trust_set(&trust)?;
            let addr = resolve(peer.as_deref().expect("clap: --peer or --to"))?;
            let ep = PeerEndpoint::client_for(addr, &ident, trust)?;
            let opts = SyncOptions {
                interval: Duration::from_millis(interval.max(1)),
                once,
                reconnect_for: Duration::from_secs(reconnect_for),
                progress: true,
                max_rate: max_rate.map(mib_per_sec),
                require_durable,
            };
            let stats = Arc::new(SyncStats::default());
            ready();
            let ran = tokio::select! {
                r = memsync_peer::roles::owner::run(&ep, addr, opened, &opts, stats) => r,
                _ = stop_signal() => Ok(()),
            };
            // A migration asked for through the socket hears how it ended, failures included.
            control.finish().await;
            let not_durable = matches!(&ran, Err(SyncError::Stream { source: StreamError::Wire(w), .. })
                if w.code == ErrorCode::NotDurable);
            if not_durable {
                return Err(anyhow::Error::from(ran.unwrap_err()).context(
                    "the replica does not promise durable acknowledgements: run its `peer serve` \
                     with --durability fsync, or drop --require-durable",
                ));
            }
            Ok(ran?)
        }
        Cmd::Mount {
            source,
            peer,
            name,
            from_store: how,
            nbd_listen,
            nbd_limits,
            id,
            trust,
            ops,
        } => {
            let _ops = ops.start("mount").await?;
            // A chunk of a store that fails its check fails only its reads; a peer that went away
            // ends the mount.
            let from_store = source.is_some();
            let (remote, sink, from) = match (source, peer, name) {
                (Some(url), _, _) => {
                    let (remote, sink, generation) = store::mount(&url, &how).await?;
                    (remote, sink, format!("{url} (generation {generation})"))
                }
                (None, Some(peer), Some(name)) => {
                    check_region_name(&name)?;
                    let ident = Identity::load_or_create(&identity_dir(&id)?)?;
                    let trust = trust_set(&trust)?;
                    let addr = resolve(&peer)?;
                    let ep = PeerEndpoint::client_for(addr, &ident, trust)?;
                    let (remote, sink) = mount_remote(&ep, addr, &name).await?;
                    (remote, sink, addr.to_string())
                }
                _ => bail!("name a region: s3://BUCKET/[ROOT/]NAME, or --peer ADDR --name NAME"),
            };
            let name = remote.name().to_owned();
            let server = nbd::NbdServer::bind(&nbd_listen)
                .await
                .with_context(|| format!("listening for NBD on {nbd_listen}"))?
                .with_limits(nbd_limits.limits());
            tracing::info!(
                "{name} ({} bytes) mounted lazily from {from}; NBD export at {}",
                remote.geometry().size(),
                server.uri(&name)
            );
            let export = Arc::new(nbd::MountExport::new(remote, sink));
            tokio::spawn(server.serve(name.clone(), export.clone()));
            tokio::select! {
                r = export.remote().complete() => {
                    match r {
                        Ok(()) => tracing::info!("{name}: every chunk is here"),
                        Err(e) if from_store => tracing::error!("{name}: {e}"),
                        Err(e) => return Err(e.into()),
                    }
                    stop_signal().await?;
                }
                _ = stop_signal() => {}
            }
            Ok(())
        }
        Cmd::Migrate {
            region,
            peer,
            name,
            chunk_size,
            downtime_ms,
            max_rounds,
            postcopy,
            freeze_pid,
            freeze_cgroup,
            before_freeze,
            after_handoff,
            on_thaw,
            reconnect_for,
            max_rate,
            detector,
            nbd_listen,
            nbd_limits,
            sync,
            follow,
            id,
            trust,
            ops,
        } => {
            let req = MigrateRequest {
                downtime_ms,
                max_rounds,
                postcopy,
                freeze_pid,
                freeze_cgroup,
                before_freeze,
                after_handoff,
                on_thaw,
            };
            if let Some(sync) = sync {
                let name = name.context("--sync needs --name: the region to migrate")?;
                return migrate_running_sync(&sync, &name, &req).await;
            }
            let (region, peer) = (region.expect("clap"), peer.expect("clap"));
            let _ops = ops.start("migrate").await?;
            let shift = chunk_shift(chunk_size)?;
            let name = match name {
                Some(n) => n,
                None => file_name(&region)?,
            };
            check_region_name(&name)?;
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let trust = trust_set(&trust)?;
            let addr = resolve(&peer)?;
            let mut migration = req.migration().map_err(anyhow::Error::msg)?;
            let owned = owned_at(&region, &name)?;
            let (mut r, export) = match (detector, &nbd_listen) {
                (Detector::Nbd, Some(listen)) => {
                    let limits = nbd_limits.limits();
                    let (mut r, export) =
                        serve_nbd_region(&region, &name, shift, listen, limits, false).await?;
                    migration.freeze_also(Box::new(nbd::ExportFreezer(export.clone())));
                    // A later migration (after a handback, with --follow) holds it too.
                    let e = export.clone();
                    r.freeze_also = Some(Arc::new(move || {
                        Box::new(nbd::ExportFreezer(e.clone())) as Box<dyn Freezer>
                    }));
                    (r, Some(export))
                }
                (Detector::Nbd, None) => bail!("--detector nbd needs --nbd-listen ADDR|unix:PATH"),
                (Detector::Uffd, _) => bail!(
                    "`peer migrate` watches a file; memory tracked with uffd migrates through \
                     memsync_peer::roles::migrate from the application that embeds it"
                ),
                (Detector::Hash | Detector::Inotify, Some(_)) => {
                    bail!("--nbd-listen needs --detector nbd")
                }
                (Detector::Hash, None) => {
                    let r = SyncRegion::open(&region, &name, shift)
                        .with_context(|| format!("opening {}", region.display()))?;
                    (r, None)
                }
                (Detector::Fuse, _) => bail!(
                    "`peer migrate` has no --fuse-mount: run `peer sync --detector fuse` and \
                     migrate its region with `peer migrate --sync PID --name NAME`, which holds \
                     the mount's writes at the freeze"
                ),
                (Detector::Inotify, None) => {
                    let r = SyncRegion::open_inotify(&region, &name, shift)
                        .with_context(|| format!("opening {}", region.display()))?;
                    (r, None)
                }
            };
            if !req.freezes_anything() && export.is_none() {
                tracing::warn!(
                    "no writer to freeze was named (--freeze-pid, --freeze-cgroup, --before-freeze): \
                     whoever writes {} must have stopped before the handoff",
                    region.display()
                );
            }
            let report = migration.report();
            owned_here(&mut r, &region, owned);
            r.migration = Some(migration);
            r.follow = follow.then(|| region.clone());
            let migrated = follow.then(|| r.when_migrated());
            let ep = PeerEndpoint::client_for(addr, &ident, trust)?;
            let opts = SyncOptions {
                reconnect_for: Duration::from_secs(reconnect_for),
                progress: true,
                max_rate: max_rate.map(mib_per_sec),
                ..SyncOptions::default()
            };
            let ran = memsync_peer::roles::owner::run(&ep, addr, vec![r], &opts, Arc::default());
            tokio::pin!(ran);
            let ended = match migrated {
                // Following: the report once the peer owns the region, then this process is its
                // replica until stopped (or it is handed back, and this process owns it again).
                Some(migrated) => tokio::select! {
                    outcome = migrated => match outcome {
                        Ok(Ok(report)) => {
                            println!("{name}: {report}");
                            tracing::info!("{name}: migrated: {report}; following {peer} as its replica until stopped");
                            return tokio::select! {
                                r = &mut ran => r.map_err(Into::into),
                                r = stop_signal() => r.map_err(Into::into),
                            };
                        }
                        // The run says why it failed.
                        _ => ran.await,
                    },
                    r = &mut ran => r,
                },
                None => ran.await,
            };
            match ended {
                Ok(()) => {}
                // The peer owns the region already: an earlier `peer migrate` (killed, or whose
                // HANDOFF_ACK was lost) handed it over. Nothing moved now, and nothing thaws.
                Err(SyncError::Stream {
                    source: StreamError::Peer { code, reason },
                    ..
                }) if code == ErrorCode::HandedOver as u32 => {
                    println!(
                        "{name}: already handed over: {peer} owns it ({reason}); nothing to move"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            let report = report.lock().expect("report lock").to_string();
            tracing::info!("{name}: migrated: {report}");
            println!("{name}: {report}");
            if export.is_some() {
                tracing::info!(
                    "{name}: the NBD export stays up read-only (writes get EPERM); Ctrl-C ends it"
                );
                stop_signal().await?;
            }
            Ok(())
        }
        Cmd::Uffd(cmd) => uffd::run(cmd).await,
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Compare(args) => compare::run(args).await,
    }
}

/// `peer migrate --sync`: asks the running `peer sync` at `sync` (a control socket, or a PID in
/// the control directory) to migrate its region `name`, and prints the report.
async fn migrate_running_sync(sync: &str, name: &str, req: &MigrateRequest) -> Result<()> {
    // A PID names a `peer sync`, or a `peer serve` that owns regions since a handoff.
    let path = match sync.parse::<u32>() {
        Ok(pid) => {
            let dir = memsync_peer::ops::control::dir();
            let serve = dir.join(format!("serve-{pid}.sock"));
            match serve.exists() {
                true => serve,
                false => dir.join(format!("sync-{pid}.sock")),
            }
        }
        Err(_) => PathBuf::from(sync),
    };
    let (region, req, at) = (name.to_owned(), req.clone(), path.clone());
    let answer = tokio::task::spawn_blocking(move || {
        memsync_peer::ops::control::ask_migrate(&at, &region, &req)
    })
    .await?
    .with_context(|| format!("asking the sync at {}", path.display()))?;
    match answer {
        Ok(report) => {
            println!("{name}: {report}");
            Ok(())
        }
        Err(e) => bail!("the sync at {} did not migrate: {e}", path.display()),
    }
}

/// Tells systemd (a `Type=notify` unit: $NOTIFY_SOCKET set) that the service is up: serve
/// listens, sync has opened its regions. Without $NOTIFY_SOCKET it does nothing.
fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd the service is ready: {e}");
    }
}

/// `peer status`: asks the control sockets and prints what they answer. A socket nobody answers
/// on was left by a killed process: it is reported and removed.
fn status(control: Option<PathBuf>, json: bool) -> Result<()> {
    use memsync_peer::ops::control::{self, Answer};
    let dir = control.unwrap_or_else(control::dir);
    let answers = if dir.exists() {
        control::query_all(&dir).with_context(|| format!("reading {}", dir.display()))?
    } else {
        Vec::new()
    };
    let mut live = Vec::new();
    for a in answers {
        match a {
            Answer::Live(p) => live.push(p),
            Answer::Failed(path, e) => eprintln!("{}: no answer: {e}", path.display()),
            Answer::Stale(path) => {
                eprintln!(
                    "{}: nobody answers (its process was killed); removed",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&live)?);
        return Ok(());
    }
    if live.is_empty() {
        println!("no peer is running (control sockets in {})", dir.display());
        return Ok(());
    }
    println!(
        "{:<8} {:<8} {:<20} {:<8} {:<22} {:>6} {:>6} {:>9} {:>10} {:>10} {:>9}",
        "PID",
        "COMMAND",
        "REGION",
        "ROLE",
        "PEER",
        "GEN",
        "ACKED",
        "LAG",
        "SENT",
        "RECEIVED",
        "MISSING"
    );
    for p in &live {
        for r in &p.regions {
            let peer: String = if r.peer.len() > 22 {
                format!("{}…", &r.peer[..21])
            } else {
                r.peer.clone()
            };
            let missing = if r.chunks > 0 {
                format!("{}/{}", r.missing_chunks, r.chunks)
            } else {
                "-".into()
            };
            println!(
                "{:<8} {:<8} {:<20} {:<8} {:<22} {:>6} {:>6} {:>7.1}ms {:>10} {:>10} {:>9}",
                p.pid,
                p.command,
                r.region,
                r.role,
                peer,
                r.generation,
                r.acked,
                r.lag_ms,
                memsync_peer::roles::owner::human_bytes(r.bytes_sent),
                memsync_peer::roles::owner::human_bytes(r.bytes_received),
                missing
            );
            println!("{:<8} {:<8} └ {}", "", "", r.state);
        }
    }
    Ok(())
}

/// Opens `path` for `--detector nbd`: an NBD export whose writes mark chunks for the sync loop.
async fn serve_nbd_region(
    path: &Path,
    name: &str,
    shift: u8,
    listen: &nbd::Listen,
    limits: nbd::server::Limits,
    flush_waits_for_replica: bool,
) -> Result<(SyncRegion, Arc<nbd::FileExport>)> {
    let (source, marks, export) = file_export(path, shift, flush_waits_for_replica)?;
    let server = nbd::NbdServer::bind(listen)
        .await
        .with_context(|| format!("listening for NBD on {listen}"))?
        .with_limits(limits);
    tracing::info!(
        "serving {} as NBD export {}",
        path.display(),
        server.uri(name)
    );
    tokio::spawn(server.serve(name.to_owned(), export.clone()));
    let detector = Box::new(MarksDetector::nbd(marks, source.clone()));
    Ok((SyncRegion::new(source, name, detector)?, export))
}

/// Opens `path` for `--detector fuse`: mounted at `at` as `at/name`, whose writes mark chunks for
/// the sync loop.
fn serve_fuse_region(
    path: &Path,
    name: &str,
    shift: u8,
    at: &Path,
    flush_waits_for_replica: bool,
) -> Result<(
    SyncRegion,
    Arc<nbd::FileExport>,
    memsync_peer::fuse::FuseMount,
)> {
    let (source, marks, export) = file_export(path, shift, flush_waits_for_replica)?;
    let handle = tokio::runtime::Handle::current();
    let mount = memsync_peer::fuse::mount(at, name, export.clone(), handle)
        .with_context(|| format!("mounting {} with FUSE at {}", path.display(), at.display()))?;
    tracing::info!("serving {} as {}", path.display(), at.join(name).display());
    let detector = Box::new(MarksDetector::nbd(marks, source.clone()));
    Ok((SyncRegion::new(source, name, detector)?, export, mount))
}

/// The region file at `path`, mapped for the sync loop and writable through an export whose
/// writes mark their chunks (NBD and FUSE serve it).
fn file_export(
    path: &Path,
    shift: u8,
    flush_waits_for_replica: bool,
) -> Result<(
    Arc<memsync_peer::region::SourceFile>,
    Arc<Marks>,
    Arc<nbd::FileExport>,
)> {
    let source = Arc::new(
        memsync_peer::region::SourceFile::open(path, shift)
            .with_context(|| format!("opening {}", path.display()))?,
    );
    let marks = Marks::new(source.geometry());
    let export = nbd::FileExport::open(path, marks.clone(), flush_waits_for_replica)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    Ok((source, marks, Arc::new(export)))
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

/// The shift of a `--chunk-size`.
fn chunk_shift(chunk_size: u64) -> Result<u8> {
    if !chunk_size.is_power_of_two() || !(4096..=4 << 20).contains(&chunk_size) {
        bail!(
            "--chunk-size {} must be a power of two from 4 KiB to 4 MiB",
            memsync_peer::roles::owner::human_bytes(chunk_size)
        );
    }
    Ok(chunk_size.trailing_zeros() as u8)
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

/// `peer promote`: records DIR/NAME as owned here at the next epoch, its owner fenced, once a
/// crash-consistent replica's journal is settled (so the file holds one whole generation) and its
/// index emptied.
fn promote(dir: &Path, name: &str) -> Result<()> {
    check_region_name(name)?;
    let dir = memsync_peer::region::ReplicaDir::open(dir).context("replica directory")?;
    let policy = memsync_peer::roles::replica::Policy::load(dir.path(), vec![], vec![])?;
    if dir.open_existing(name)?.is_none() {
        bail!(
            "{} does not exist: there is nothing to own",
            dir.display(name).display()
        );
    }
    memsync_peer::roles::replica::recover_journals(&dir);
    // What the replica holds now, to tell a fenced owner's writes apart later; then the index
    // goes: the workload writes DIR/NAME from now on, and no index describes those writes, so
    // should the region come back here as a replica, its bytes are hashed anew.
    let kept = memsync_peer::region::Promotion::record(&dir, name)?;
    memsync_peer::region::forget_index(&dir, name)?;
    let (lost, epoch) = policy.promote(name)?;
    if let Some(p) = kept {
        println!(
            "region {name}: kept the chunk hashes of generation {}, the last one peer {lost} \
             had acknowledged here: a replica this peer reconciles is told which of its chunks \
             hold writes of the fenced owner, which are discarded",
            p.generation
        );
    }
    println!(
        "region {name}: this peer owns {} now, at ownership epoch {epoch}; peer {lost} is fenced \
         (its writes are refused here, and at every replica this peer syncs to). Start the \
         workload on it, and replicate it with `peer sync --region {}`",
        dir.display(name).display(),
        dir.display(name).display(),
    );
    Ok(())
}

/// Sets the epoch `r` (the region file `path`) is owned at, and for a region promoted here what
/// the promotion kept, which tells a fenced owner's discarded writes apart when a replica is
/// reconciled.
fn owned_here(r: &mut SyncRegion, path: &Path, owned: Owned) {
    r.epoch = owned.epoch;
    if owned.promoted_from.is_some() {
        match memsync_peer::region::Promotion::load(path, r.name(), r.owner.geometry()) {
            Ok(p) => r.promotion = p,
            Err(why) => tracing::warn!("{why}: a fenced owner's writes are not told apart"),
        }
    }
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

/// SIGINT (Ctrl-C) or SIGTERM (systemd, kill): the signals that end a peer cleanly.
async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
