//! Regions in object storage, against a real three-node Garage cluster on loopback: `peer sync
//! --to s3://…` under a live writer, `peer mount s3://…[@GENERATION]` read back through NBD
//! (qemu-img, qemu-io), a node killed mid-upload, damaged and missing objects, bad credentials,
//! a missing bucket, two owners on one region (and two racing for its first epoch), prune while an
//! upload runs, uploads of an NBD export's writes, and a replica peer keeping the store (`serve
//! --to`).

mod support;

use futures::TryStreamExt;
use memsync_peer::store::format::{Manifest, Writer, ZERO};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::{Rng, RngCore};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::garage::{Garage, BUCKET};
use support::{Proc, BIN};

const T: Duration = Duration::from_secs(60);

fn peer(g: &Garage, args: &[&str]) -> Proc {
    Proc::spawn(Command::new(BIN).args(args).envs(g.env()))
}

fn run(g: &Garage, args: &[&str]) -> Output {
    command(g, args).output().unwrap()
}

/// The `peer` command with `args` and the garage's credentials.
fn command(g: &Garage, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).envs(g.env()).env("NO_COLOR", "1");
    c
}

fn url(root: &str, name: &str) -> String {
    format!("s3://{BUCKET}/{root}/{name}")
}

/// `peer sync --region FILE --to URL --once` as identity `id`; its output.
fn upload_once(g: &Garage, file: &Path, url: &str, id: &Path, extra: &[&str]) -> Output {
    upload_once_cmd(g, file, url, id, extra).output().unwrap()
}

/// The command of [`upload_once`].
fn upload_once_cmd(g: &Garage, file: &Path, url: &str, id: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "sync",
        "--region",
        file.to_str().unwrap(),
        "--to",
        url,
        "--once",
        "--identity",
        id.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    command(g, &args)
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {err}");
    err
}

/// The one `error:` line a failed command printed.
fn one_error(out: &Output) -> String {
    assert!(!out.status.success(), "it succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_owned()
}

/// Mounts `url` over NBD and reads the whole export with qemu-img; its bytes, or qemu-img's
/// error with the mount's log.
fn mount_read(g: &Garage, dir: &Path, url: &str, name: &str) -> Result<Vec<u8>, String> {
    let (m, sock) = mount(g, dir, url, &[]);
    read_export(&m, dir, &sock, name)
}

/// `peer mount URL --nbd-listen unix:SOCK EXTRA…` once its export is up: the mount, and SOCK.
fn mount(g: &Garage, dir: &Path, url: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let sock = dir.join(format!("m{}.sock", rand::random::<u32>()));
    let listen = format!("unix:{}", sock.display());
    let mut args = vec!["mount", url, "--nbd-listen", &listen];
    args.extend_from_slice(extra);
    let m = peer(g, &args);
    m.wait_for("NBD export at", T);
    (m, sock)
}

/// Every byte of export `name` of mount `m` at `sock`, read with qemu-img into `dir`; or
/// qemu-img's error with the mount's log.
fn read_export(m: &Proc, dir: &Path, sock: &Path, name: &str) -> Result<Vec<u8>, String> {
    let out = dir.join("read.raw");
    let conv = Command::new("qemu-img")
        .args(["convert", "-f", "raw"])
        .arg(format!("nbd+unix:///{name}?socket={}", sock.display()))
        .args(["-O", "raw"])
        .arg(&out)
        .output()
        .expect("qemu-img is needed (test.sh installs it)");
    if !conv.status.success() {
        return Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&conv.stderr),
            m.output()
        ));
    }
    Ok(std::fs::read(&out).unwrap())
}

/// A running `peer sync --region FILE --to URL` as identity `id`, a round every `interval`,
/// with `extra` arguments.
fn continuous(
    g: &Garage,
    file: &Path,
    url: &str,
    id: &Path,
    interval: &str,
    extra: &[&str],
) -> Proc {
    let (file, id) = (file.to_str().unwrap(), id.to_str().unwrap());
    let mut args = vec![
        "sync",
        "--region",
        file,
        "--to",
        url,
        "--interval",
        interval,
        "--identity",
        id,
    ];
    args.extend_from_slice(extra);
    peer(g, &args)
}

