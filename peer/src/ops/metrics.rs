//! Per-region metrics (the `prometheus-client` crate): bytes and chunks sent and received,
//! rounds, reconnects, generations, missing chunks, change → ACK lag and fetch latency as
//! histograms, each labelled with the region and this peer's role in it. One registry per
//! process; a region's handle ([`RegionMetrics`]) also carries what `peer status` shows beside
//! the numbers (its peer and state) and leaves the status listing when dropped.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// This peer's part in a region.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It owns the region and replicates it (`sync`, `migrate`).
    Owner,
    /// It holds a replica (`serve`).
    Replica,
    /// It reads a remote region lazily (`mount`, `uffd`).
    Mount,
}

impl Role {
    /// The role's name as labels and `peer status` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Replica => "replica",
            Role::Mount => "mount",
        }
    }
}

impl EncodeLabelValue for Role {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// The labels of every per-region series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    /// The region's name.
    pub region: String,
    /// This peer's role in it.
    pub role: Role,
}

/// Histogram buckets for latencies: 100 µs to about 52 s, doubling.
#[derive(Clone, Copy)]
struct Latency;

impl MetricConstructor<Histogram> for Latency {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(1e-4, 2.0, 20))
    }
}

struct Families {
    bytes_sent: Family<Labels, Counter>,
    chunks_sent: Family<Labels, Counter>,
    bytes_received: Family<Labels, Counter>,
    chunks_received: Family<Labels, Counter>,
    rounds: Family<Labels, Counter>,
    reconnects: Family<Labels, Counter>,
    generation: Family<Labels, Gauge>,
    acked: Family<Labels, Gauge>,
    missing: Family<Labels, Gauge>,
    chunks: Family<Labels, Gauge>,
    ack_lag: Family<Labels, Histogram, Latency>,
    fetch_latency: Family<Labels, Histogram, Latency>,
}

struct Global {
    registry: Registry,
    families: Families,
    live: Mutex<Vec<Weak<Entry>>>,
}

fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let mut registry = Registry::with_prefix("memsync");
        let families = Families {
            bytes_sent: Family::default(),
            chunks_sent: Family::default(),
            bytes_received: Family::default(),
            chunks_received: Family::default(),
            rounds: Family::default(),
            reconnects: Family::default(),
            generation: Family::default(),
            acked: Family::default(),
            missing: Family::default(),
            chunks: Family::default(),
            ack_lag: Family::new_with_constructor(Latency),
            fetch_latency: Family::new_with_constructor(Latency),
        };
        let f = &families;
        let r = &mut registry;
        r.register("bytes_sent", "Chunk bytes sent", f.bytes_sent.clone());
        r.register("chunks_sent", "Chunks sent", f.chunks_sent.clone());
        let received = "Chunk bytes received and applied";
        r.register("bytes_received", received, f.bytes_received.clone());
        let applied = "Chunks received and applied";
        r.register("chunks_received", applied, f.chunks_received.clone());
        r.register("rounds", "Rounds acknowledged", f.rounds.clone());
        r.register(
            "reconnects",
            "Connections lost and made again",
            f.reconnects.clone(),
        );
        let generation = "Newest generation started (owner) or committed (replica)";
        r.register("generation", generation, f.generation.clone());
        let acked = "Newest generation the replica acknowledged";
        r.register("acked_generation", acked, f.acked.clone());
        r.register(
            "missing_chunks",
            "Chunks a lazy replica still lacks",
            f.missing.clone(),
        );
        r.register("chunks", "Chunks in the region", f.chunks.clone());
        let lag = "From the detector run that found a round's changes to the round's ACK";
        r.register("ack_lag_seconds", lag, f.ack_lag.clone());
        let fetch = "From a read blocking on a missing chunk to its arrival";
        r.register("fetch_latency_seconds", fetch, f.fetch_latency.clone());
        Global {
            registry,
            families,
            live: Mutex::default(),
        }
    })
}

/// Every metric of the process in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &global().registry)
        .expect("writing to a String");
    out
}

/// One region's series, looked up once: updates are then one atomic operation each (a chunk
/// sent or received costs no lookup in the families).
struct Handles {
    bytes_sent: Counter,
    chunks_sent: Counter,
    bytes_received: Counter,
    chunks_received: Counter,
    rounds: Counter,
    reconnects: Counter,
    generation: Gauge,
    acked: Gauge,
    missing: Gauge,
    chunks: Gauge,
    ack_lag: Histogram,
    fetch_latency: Histogram,
}

impl Handles {
    fn of(l: &Labels) -> Self {
        let f = &global().families;
        Handles {
            bytes_sent: f.bytes_sent.get_or_create(l).clone(),
            chunks_sent: f.chunks_sent.get_or_create(l).clone(),
            bytes_received: f.bytes_received.get_or_create(l).clone(),
            chunks_received: f.chunks_received.get_or_create(l).clone(),
            rounds: f.rounds.get_or_create(l).clone(),
            reconnects: f.reconnects.get_or_create(l).clone(),
            generation: f.generation.get_or_create(l).clone(),
            acked: f.acked.get_or_create(l).clone(),
            missing: f.missing.get_or_create(l).clone(),
            chunks: f.chunks.get_or_create(l).clone(),
            ack_lag: f.ack_lag.get_or_create(l).clone(),
            fetch_latency: f.fetch_latency.get_or_create(l).clone(),
        }
    }
}

