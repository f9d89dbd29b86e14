//! `peer uffd …`: the userfaultfd-based commands — probing the kernel, replicating memory that
//! other processes hand over with their uffd, and serving a VMM's page faults from a remote
//! peer (Firecracker's page-fault-handler hand-over).

use super::{identity_dir, resolve, trust_set, IdentityArgs, TrustArgs};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use memsync_peer::net::identity::Identity;
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::lazy::LazyOptions;
use memsync_peer::roles::mount::Origin;
use memsync_peer::roles::owner::SyncOptions;
use memsync_peer::uffd::Probe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum UffdCmd {
    /// Report what this kernel offers (userfaultfd features, PAGEMAP_SCAN) and which uffd
    /// modes work here.
    Probe,
    /// Replicate memory that processes hand over on a Unix socket: each sends its uffd, a memfd
    /// and its pagemap (format: `memsync_peer::uffd::handover`), writes are tracked with
    /// WP_ASYNC + PAGEMAP_SCAN and replicated to the peer at ADDR until the process disconnects.
    Track {
        /// Unix socket to listen on (created; an existing socket file is replaced).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Address of the peer running `peer serve`.
        #[arg(long, value_name = "ADDR")]
        peer: String,
        /// Milliseconds between PAGEMAP_SCAN rounds (or a duration: 50ms, 1s).
        #[arg(long, default_value_t = 100, value_name = "MS", value_parser = crate::units::millis)]
        interval: u64,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Be a VMM's page-fault handler (Firecracker's hand-over: its uffd and a JSON list of
    /// guest memory regions on a Unix socket) and fill its memory from region NAME held by the
    /// peer at ADDR: faults first, the rest in the background. Exits when the VMM does; if the
    /// remote peer is lost first, faults on memory not yet here get SIGBUS and the exit status
    /// is 1.
    Restore {
        /// Unix socket the VMM connects to (created; an existing socket file is replaced).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// A memory image in an object store instead of a peer: s3://BUCKET/[ROOT/]NAME (its
        /// newest generation) or …NAME@GENERATION (`peer sync --to`).
        #[arg(long, value_name = "s3://BUCKET/[ROOT/]NAME[@GENERATION]", conflicts_with_all = ["peer", "name"])]
        from: Option<String>,
        /// Address of the peer holding the memory image (`peer serve`).
        #[arg(long, value_name = "ADDR", required_unless_present = "from")]
        peer: Option<String>,
        /// Region name of the memory image on that peer.
        #[arg(long, required_unless_present = "from")]
        name: Option<String>,
        /// Largest read-ahead window in 64 KiB chunks (0: off).
        #[arg(long, default_value_t = 64, value_name = "CHUNKS")]
        readahead: u64,
        #[command(flatten)]
        from_store: crate::store::StoreReadArgs,
        #[command(flatten)]
        id: IdentityArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
}

fn listen(path: &Path) -> Result<tokio::net::UnixListener> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

pub async fn run(cmd: UffdCmd) -> Result<()> {
    match cmd {
        UffdCmd::Probe => {
            println!("{}", Probe::run());
            Ok(())
        }
        UffdCmd::Track {
            socket,
            peer,
            interval,
            id,
            trust,
        } => {
            Probe::run().require_write_tracking()?;
            let ident = Identity::load_or_create(&identity_dir(&id)?)?;
            let trust = trust_set(&trust)?;
            let addr = resolve(&peer)?;
            let ep = Arc::new(PeerEndpoint::client_for(addr, &ident, trust)?);
            let listener = listen(&socket)?;
            tracing::info!(
                "accepting write-tracking hand-overs on {}; replicating to {addr}",
                socket.display()
            );
            let opts = SyncOptions {
                interval: Duration::from_millis(interval.max(1)),
                ..SyncOptions::default()
            };
            tokio::select! {
                r = memsync_peer::embed::serve_track_handovers(listener, ep, addr, opts) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        UffdCmd::Restore {
            socket,
            from,
            peer,
            name,
            readahead,
            from_store,
            id,
            trust,
        } => {
            Probe::run().require_missing_faults()?;
            let opts = LazyOptions {
                readahead_max: readahead,
                ..LazyOptions::default()
            };
            let (ep, addr);
            let origin = match (&from, peer, &name) {
                (Some(url), _, _) => {
                    let (store, manifest) = crate::store::generation(url, &from_store).await?;
                    Origin::Store {
                        store,
                        manifest,
                        pull: from_store.pull(),
                    }
                }
                (None, Some(peer), Some(name)) => {
                    crate::check_region_name(name)?;
                    let ident = Identity::load_or_create(&identity_dir(&id)?)?;
                    let trust = trust_set(&trust)?;
                    addr = resolve(&peer)?;
                    ep = PeerEndpoint::client_for(addr, &ident, trust)?;
                    Origin::Peer {
                        ep: &ep,
                        addr,
                        name,
                    }
                }
                _ => bail!("name the memory image: --from s3://…, or --peer ADDR --name NAME"),
            };
            let listener = listen(&socket)?;
            tracing::info!(
                "waiting for a VMM's uffd on {}; its memory comes from {origin}",
                socket.display()
            );
            match memsync_peer::roles::lazy::serve_fault_handover(listener, origin, opts).await {
                Ok(()) => {
                    tracing::info!("the VMM exited; every fault was served");
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
    }
}