/// The generations `peer snapshot list` prints: (generation, line).
fn generations(g: &Garage, url: &str) -> Vec<(u64, String)> {
    let out = run(g, &["snapshot", "list", url]);
    ok(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let g = l
                .split_once('@')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((g, l.to_owned()))
        })
        .collect()
}

/// Writes `data` at `offset` of `file`.
fn write_at(file: &Path, data: &[u8], offset: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(data, offset)
        .unwrap();
}

/// Writes random bytes into a random 4 KiB page of `file` every `pause` until stopped.
fn writer(file: PathBuf, pause: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let pages = f.metadata().unwrap().len() / 4096;
        let mut rng = rand::rng();
        let mut page = [0u8; 4096];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            rng.fill_bytes(&mut page);
            f.write_all_at(&page, rng.random_range(0..pages) * 4096)
                .unwrap();
            n += 1;
            std::thread::sleep(pause);
        }
        n
    })
}

#[test]
fn uploads_under_a_live_writer_and_mounts_of_the_latest_and_an_older_generation_are_byte_identical()
{
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    let file = dir.path().join("mem");
    support::random_file(&file, 16 << 20);
    // A hole of zeros, which is not stored.
    write_at(&file, &[0; 1 << 20], 4 << 20);
    let u = url("fleet", "mem");
    let first = ok(&upload_once(&g, &file, &u, &id, &[]));
    assert!(
        first.contains("generation 1: 240 chunks changed, 15.0 MiB uploaded"),
        "{first}"
    );
    let older = std::fs::read(&file).unwrap();

    // One chunk changed: one chunk uploaded.
    write_at(&file, &[7; 100], 9 << 20);
    let second = ok(&upload_once(&g, &file, &u, &id, &[]));
    assert!(
        second.contains("generation 2: 1 chunks changed, 0.1 MiB uploaded"),
        "{second}"
    );

    // A continuous upload while a writer writes, then a last generation once it stopped.
    let sync = continuous(&g, &file, &u, &id, "100ms", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(file.clone(), Duration::from_millis(2), stop.clone());
    sync.wait_for("generation 6:", T);
    stop.store(true, Ordering::Relaxed);
    assert!(w.join().unwrap() > 100);
    drop(sync);
    ok(&upload_once(&g, &file, &u, &id, &[]));
    let latest = std::fs::read(&file).unwrap();

    let gens = generations(&g, &u);
    assert!(gens.len() >= 7, "{gens:?}");
    assert_eq!(gens[0].0, 1);
    assert!(gens.windows(2).all(|w| w[0].0 < w[1].0), "{gens:?}");
    assert_eq!(mount_read(&g, dir.path(), &u, "mem").unwrap(), latest);
    assert_eq!(
        mount_read(&g, dir.path(), &format!("{u}@1"), "mem").unwrap(),
        older
    );
    assert_ne!(older, latest);
}

#[test]
fn a_node_killed_mid_upload_does_not_stop_it_and_the_result_verifies() {
    let mut g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    support::random_file(&file, 64 << 20);
    let u = url("q", "big");
    let id = dir.path().join("id");
    let mut up = peer(
        &g,
        &[
            "sync",
            "--region",
            file.to_str().unwrap(),
            "--to",
            &u,
            "--once",
            "--parallel",
            "4",
            "--chunk-size",
            "16KiB",
            "--identity",
            id.to_str().unwrap(),
        ],
    );
    up.wait_for("epoch 1 claimed", T);
    std::thread::sleep(Duration::from_millis(300));
    g.kill9(2);
    assert!(
        up.wait(Duration::from_secs(300)).success(),
        "{}",
        up.output()
    );
    up.wait_for("generation 1: 4096 chunks changed, 64.0 MiB uploaded", T);
    assert_eq!(
        mount_read(&g, dir.path(), &u, "big").unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[test]
fn a_corrupted_or_missing_chunk_object_is_reported_and_never_served() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r");
    support::random_file(&file, 1 << 20);
    let u = url("c", "r");
    ok(&upload_once(&g, &file, &u, &dir.path().join("id"), &[]));
    let bytes = std::fs::read(&file).unwrap();
    let name = |i: usize| {
        let chunk = &bytes[i * 65536..(i + 1) * 65536];
        format!("c/chunks/{}", blake3::hash(chunk).to_hex())
    };
    let client = g.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spoilt = PutPayload::from(vec![0x55u8; 65536]);
        client.put(&name(3).as_str().into(), spoilt).await.unwrap();
        client.delete(&name(5).as_str().into()).await.unwrap();
    });

    let sock = dir.path().join("m.sock");
    let m = peer(
        &g,
        &[
            "mount",
            &u,
            "--nbd-listen",
            &format!("unix:{}", sock.display()),
        ],
    );
    m.wait_for("NBD export at", T);
    let uri = format!("nbd+unix:///r?socket={}", sock.display());
    let read = |off: usize| {
        Command::new("qemu-io")
            .args(["-r", "-f", "raw", &uri, "-c"])
            .arg(format!("read -v {off} 16"))
            .output()
            .unwrap()
    };
    // A good chunk reads as it was uploaded.
    let good = read(65536);
    let text = String::from_utf8_lossy(&good.stdout);
    let first = text.lines().next().unwrap_or_default().to_owned();
    assert!(
        first.contains(&format!("{:02x} {:02x}", bytes[65536], bytes[65537])),
        "{text}"
    );
    for (chunk, why) in [(3, "does not hold the bytes it names"), (5, "is missing")] {
        let bad = read(chunk * 65536);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&bad.stdout),
            String::from_utf8_lossy(&bad.stderr)
        );
        assert!(out.contains("Input/output error"), "chunk {chunk}: {out}");
        assert!(
            !out.contains("55 55 55"),
            "chunk {chunk} served spoilt bytes: {out}"
        );
        m.wait_for(why, T);
    }
}

