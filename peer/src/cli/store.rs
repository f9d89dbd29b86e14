//! The object-store commands: `peer sync --to s3://…`, `peer mount s3://…` and `peer snapshot`.
//! Credentials and the endpoint come from the environment, as the AWS tools read them.

use crate::units;
use anyhow::{Context, Result};
use memsync_peer::net::identity::Identity;
use memsync_peer::roles::mount::{ChunkSink, MemorySink, RemoteRegion, StorePull};
use memsync_peer::roles::owner::SyncRegion;
use memsync_peer::store::cache::ChunkCache;
use memsync_peer::store::format::{Manifest, Writer};
use memsync_peer::store::upload::{self, UploadOptions};
use memsync_peer::store::{RegionStore, StoreUrl};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `peer snapshot`: the generations of a region in an object store.
#[derive(clap::Subcommand)]
pub enum SnapshotCmd {
    /// List the readable generations of s3://BUCKET/[ROOT/]NAME, oldest first.
    List {
        /// The region: s3://BUCKET/[ROOT/]NAME.
        url: String,
    },
    /// Delete every generation but the newest --keep, then the chunk objects no generation of
    /// any region under ROOT names; safe while a writer uploads (objects younger than --grace
    /// are kept).
    Prune {
        /// The region: s3://BUCKET/[ROOT/]NAME.
        url: String,
        /// Generations to keep.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
        /// Unreferenced objects younger than this are kept: uploads of a generation not yet
        /// published (or a duration: 30m, 2h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
}

fn open(url: &str) -> Result<Arc<RegionStore>> {
    let url = StoreUrl::parse(url)?;
    Ok(Arc::new(RegionStore::open(&url)?))
}

/// Runs a `peer snapshot` command.
pub async fn snapshot(cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::List { url } => {
            let store = open(&url)?;
            let gens = store.generations().await?;
            if gens.is_empty() {
                println!("{}: no generation yet", store.url().region());
            }
            for g in gens {
                println!(
                    "{}@{}\tepoch {}\t{}",
                    store.url().region(),
                    g.generation,
                    g.epoch,
                    g.stored_at.to_rfc3339()
                );
            }
            Ok(())
        }
        SnapshotCmd::Prune { url, keep, grace } => {
            let store = open(&url)?;
            let r = store.prune(keep as usize, grace).await?;
            println!(
                "{}: {} generations deleted, {} kept; {} chunk objects deleted ({:.1} MiB), {} kept",
                store.url().region(),
                r.manifests_deleted,
                r.manifests_kept,
                r.chunks_deleted,
                r.bytes_deleted as f64 / (1 << 20) as f64,
                r.chunks_kept
            );
            Ok(())
        }
    }
}

/// `peer sync --region FILE --to URL`: uploads `region` as its detector sees it change.
pub async fn sync_to(
    url: &str,
    region: SyncRegion,
    ident: &Identity,
    opts: &UploadOptions,
) -> Result<()> {
    let url = StoreUrl::parse(url)?;
    anyhow::ensure!(
        url.generation.is_none(),
        "{}: a writer publishes new generations; drop the @GENERATION",
        url.region()
    );
    let store = Arc::new(RegionStore::open(&url)?);
    let me = Writer {
        fingerprint: ident.fingerprint().bytes(),
        nonce: rand::random(),
    };
    let region_url = store.url().region();
    upload::run(store, region.source, region.detector, me, opts, |_| {})
        .await
        .with_context(|| format!("uploading to {region_url}"))?;
    Ok(())
}

/// How a mount or restore reads a generation from an object store.
#[derive(clap::Args)]
pub struct StoreReadArgs {
    /// From an object store: GETs in flight at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    parallel: usize,
    /// From an object store: fetch only the chunks read (and, after sequential reads, the next
    /// --parallel ones), not every chunk in the background.
    #[arg(long)]
    on_demand: bool,
    /// From an object store: keep the chunks read in DIR and read them from there first (shared
    /// by every mount and restore naming DIR; each file is checked against its chunk's name).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The most the --cache directory holds; the least recently used chunks go first.
    #[arg(long, default_value = "4GiB", value_name = "SIZE", value_parser = units::bytes, requires = "cache")]
    cache_size: u64,
}

impl StoreReadArgs {
    /// How chunks are fetched.
    pub fn pull(&self) -> StorePull {
        StorePull {
            parallel: self.parallel,
            background: !self.on_demand,
        }
    }
}

/// The store of `url` and the manifest of the generation it names (the newest without one),
/// read as `how` says.
pub async fn generation(url: &str, how: &StoreReadArgs) -> Result<(Arc<RegionStore>, Manifest)> {
    let url = StoreUrl::parse(url)?;
    let mut store = RegionStore::open(&url)?;
    if let Some(dir) = &how.cache {
        let cache = ChunkCache::open(dir, how.cache_size)
            .with_context(|| format!("opening the chunk cache {}", dir.display()))?;
        store = store.with_cache(Arc::new(cache));
    }
    let store = Arc::new(store);
    let manifest = store
        .manifest(url.generation)
        .await
        .with_context(|| format!("mounting {}", url.region()))?;
    Ok((store, manifest))
}

/// `peer mount s3://…[@GENERATION]`: a lazy mount of one generation, fetched from the store.
pub async fn mount(url: &str, how: &StoreReadArgs) -> Result<(RemoteRegion, Arc<MemorySink>, u64)> {
    let (store, manifest) = generation(url, how).await?;
    let generation = manifest.generation;
    let sink = Arc::new(MemorySink::new(manifest.geometry));
    let s = sink.clone();
    let make = Box::new(move |_| s as Arc<dyn ChunkSink>);
    let remote = RemoteRegion::from_store(store, manifest, make, how.pull());
    Ok((remote, sink, generation))
}
