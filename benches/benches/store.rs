//! Object storage against a real three-node Garage cluster on loopback (replication factor 3):
//! `peer sync --to`'s upload of a fresh region and of a 1% change against `object_store`'s own
//! multipart put of as many bytes; a lazy mount's first read and cold sequential read against a
//! plain ranged GET of the same bytes; bytes stored for ten generations of a 1%-changing region.
//!
//! `cargo bench -p memsync-benches --bench store` (`STORE_BENCH_MIB`, default 1024;
//! `STORE_BENCH_CHUNK_KIB`, default 1024; `STORE_BENCH_PARALLEL`, default 16). Needs `garage`
//! (`bash test.sh` builds it).

#[path = "../../peer/tests/support/garage.rs"]
mod garage;

use bytes::Bytes;
use memsync_peer::detector::{Marks, MarksDetector};
use memsync_peer::roles::mount::{ChunkSink, MemorySink, RemoteRegion, StorePull};
use memsync_peer::roles::owner::SyncRegion;
use memsync_peer::store::format::Writer;
use memsync_peer::store::upload::{self, UploadOptions};
use memsync_peer::store::{RegionStore, StoreUrl};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rand::{Rng, RngCore, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn mibps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// `object_store`'s multipart put of `data` as one object, `parallel` parts in flight.
async fn multipart(store: &dyn ObjectStore, key: &str, data: &[u8], parallel: usize) -> Duration {
    let t = Instant::now();
    let upload = store.put_multipart(&key.into()).await.unwrap();
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    for part in data.chunks(8 << 20) {
        w.wait_for_capacity(parallel).await.unwrap();
        w.put(Bytes::copy_from_slice(part));
    }
    w.finish().await.unwrap();
    t.elapsed()
}

/// `peer sync --to` of `file` (once, or a round every 50 ms), telling `published` of each
/// generation; its detector hashes the region, or with `marks` takes the marks of each write (as
/// the `nbd` detector does).
async fn upload(
    url: &StoreUrl,
    file: &Path,
    shift: u8,
    parallel: usize,
    once: bool,
    marks: Option<Arc<Marks>>,
    published: impl FnMut(&upload::Published),
) {
    let store = Arc::new(RegionStore::open(url).unwrap());
    let mut region = SyncRegion::open(file, &url.name, shift).unwrap();
    if let Some(marks) = marks {
        region.detector = Box::new(MarksDetector::nbd(marks, region.source.clone()));
    }
    let opts = UploadOptions {
        interval: Duration::from_millis(50),
        once,
        parallel,
        take_over: false,
        settle: false,
    };
    let me = Writer {
        fingerprint: [7; 32],
        nonce: rand::random(),
    };
    upload::run(store, region.source, region.detector, me, &opts, published)
        .await
        .unwrap();
}

/// One `peer sync --to … --once` of `file`: (time, bytes uploaded).
async fn upload_once(url: &StoreUrl, file: &Path, shift: u8, parallel: usize) -> (Duration, u64) {
    let mut uploaded = 0;
    let t = Instant::now();
    upload(url, file, shift, parallel, true, None, |p| {
        uploaded = p.uploaded
    })
    .await;
    (t.elapsed(), uploaded)
}

/// One page of 4 KiB written with random bytes in each of `per_gen` random chunks of `file` (and
/// of `image`, its copy), marked in `marks` if given.
fn change(
    f: &std::fs::File,
    image: &mut [u8],
    chunk: usize,
    per_gen: usize,
    rng: &mut impl Rng,
    marks: Option<&Marks>,
) {
    let chunks = image.len() / chunk;
    let mut written = Vec::new();
    for _ in 0..per_gen {
        let c = rng.random_range(0..chunks);
        let mut page = [0u8; 4096];
        rng.fill_bytes(&mut page);
        let at = c * chunk + rng.random_range(0..chunk / 4096) * 4096;
        f.write_all_at(&page, at as u64).unwrap();
        written.push(at);
        image[at..at + 4096].copy_from_slice(&page);
    }
    // Marked once all are written, so that one round takes the whole change.
    if let Some(m) = marks {
        for &at in &written {
            m.mark(at as u64, 4096);
        }
    }
}

/// Prints the row of a running upload with `detector`: the median of its `lags` (change →
/// published, multipart put of as many bytes).
fn lag_row(detector: &str, lags: &mut [(Duration, Duration)]) {
    lags.sort();
    let (lag, base) = lags[lags.len() / 2];
    println!(
        "| 1% change, running upload, {detector} detector (median of {}) | object_store multipart {:.0} ms | memsync change → published {:.0} ms | {:.2}× |",
        lags.len(),
        base.as_secs_f64() * 1e3,
        lag.as_secs_f64() * 1e3,
        base.as_secs_f64() / lag.as_secs_f64()
    );
}

fn main() {
    let mib = env("STORE_BENCH_MIB", 1024);
    let chunk = env("STORE_BENCH_CHUNK_KIB", 1024) << 10;
    let parallel = env("STORE_BENCH_PARALLEL", 16);
    let size = mib << 20;
    let shift = chunk.trailing_zeros() as u8;
    let g = garage::Garage::start();
    for (k, v) in g.env() {
        // SAFETY: set before the runtime starts any thread.
        unsafe { std::env::set_var(k, v) };
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client: Arc<dyn ObjectStore> = Arc::new(g.client());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("region");
    let mut image = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut image);
    std::fs::write(&file, &image).unwrap();
    let url = StoreUrl::parse(&format!("s3://{}/bench/region", garage::BUCKET)).unwrap();
    println!(
        "{mib} MiB region of random bytes, {} KiB chunks, {parallel} requests in flight; \
         Garage {} nodes, replication factor 3, on loopback",
        chunk >> 10,
        3
    );

    // 1. A fresh region.
    let base = rt.block_on(multipart(&*client, "baseline/full", &image, parallel));
    let (up, bytes) = rt.block_on(upload_once(&url, &file, shift, parallel));
    assert_eq!(bytes as usize, size);
    println!(
        "| fresh upload | object_store multipart {:.0} MiB/s | memsync {:.0} MiB/s | {:.2}× |",
        mibps(size, base),
        mibps(size, up),
        base.as_secs_f64() / up.as_secs_f64()
    );

    // 2. Ten generations, each changing one 4 KiB page in 1% of the chunks: the first change
    //    uploaded by a `--once` run (which reads and names the whole region), the others by a
    //    running upload (hash detector every 50 ms), timed from the change to its generation.
    let chunks = size / chunk;
    let per_gen = (chunks / 100).max(1);
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut changes = 0u64;
    // The baselines put as many random bytes as each change uploads.
    let mut sample = vec![0u8; per_gen * chunk];
    rng.fill_bytes(&mut sample);
    let (tx, mut published) = tokio::sync::mpsc::unbounded_channel();
    let mut running = None;
    let mut lags = Vec::new();
    for generation in 2..=10 {
        // The baseline first, under the same background load (the running upload's scans).
        let base = rt.block_on(multipart(&*client, "baseline/change", &sample, parallel));
        change(&f, &mut image, chunk, per_gen, &mut rng, None);
        if generation > 2 {
            // From the change to the first generation holding some of it (a scan that began
            // during the writes may split them over two).
            let t = Instant::now();
            let p: upload::Published = rt.block_on(published.recv()).unwrap();
            let lag = t.elapsed();
            changes += p.uploaded;
            lags.push((lag, base));
            continue;
        }
        let (up, bytes) = rt.block_on(upload_once(&url, &file, shift, parallel));
        changes += bytes;
        if generation == 2 {
            let (url, file, tx) = (url.clone(), file.clone(), tx.clone());
            running = Some(rt.spawn(async move {
                upload(&url, &file, shift, parallel, false, None, |p| {
                    let _ = tx.send(p.clone());
                })
                .await
            }));
            // Its first generation re-reads the region as it is.
            rt.block_on(published.recv()).unwrap();
            println!(
                "| 1% change ({} MiB in {per_gen} chunks) | object_store multipart {:.0} ms | \
                 memsync {:.0} ms (reads and names the whole region, uploads {:.1} MiB) | {:.2}× |",
                sample.len() >> 20,
                base.as_secs_f64() * 1e3,
                up.as_secs_f64() * 1e3,
                bytes as f64 / (1 << 20) as f64,
                base.as_secs_f64() / up.as_secs_f64()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    running.expect("started").abort();
    while let Ok(p) = published.try_recv() {
        changes += p.uploaded;
    }
    lag_row("hash", &mut lags);
    let stored: u64 = rt.block_on(async {
        use futures::TryStreamExt;
        client
            .list(Some(&"bench/".into()))
            .map_ok(|m| m.size)
            .try_collect::<Vec<u64>>()
            .await
            .unwrap()
            .iter()
            .sum()
    });
    let logical = size as u64 + changes;
    println!(
        "| ten generations | region + changes {:.1} MiB | stored {:.1} MiB (chunks and manifests) | {:.3}× |",
        logical as f64 / (1 << 20) as f64,
        stored as f64 / (1 << 20) as f64,
        stored as f64 / logical as f64
    );

    // 3. A lazy mount of the newest generation: the first read of a page, and a cold sequential
    //    read, against ranged GETs of the same bytes of the baseline object.
    let store = Arc::new(RegionStore::open(&url).unwrap());
    let pull = StorePull {
        parallel,
        background: true,
    };
    let (mut first, mut first_get, mut opened) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..5 {
        let c = (k * 7919) % chunks;
        let t = Instant::now();
        let key: object_store::path::Path = "baseline/full".into();
        let off = (c * chunk) as u64;
        rt.block_on(client.get_range(&key, off..off + 4096))
            .unwrap();
        first_get.push(t.elapsed());
        let t = Instant::now();
        let m = rt.block_on(store.manifest(None)).unwrap();
        opened.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(async {
            let sink = Arc::new(MemorySink::new(m.geometry));
            let s = sink.clone();
            let make = Box::new(move |_| s as Arc<dyn ChunkSink>);
            let r = RemoteRegion::from_store(store.clone(), m, make, pull);
            r.ensure(c as u64..c as u64 + 1).await.unwrap();
        });
        first.push(t.elapsed());
    }
    for v in [&mut first, &mut first_get, &mut opened] {
        v.sort();
    }
    println!(
        "| first read of a page (median of 5) | ranged GET of 4 KiB {:.1} ms | memsync mount {:.1} ms (its chunk; finding and reading the manifest before: {:.1} ms) | {:.2}× |",
        first_get[2].as_secs_f64() * 1e3,
        first[2].as_secs_f64() * 1e3,
        opened[2].as_secs_f64() * 1e3,
        first[2].as_secs_f64() / first_get[2].as_secs_f64()
    );
    let t = Instant::now();
    rt.block_on(async {
        let key: object_store::path::Path = "baseline/full".into();
        for c in 0..chunks as u64 {
            let off = c * chunk as u64;
            client
                .get_range(&key, off..off + chunk as u64)
                .await
                .unwrap();
        }
    });
    let get_loop = t.elapsed();
    // With the background pull, and fetching only what is read (with its read-ahead).
    for background in [true, false] {
        let t = Instant::now();
        let sink = rt.block_on(async {
            let m = store.manifest(None).await.unwrap();
            let sink = Arc::new(MemorySink::new(m.geometry));
            let s = sink.clone();
            let make = Box::new(move |_| s as Arc<dyn ChunkSink>);
            let pull = StorePull {
                parallel,
                background,
            };
            let r = RemoteRegion::from_store(store.clone(), m, make, pull);
            for c in 0..chunks as u64 {
                r.ensure(c..c + 1).await.unwrap();
            }
            sink
        });
        let seq = t.elapsed();
        let mut got = vec![0u8; size];
        sink.read(0, &mut got);
        assert!(got == image, "the mount read other bytes than the region's");
        println!(
            "| cold sequential read | ranged GET loop of {} KiB {:.0} MiB/s | memsync mount{} {:.0} MiB/s | {:.2}× |",
            chunk >> 10,
            mibps(size, get_loop),
            if background { "" } else { " --on-demand" },
            mibps(size, seq),
            get_loop.as_secs_f64() / seq.as_secs_f64()
        );
    }

    // 4. The same 1% changes, uploaded by a running upload whose detector takes the marks of
    //    each write (the `nbd` and `fuse` detectors' way): nothing is scanned.
    let marks = Marks::new(rt.block_on(store.manifest(None)).unwrap().geometry);
    let (tx, mut published) = tokio::sync::mpsc::unbounded_channel();
    let running = {
        let (url, file, marks) = (url.clone(), file.clone(), marks.clone());
        rt.spawn(async move {
            upload(&url, &file, shift, parallel, false, Some(marks), |p| {
                let _ = tx.send(p.clone());
            })
            .await
        })
    };
    // Its first round reads the region as it is.
    rt.block_on(published.recv()).unwrap();
    let mut lags = Vec::new();
    for _ in 0..8 {
        let base = rt.block_on(multipart(&*client, "baseline/change", &sample, parallel));
        change(&f, &mut image, chunk, per_gen, &mut rng, Some(&marks));
        let t = Instant::now();
        rt.block_on(published.recv()).unwrap();
        lags.push((t.elapsed(), base));
    }
    running.abort();
    lag_row("marks", &mut lags);
}