/// The bytes of the files in `dir`.
fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn on_demand_mounts_fetch_what_is_read_and_a_local_cache_answers_the_next_within_its_bound() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r");
    support::random_file(&file, 1 << 20);
    let bytes = std::fs::read(&file).unwrap();
    let u = url("k", "r");
    ok(&upload_once(&g, &file, &u, &dir.path().join("id"), &[]));
    let (small, big) = (dir.path().join("small"), dir.path().join("big"));
    let with_cache = |cache: &Path, size: &str| {
        let extra = ["--cache", cache.to_str().unwrap(), "--cache-size", size];
        let (m, sock) = mount(&g, dir.path(), &u, &extra);
        assert!(read_export(&m, dir.path(), &sock, "r").unwrap() == bytes);
        m
    };
    let chunk_name = |i: usize| blake3::hash(&bytes[i * 65536..(i + 1) * 65536]).to_hex();
    // --on-demand fetches what is read, and nothing in the background.
    let lazy = dir.path().join("lazy");
    let (m, sock) = mount(
        &g,
        dir.path(),
        &u,
        &["--on-demand", "--cache", lazy.to_str().unwrap()],
    );
    let uri = format!("nbd+unix:///r?socket={}", sock.display());
    let one = Command::new("qemu-io")
        .args(["-r", "-f", "raw", &uri, "-c", "read 327680 16"])
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", m.output());
    std::thread::sleep(Duration::from_secs(1));
    assert!(lazy.join(chunk_name(5).as_str()).exists());
    assert!(
        std::fs::read_dir(&lazy).unwrap().count() <= 2,
        "{}",
        m.output()
    );
    assert!(read_export(&m, dir.path(), &sock, "r").unwrap() == bytes);
    assert_eq!(bytes_in(&lazy), 1 << 20);
    drop(m);
    // 16 chunks of 64 KiB through a cache of 4: it keeps 4.
    let m = with_cache(&small, "256KiB");
    m.wait_for("every chunk fetched, 0 from the local cache", T);
    drop(m);
    assert_eq!(bytes_in(&small), 256 << 10);
    // A cache that holds them all answers the next mount, even with the store's objects gone;
    // the one file spoilt in it is fetched again, from the one object left.
    let m = with_cache(&big, "4MiB");
    m.wait_for("every chunk fetched, 0 from the local cache", T);
    drop(m);
    assert_eq!(bytes_in(&big), 1 << 20);
    let spoilt = big.join(chunk_name(2).as_str());
    let mut data = std::fs::read(&spoilt).unwrap();
    data[100] ^= 1;
    std::fs::write(&spoilt, data).unwrap();
    let client = g.client();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for i in (0..16).filter(|&i| i != 2) {
            let key = format!("k/chunks/{}", chunk_name(i));
            client.delete(&key.as_str().into()).await.unwrap();
        }
    });
    let m = with_cache(&big, "4MiB");
    m.wait_for(
        "not the chunk it names; deleted, fetching the chunk again",
        T,
    );
    m.wait_for("every chunk fetched, 15 from the local cache", T);
}