/// What `peer status` shows: the series and, beside the numbers, the peer and the state.
struct Entry {
    labels: Labels,
    m: Handles,
    peer: Mutex<String>,
    state: Mutex<String>,
    /// The last round's change → ACK lag in microseconds (the histogram keeps them all).
    last_lag_us: std::sync::atomic::AtomicU64,
}

/// One region's figures, updated by its driver.
#[derive(Clone)]
pub struct RegionMetrics {
    entry: Arc<Entry>,
}

impl RegionMetrics {
    /// The metrics of `region` in `role`, listed by `peer status` while this handle (or a clone)
    /// lives.
    pub fn new(region: &str, role: Role) -> Self {
        let labels = Labels {
            region: region.to_owned(),
            role,
        };
        let entry = Arc::new(Entry {
            m: Handles::of(&labels),
            labels,
            peer: Mutex::default(),
            state: Mutex::new("starting".into()),
            last_lag_us: Default::default(),
        });
        let mut live = global().live.lock().expect("live lock");
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&entry));
        RegionMetrics { entry }
    }

    /// The peer it is replicated with, as shown.
    pub fn set_peer(&self, peer: impl Into<String>) {
        *self.entry.peer.lock().expect("peer lock") = peer.into();
    }

    /// What the region is doing, as shown (e.g. "streaming", "reconciling").
    pub fn set_state(&self, state: &str) {
        let mut s = self.entry.state.lock().expect("state lock");
        if *s != state {
            *s = state.to_owned();
        }
    }

    /// A chunk of `bytes` went out.
    pub fn sent(&self, bytes: u64) {
        self.entry.m.bytes_sent.inc_by(bytes);
        self.entry.m.chunks_sent.inc();
    }

    /// A chunk of `bytes` arrived and was applied.
    pub fn received(&self, bytes: u64) {
        self.entry.m.bytes_received.inc_by(bytes);
        self.entry.m.chunks_received.inc();
    }

    /// The generation started (owner) or committed (replica).
    pub fn generation(&self, g: u64) {
        self.entry.m.generation.set(g as i64);
    }

    /// The replica acknowledged generation `g`, `lag` after its changes were found.
    pub fn acked(&self, g: u64, lag: Duration) {
        let m = &self.entry.m;
        m.acked.set(g as i64);
        m.rounds.inc();
        m.ack_lag.observe(lag.as_secs_f64());
        let us = lag.as_micros() as u64;
        self.entry
            .last_lag_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connection was lost and is being made again.
    pub fn reconnect(&self) {
        self.entry.m.reconnects.inc();
    }

    /// A lazy replica's progress: `missing` of `total` chunks not yet here.
    pub fn lazy(&self, missing: u64, total: u64) {
        self.entry.m.missing.set(missing as i64);
        self.entry.m.chunks.set(total as i64);
    }

    /// A lazy replica now lacks `missing` chunks.
    pub fn lazy_missing(&self, missing: u64) {
        self.entry.m.missing.set(missing as i64);
    }

    /// A blocked read waited `wait` for its chunk.
    pub fn fetched(&self, wait: Duration) {
        self.entry.m.fetch_latency.observe(wait.as_secs_f64());
    }
}

/// One region as `peer status` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RegionStatus {
    /// The region's name.
    pub region: String,
    /// This peer's role in it: owner, replica or mount.
    pub role: String,
    /// The peer it is replicated with.
    pub peer: String,
    /// What it is doing.
    pub state: String,
    /// Newest generation started (owner) or committed (replica).
    pub generation: u64,
    /// Newest generation the replica acknowledged (owner).
    pub acked: u64,
    /// Rounds acknowledged.
    pub rounds: u64,
    /// Change → ACK lag of the last round acknowledged, in milliseconds (owner).
    pub lag_ms: f64,
    /// Chunk bytes sent.
    pub bytes_sent: u64,
    /// Chunk bytes received and applied.
    pub bytes_received: u64,
    /// Connections lost and made again.
    pub reconnects: u64,
    /// Chunks still missing at a lazy replica, and the region's chunk count (0 if not lazy).
    pub missing_chunks: u64,
    /// The region's chunk count where known.
    pub chunks: u64,
}

/// Every live region of the process, ordered by name and role.
pub fn snapshot() -> Vec<RegionStatus> {
    let g = global();
    let live: Vec<Arc<Entry>> = {
        let mut live = g.live.lock().expect("live lock");
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    let mut out: Vec<RegionStatus> = live
        .iter()
        .map(|e| {
            let (l, m) = (&e.labels, &e.m);
            let lag_us = e.last_lag_us.load(std::sync::atomic::Ordering::Relaxed);
            RegionStatus {
                region: l.region.clone(),
                role: l.role.as_str().to_owned(),
                peer: e.peer.lock().expect("peer lock").clone(),
                state: e.state.lock().expect("state lock").clone(),
                generation: m.generation.get().max(0) as u64,
                acked: m.acked.get().max(0) as u64,
                rounds: m.rounds.get(),
                lag_ms: lag_us as f64 / 1e3,
                bytes_sent: m.bytes_sent.get(),
                bytes_received: m.bytes_received.get(),
                reconnects: m.reconnects.get(),
                missing_chunks: m.missing.get().max(0) as u64,
                chunks: m.chunks.get().max(0) as u64,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.region, &a.role).cmp(&(&b.region, &b.role)));
    out
}