#[test]
fn bad_credentials_a_missing_bucket_and_a_second_owner_each_get_one_clear_error() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let u = url("o", "r");
    let list = |env: &[(&str, &str)], url: &str| {
        Command::new(BIN)
            .args(["snapshot", "list", url])
            .envs(g.env())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let e = one_error(&list(&[("AWS_SECRET_ACCESS_KEY", "wrong")], &u));
    assert!(e.contains("refused the credentials"), "{e}");
    let e = one_error(&list(&[], "s3://no-such-bucket/o/r"));
    assert!(e.contains("not found (is the bucket there?)"), "{e}");

    // Two owners: the second is refused by the first's claim, until it takes the region over.
    let file = dir.path().join("r");
    support::random_file(&file, 1 << 20);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&upload_once(&g, &file, &u, &a, &[]));
    let e = one_error(&upload_once(&g, &file, &u, &b, &[]));
    let a_fp = support::peer_id(&a);
    assert!(
        e.contains(&format!("owned by peer {a_fp}")) && e.contains("--take-over"),
        "{e}"
    );

    let mut running = continuous(&g, &file, &u, &a, "100ms", &[]);
    running.wait_for("epoch 2 claimed", T);
    let theirs = dir.path().join("theirs");
    support::random_file(&theirs, 1 << 20);
    ok(&upload_once(&g, &theirs, &u, &b, &["--take-over"]));
    // A keeps writing until it notices: its next generation is refused, and it stops.
    write_at(&file, &[1; 10], 0);
    assert!(!running.wait(T).success());
    running.wait_for("was taken over", T);
    assert_eq!(
        mount_read(&g, dir.path(), &u, "r").unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    let e = one_error(&upload_once(&g, &file, &u, &a, &[]));
    assert!(
        e.contains(&format!("owned by peer {}", support::peer_id(&b))),
        "{e}"
    );

    // A fenced writer whose last check raced the take-over may still store one manifest: one of
    // A's epoch 2, with a generation above B's, stored now. Readers never follow it.
    let client = g.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let get = |k: String| {
            let client = &client;
            async move {
                client
                    .get(&k.as_str().into())
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        };
        let a_claim =
            Writer::parse_claim(&get("o/regions/r/claims/0000000000000002".into()).await).unwrap();
        let newest = client
            .list(Some(&"o/regions/r/generations/".into()))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .max()
            .unwrap();
        let mut stale = Manifest::decode(&get(newest).await).unwrap();
        (stale.epoch, stale.generation, stale.writer) = (2, 99, a_claim);
        stale.chunks.fill(ZERO);
        let key = format!(
            "o/regions/r/generations/{:016x}-{:016x}-{}",
            2,
            99,
            hex::encode(a_claim.nonce)
        );
        client
            .put(&key.as_str().into(), stale.encode().into())
            .await
            .unwrap();
    });
    assert!(generations(&g, &u).iter().all(|(n, _)| *n != 99));
    assert_eq!(
        mount_read(&g, dir.path(), &u, "r").unwrap(),
        std::fs::read(&theirs).unwrap()
    );
}

#[test]
fn prune_while_uploading_never_deletes_a_chunk_a_kept_generation_needs() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p");
    support::random_file(&file, 8 << 20);
    let u = url("p", "p");
    let id = dir.path().join("id");
    let sync = continuous(&g, &file, &u, &id, "300ms", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // About 40 pages a second: each generation replaces a few of the region's 128 chunks.
    let w = writer(file.clone(), Duration::from_millis(25), stop.clone());
    sync.wait_for("generation 2:", T);
    let mut deleted = 0u64;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        let out = run(
            &g,
            &["snapshot", "prune", &u, "--keep", "3", "--grace", "2s"],
        );
        ok(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        let n: u64 = text
            .split(" chunk objects deleted")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        deleted += n;
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    drop(sync);
    assert!(
        deleted > 0,
        "prune never deleted a chunk: the test would not bite"
    );
    ok(&run(
        &g,
        &["snapshot", "prune", &u, "--keep", "3", "--grace", "2s"],
    ));
    let gens = generations(&g, &u);
    assert_eq!(gens.len(), 3, "{gens:?}");
    // Every kept generation reads whole: none of its chunks was deleted.
    for (n, _) in gens {
        mount_read(&g, dir.path(), &format!("{u}@{n}"), "p")
            .unwrap_or_else(|e| panic!("generation {n}: {e}"));
    }
}

/// `peer serve --to s3://BUCKET/ROOT` with the garage's credentials; `extra` arguments.
fn serve_to(g: &Garage, w: &support::World, root: &str, extra: &[&str]) -> Proc {
    let (dir, id) = (w.path("replicas"), w.path("replica-id"));
    let to = format!("s3://{BUCKET}/{root}");
    let listen = w.addr();
    let mut args = vec!["serve", "--listen", &listen];
    args.extend(["--dir", dir.to_str().unwrap()]);
    args.extend(["--identity", id.to_str().unwrap(), "--trust", &w.owner_fp]);
    args.extend(["--to", &to, "--to-interval", "200ms"]);
    args.extend_from_slice(extra);
    let p = peer(g, &args);
    p.wait_for("serving replicas", T);
    p
}

/// The newest generation mounted from the store equals `file` within `T` (the archive publishes
/// what the replica received at its next interval).
fn wait_stored(g: &Garage, dir: &Path, url: &str, name: &str, file: &Path) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let want = std::fs::read(file).unwrap();
        match mount_read(g, dir, url, name) {
            Ok(got) if got == want => return,
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300))
            }
            Ok(_) => panic!("{url} never held what {} holds", file.display()),
            Err(e) => panic!("{url}: {e}"),
        }
    }
}

#[test]
fn a_replica_served_with_to_is_kept_in_the_store_and_a_restart_uploads_nothing_again() {
    let g = Garage::start();
    let w = support::World::new();
    let u = url("replicas", "mem");
    let serve = serve_to(&g, &w, "replicas", &[]);
    let file = w.random_file("mem", 8 << 20);
    write_at(&file, &[0; 1 << 20], 2 << 20);
    let sync = w.sync(&file, &["--interval", "50"]);
    // The owner writes while its replica is archived: generations follow the replica.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(file.clone(), Duration::from_millis(2), stop.clone());
    serve.wait_for("generation 3:", T);
    stop.store(true, Ordering::Relaxed);
    assert!(writing.join().unwrap() > 10);
    support::wait_identical(&file, &w.replica("mem"), T);
    wait_stored(&g, w.dir.path(), &u, "mem", &file);
    let gens = generations(&g, &u);
    assert!(gens.len() >= 3, "{gens:?}");
    assert!(gens.iter().all(|(_, l)| l.contains("epoch 1")), "{gens:?}");
    let before = chunk_bytes(&g, "replicas");
    drop(sync);

    // A restarted serve claims the next epoch and finds every chunk stored already.
    drop(serve);
    let serve = serve_to(&g, &w, "replicas", &[]);
    let sync = w.sync(&file, &["--interval", "50"]);
    let line = serve.wait_for("chunks changed", T);
    assert!(
        line.contains("0 chunks changed, 0.0 MiB uploaded"),
        "{line}\n{}",
        serve.output()
    );
    assert_eq!(chunk_bytes(&g, "replicas"), before);
    // And goes on with what changes next.
    write_at(&file, &[9; 4096], 5 << 20);
    support::wait_identical(&file, &w.replica("mem"), T);
    wait_stored(&g, w.dir.path(), &u, "mem", &file);
    assert!(generations(&g, &u).last().unwrap().1.contains("epoch 2"));
    drop(sync);
    drop(serve);

    // Another writer takes the region over in the store: the serve then leaves it to that
    // writer, saying how to take it back; with --take-over it does.
    ok(&upload_once(
        &g,
        &file,
        &u,
        &w.path("owner-id"),
        &["--take-over"],
    ));
    let serve = serve_to(&g, &w, "replicas", &[]);
    let sync = w.sync(&file, &["--interval", "50"]);
    let line = serve.wait_for("archiving stopped", T);
    assert!(
        line.contains(&w.owner_fp) && line.contains("--take-over"),
        "{line}"
    );
    drop((sync, serve));
    let serve = serve_to(&g, &w, "replicas", &["--take-over"]);
    let sync = w.sync(&file, &["--interval", "50"]);
    write_at(&file, &[7; 4096], 6 << 20);
    support::wait_identical(&file, &w.replica("mem"), T);
    wait_stored(&g, w.dir.path(), &u, "mem", &file);
    assert!(generations(&g, &u).last().unwrap().1.contains("epoch 4"));
    drop((sync, serve));

    // A store it cannot use stops serve at once, with one clear line.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(w.path("replicas"))
        .arg("--identity")
        .arg(w.path("replica-id"))
        .args(["--trust", &w.owner_fp, "--to", "s3://no-such-bucket/r"])
        .envs(g.env())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let e = one_error(&out);
    assert!(e.contains("not found (is the bucket there?)"), "{e}");
}

/// Bytes of the chunk objects under `root`.
fn chunk_bytes(g: &Garage, root: &str) -> u64 {
    let client = g.client();
    let prefix = object_store::path::Path::from(format!("{root}/chunks"));
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        client
            .list(Some(&prefix))
            .map_ok(|m| m.size)
            .try_fold(0, |a, s| async move { Ok(a + s) })
            .await
            .unwrap()
    })
}

#[test]
fn two_writers_racing_for_the_first_epoch_leave_one_readable_region_never_a_mix() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (fa, fb) = (dir.path().join("fa"), dir.path().join("fb"));
    support::random_file(&fa, 2 << 20);
    support::random_file(&fb, 2 << 20);
    let (want_a, want_b) = (std::fs::read(&fa).unwrap(), std::fs::read(&fb).unwrap());
    // Garage ignores If-None-Match, so both claims of epoch 1 may be stored: the read-back and
    // the holder-only rule of readers decide (spec/STORAGE.md §4).
    for round in 0..4 {
        let u = url("race", &format!("r{round}"));
        let start = |id: &Path, file: &Path| {
            upload_once_cmd(&g, file, &u, id, &[])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (start(&a, &fa), start(&b, &fb));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let (ra, rb) = (oa.status.success(), ob.status.success());
        let logs = format!(
            "A:\n{}\nB:\n{}",
            String::from_utf8_lossy(&oa.stderr),
            String::from_utf8_lossy(&ob.stderr)
        );
        assert!(ra || rb, "round {round}: both writers failed\n{logs}");
        let got = mount_read(&g, dir.path(), &u, &format!("r{round}")).unwrap();
        assert!(
            (got == want_a && ra) || (got == want_b && rb),
            "round {round}: the region is neither writer's (a ok {ra}, b ok {rb})\n{logs}"
        );
        eprintln!(
            "round {round}: a ok {ra}, b ok {rb}, A's is read: {}",
            got == want_a
        );
    }
}

#[test]
fn writes_through_an_nbd_export_are_uploaded_without_a_scan() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk");
    support::random_file(&file, 4 << 20);
    let id = dir.path().join("id");
    let u = url("nbd", "disk");
    let port = support::free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let nbd = ["--detector", "nbd", "--nbd-listen", &listen];
    let sync = continuous(&g, &file, &u, &id, "100", &nbd);
    sync.wait_for("as NBD export", T);
    sync.wait_for("generation 1:", T);
    let uri = format!("nbd://{listen}/disk");
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0xab 4k 8k",
            "-c",
            "flush",
        ])
        .output()
        .expect("qemu-io is needed (test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The export's one write is the one changed chunk: nothing was hashed to find it.
    let line = sync.wait_for("generation 2:", T);
    assert!(line.contains(" 1 chunks changed"), "{line}");
    assert_eq!(
        mount_read(&g, dir.path(), &u, "disk").unwrap(),
        std::fs::read(&file).unwrap()
    );
}
