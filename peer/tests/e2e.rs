//! End-to-end tests with real `peer` processes over real QUIC on loopback.

use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::{FrameReader, PeerEndpoint};
use memsync_protocol::wire::{ErrorCode, Frame, MAX_BODY};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::*;

/// Mounts region `name` from the peer at `addr` into plain memory.
async fn memory_mount(
    ep: &PeerEndpoint,
    addr: std::net::SocketAddr,
    name: &str,
) -> (
    memsync_peer::roles::mount::RemoteRegion,
    std::sync::Arc<memsync_peer::roles::mount::MemorySink>,
) {
    use memsync_peer::roles::mount::{MemorySink, RemoteRegion, SinkFactory};
    use std::sync::{Arc, Mutex};
    let sink: Arc<Mutex<Option<Arc<MemorySink>>>> = Arc::default();
    let keep = sink.clone();
    let make: SinkFactory = Box::new(move |g| {
        let s = Arc::new(MemorySink::new(g));
        *keep.lock().unwrap() = Some(s.clone());
        s
    });
    let r = RemoteRegion::mount_with(ep, addr, name, make)
        .await
        .unwrap();
    let s = sink.lock().unwrap().clone().unwrap();
    (r, s)
}

/// Counts 64 KiB chunks of `b` equal to those of `a`.
fn matching_chunks(a: &[u8], b: &Path) -> usize {
    let b = std::fs::read(b).unwrap_or_default();
    a.chunks(65536)
        .zip(b.chunks(65536))
        .filter(|(x, y)| x == y)
        .count()
}

/// The numbers of the owner's "N of M chunks differ" lines.
fn reconciled(p: &Proc) -> Vec<(u64, u64)> {
    p.all_with("chunks differ")
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let of = w.iter().position(|x| *x == "of").unwrap();
            (w[of - 1].parse().unwrap(), w[of + 1].parse().unwrap())
        })
        .collect()
}

#[test]
fn sync_keeps_replica_identical_under_a_concurrent_writer() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("region.bin", 64 << 20);
    let mut owner = w.sync(&file, &["--interval", "100"]);
    wait_identical(&file, &w.replica("region.bin"), Duration::from_secs(120));
    // A third process writes scattered bytes through a shared mapping while sync runs.
    let script = r#"
import mmap, os, random, sys, time
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 0)
r = random.Random(7)
for i in range(400):
    off = r.randrange(0, len(m) - 100)
    m[off:off + 100] = bytes([r.randrange(256)]) * 100
    if i % 50 == 0:
        time.sleep(0.05)
m.flush()
"#;
    let status = Command::new("python3")
        .args(["-c", script, file.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_identical(&file, &w.replica("region.bin"), Duration::from_secs(60));
    assert!(owner.child.try_wait().unwrap().is_none(), "sync exited");
    owner.kill9();
    // The replica is never larger or smaller than the region.
    assert_eq!(
        std::fs::metadata(w.replica("region.bin")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn killed_replica_resumes_with_only_missing_chunks() {
    let w = World::new();
    let mut server = w.serve();
    let file = w.random_file("big.bin", 256 << 20);
    let src = std::fs::read(&file).unwrap();
    let total = src.len() / 65536;
    let mut owner = w.sync(&file, &["--once", "--reconnect-for", "60"]);
    // Kill the replica shortly after the transfer began.
    owner.wait_for("chunks differ", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(100));
    server.kill9();
    let kept = matching_chunks(&src, &w.replica("big.bin"));
    if kept == total {
        eprintln!("sync finished before the kill landed; nothing to resume");
        return;
    }
    let _server = w.serve();
    assert!(
        owner.wait(Duration::from_secs(180)).success(),
        "{}",
        owner.output()
    );
    assert_eq!(std::fs::read(w.replica("big.bin")).unwrap(), src);
    let rec = reconciled(&owner);
    assert!(rec.len() >= 2, "expected a reconnect: {rec:?}");
    resent_only_missing(*rec.last().unwrap(), total, kept);
}

#[test]
fn killed_owner_resumes_with_only_missing_chunks() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("big.bin", 128 << 20);
    let src = std::fs::read(&file).unwrap();
    let total = src.len() / 65536;
    let mut owner = w.sync(&file, &["--once"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while matching_chunks(&src, &w.replica("big.bin")) < total / 4 {
        assert!(Instant::now() < deadline, "initial sync made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    owner.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let kept = matching_chunks(&src, &w.replica("big.bin"));
    let mut again = w.sync(&file, &["--once"]);
    assert!(
        again.wait(Duration::from_secs(180)).success(),
        "{}",
        again.output()
    );
    assert_eq!(std::fs::read(w.replica("big.bin")).unwrap(), src);
    resent_only_missing(reconciled(&again)[0], total, kept);
}

/// A reconciliation `(differing, of)` of a region of `total` chunks whose replica kept `kept`
/// sent none of the kept ones.
fn resent_only_missing((differing, of): (u64, u64), total: usize, kept: usize) {
    assert_eq!(of as usize, total);
    assert!(
        differing as usize <= total - kept,
        "resume sent {differing} chunks though the replica kept {kept} of {total}"
    );
}

#[test]
fn untrusted_peers_are_refused_with_a_useful_message() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("r.bin", 1 << 20);
    // The owner does not trust the server's identity.
    let stranger = peer_id(&w.path("stranger-id"));
    let mut p = w.sync_as(&file, "owner-id", &stranger, &["--once"]);
    assert!(!p.wait(Duration::from_secs(30)).success());
    let out = p.output();
    assert!(
        out.contains("not trusted") && out.contains(&format!("--trust {}", w.replica_fp)),
        "{out}"
    );
    // The server does not trust this owner.
    let mut p = w.sync_as(&file, "stranger-id", &w.replica_fp, &["--once"]);
    assert!(!p.wait(Duration::from_secs(30)).success());
    let out = p.output();
    assert!(
        out.contains("refused our identity") && out.contains(&stranger),
        "{out}"
    );
    assert!(!w.replica("r.bin").exists());
}

#[test]
fn names_that_escape_the_directory_are_refused() {
    let w = World::new();
    let file = w.random_file("r.bin", 4096);
    let mut p = w.sync(&file, &["--name", "../x", "--once"]);
    assert!(!p.wait(Duration::from_secs(30)).success());
    assert!(p.output().contains("region name"), "{}", p.output());
}

#[test]
fn a_file_that_changes_size_is_reported() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("r.bin", 1 << 20);
    let mut p = w.sync(&file, &["--interval", "50"]);
    wait_identical(&file, &w.replica("r.bin"), Duration::from_secs(60));
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.set_len(2 << 20).unwrap();
    assert!(!p.wait(Duration::from_secs(30)).success());
    assert!(p.output().contains("changed size"), "{}", p.output());
}

/// A client built on the same crates sends frames that break the protocol over an authenticated
/// connection; the server closes that stream with the spec's code and keeps serving.
#[test]
fn protocol_violations_close_the_stream_not_the_server() {
    let w = World::new();
    let _server = w.serve();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let id = Identity::load_or_create(&w.path("owner-id")).unwrap();
        let trust = TrustSet::new([
            memsync_peer::net::identity::Fingerprint::parse(&w.replica_fp).unwrap(),
        ]);
        let addr = w.addr().parse().unwrap();
        let ep = PeerEndpoint::client_for(addr, &id, trust).unwrap();
        let session = ep.connect(addr).await.unwrap();

        // Cases: a CHUNK before OPEN, an unknown frame type, a bad magic, an oversize length.
        let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
            (
                Frame::Ack { generation: 1 }.to_vec(),
                ErrorCode::ProtocolViolation,
            ),
            (vec![0xD5, 0x7E, 0, 0, 0, 0, 0, 0], ErrorCode::UnknownType),
            (vec![0xAA, 0x22, 0, 0, 8, 0, 0, 0], ErrorCode::BadMagic),
            (
                vec![0xD5, 0x20, 0, 0, 0xff, 0xff, 0xff, 0x7f],
                ErrorCode::FrameTooLarge,
            ),
        ];
        for (bytes, want) in cases {
            let (mut send, recv) = session.conn.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            let mut reader = FrameReader::new(recv, MAX_BODY);
            match reader.next().await.unwrap() {
                Some(Frame::Error { code, reason }) => {
                    assert_eq!(code, want as u32, "{reason}");
                }
                other => panic!("expected ERROR {want}, got {other:?}"),
            }
        }

        // The same connection still serves a well-behaved region stream.
        let (mut send, recv) = session.conn.open_bi().await.unwrap();
        let open = Frame::Open {
            epoch: None,
            size: 8192,
            generation: 0,
            chunk_shift: 12,
            name: "ok.bin",
        };
        send.write_all(&open.to_vec()).await.unwrap();
        let mut reader = FrameReader::new(recv, MAX_BODY);
        match reader.next().await.unwrap() {
            Some(Frame::State { chunk_count, .. }) => assert_eq!(chunk_count, 2),
            other => panic!("expected STATE, got {other:?}"),
        }
    });
    // And a real owner still syncs.
    let file = w.random_file("after.bin", 1 << 20);
    let mut p = w.sync(&file, &["--once"]);
    assert!(p.wait(Duration::from_secs(60)).success(), "{}", p.output());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("after.bin")).unwrap()
    );
}

#[test]
fn several_regions_share_a_connection_and_several_owners_feed_one_server() {
    let w = World::new();
    let server = w.serve();
    let (a, b, c) = (w.path("a.bin"), w.path("b.bin"), w.path("c.bin"));
    random_file(&a, 3 << 20);
    random_file(&b, 1 << 20);
    random_file(&c, 2 << 20);
    let mut one = w.sync(&a, &["--region", b.to_str().unwrap(), "--once"]);
    let mut two = w.sync(&c, &["--once"]);
    assert!(
        one.wait(Duration::from_secs(60)).success(),
        "{}",
        one.output()
    );
    assert!(
        two.wait(Duration::from_secs(60)).success(),
        "{}",
        two.output()
    );
    for (f, name) in [(&a, "a.bin"), (&b, "b.bin"), (&c, "c.bin")] {
        assert_eq!(
            std::fs::read(f).unwrap(),
            std::fs::read(w.replica(name)).unwrap()
        );
    }
    // Two processes, two connections: the two regions of the first shared one.
    assert_eq!(
        server.all_with("connected from").len(),
        2,
        "{}",
        server.output()
    );
}

/// Two mounts from one endpoint share its connection to the serving peer (one connection per
/// pair of peers), and each gets the fetch lane that names its own region stream: urgent reads
/// of chunks the background push has not reached are answered on the right lane.
#[test]
fn mounts_share_one_connection_each_with_its_own_fetch_lane() {
    let w = World::new();
    let _server = w.serve();
    let img = w.random_file("img", 256 << 20);
    std::fs::copy(&img, w.replica("img")).unwrap();
    let img = std::fs::read(&img).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let id = Identity::load_or_create(&w.path("owner-id")).unwrap();
        let trust = TrustSet::new([
            memsync_peer::net::identity::Fingerprint::parse(&w.replica_fp).unwrap(),
        ]);
        let addr = w.addr().parse().unwrap();
        let ep = PeerEndpoint::client_for(addr, &id, trust).unwrap();
        let (a, sink_a) = memory_mount(&ep, addr, "img").await;
        let (b, sink_b) = memory_mount(&ep, addr, "img").await;
        let first = ep.connect(addr).await.unwrap().conn.stable_id();
        assert_eq!(ep.connect(addr).await.unwrap().conn.stable_id(), first);
        let n = a.geometry().chunk_count();
        a.ensure(n - 1..n).await.unwrap();
        b.ensure(n - 2..n - 1).await.unwrap();
        // Each lane copy reaches the mount that asked (a copy routed to the other mount would
        // be refused there, as never fetched); which copy of a chunk arrives first is a race,
        // so wait for the lanes'.
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.lane_copies() == 0 || b.lane_copies() == 0 {
            assert!(Instant::now() < deadline, "a mount got no lane copy");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.complete().await.unwrap();
        b.complete().await.unwrap();
        for sink in [sink_a, sink_b] {
            let mut got = vec![0u8; img.len()];
            sink.read(0, &mut got);
            assert!(got == img, "a mount's bytes differ from the region");
        }
    });
}

/// A mount served from a replica follows the replica as its owner writes: the writes `serve`
/// receives are marked for the mounts it serves (4 KiB chunks on the owner's stream, 64 KiB on
/// the mount's), so the mount's memory ends identical to the owner's file again.
#[test]
fn a_mount_follows_its_replica_as_the_owner_writes() {
    let w = World::new();
    let server = w.serve();
    let file = w.random_file("live.bin", 8 << 20);
    let _owner = w.sync(&file, &["--interval", "50", "--chunk-size", "4096"]);
    wait_identical(&file, &w.replica("live.bin"), Duration::from_secs(60));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = w.owner_endpoint();
        let addr = w.addr().parse().unwrap();
        let (mount, sink) = memory_mount(&ep, addr, "live.bin").await;
        mount.complete().await.unwrap();
        let read = |sink: &memsync_peer::roles::mount::MemorySink| {
            let mut got = vec![0u8; 8 << 20];
            sink.read(0, &mut got);
            got
        };
        assert!(read(&sink) == std::fs::read(&file).unwrap());
        // Scattered writes in place on the owner (a truncating rewrite would change the
        // region's size for a moment, which ends the sync with RESIZED): some inside one 4 KiB
        // chunk, one across a 64 KiB boundary.
        use std::os::unix::fs::FileExt;
        let mut bytes = std::fs::read(&file).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        for (off, len) in [
            (100, 10),
            (3 << 20, 4096),
            ((5 << 20) - 50, 100),
            ((8 << 20) - 1, 1),
        ] {
            bytes[off..off + len].iter_mut().for_each(|b| *b = !*b);
            f.write_all_at(&bytes[off..off + len], off as u64).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while read(&sink) != bytes {
            assert!(
                Instant::now() < deadline,
                "the mount never saw the owner's writes; serve said:\n{}",
                server.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// `--detector inotify` (inotify(7)): changes made with write(2) replicate; a writer through a
/// shared mapping raises no event, so the detector warns and falls back to hashing at every
/// interval, which replicates its writes too.
#[test]
fn the_inotify_detector_replicates_writes_and_falls_back_to_scanning_for_a_mapped_writer() {
    use std::os::unix::fs::FileExt;
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("db", 16 << 16);
    let replica = w.replica("db");
    let sync = w.sync(&file, &["--detector", "inotify", "--interval", "100ms"]);
    wait_identical(&file, &replica, Duration::from_secs(30));
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(b"written with pwrite", 5 << 16).unwrap();
    wait_identical(&file, &replica, Duration::from_secs(30));

    // A writer through a shared mapping, kept mapped: python's mmap, then msync.
    let script = format!(
        "import mmap, sys, time\n\
         f = open({:?}, 'r+b')\n\
         m = mmap.mmap(f.fileno(), 0)\n\
         m[9 * 65536:9 * 65536 + 6] = b'mapped'\n\
         m.flush()\n\
         print('written', file=sys.stderr, flush=True)\n\
         time.sleep(60)\n",
        file.to_str().unwrap()
    );
    let writer = Proc::spawn(Command::new("python3").args(["-c", &script]));
    writer.wait_for("written", Duration::from_secs(20));
    sync.wait_for(
        "mapped shared and writable by process",
        Duration::from_secs(20),
    );
    wait_identical(&file, &replica, Duration::from_secs(30));
    assert_eq!(
        &std::fs::read(&replica).unwrap()[9 << 16..(9 << 16) + 6],
        b"mapped"
    );
}

/// `--detector fuse`: the region is mounted as DIR/NAME; a python writer through a shared mapping
/// (msync) and pwrite(2) through the mount replicate byte for byte, with no scan. The sync killed
/// -9: calls on the mount fail at once (no hung process), and a restarted sync mounts it again.
#[test]
fn the_fuse_detector_replicates_mapped_and_written_changes_and_survives_a_killed_daemon() {
    use std::os::unix::fs::FileExt;
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("db", 16 << 16);
    let replica = w.replica("db");
    let mnt = w.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let fuse = ["--detector", "fuse", "--fuse-mount", mnt.to_str().unwrap()];
    let mut sync = w.sync(&file, &fuse);
    sync.wait_for("serving", Duration::from_secs(20));
    wait_identical(&file, &replica, Duration::from_secs(30));
    let through = mnt.join("db");
    assert_eq!(
        std::fs::read(&through).unwrap(),
        std::fs::read(&file).unwrap()
    );

    let script = format!(
        "import mmap\n\
         f = open({:?}, 'r+b')\n\
         m = mmap.mmap(f.fileno(), 0)\n\
         for p in range(0, 256, 5):\n\
         \x20   m[p * 4096:p * 4096 + 4] = b'page'\n\
         m.flush()\n",
        through.to_str().unwrap()
    );
    python(&script);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&through)
        .unwrap();
    f.write_all_at(b"written through the mount", 7 << 16)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        &std::fs::read(&file).unwrap()[5 * 4096..5 * 4096 + 4],
        b"page"
    );
    wait_identical(&file, &replica, Duration::from_secs(30));
    // The size is the region's.
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&through)
        .is_err());

    sync.kill9();
    let reader = std::thread::spawn({
        let through = through.clone();
        move || std::fs::read(through)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "a read of the dead mount hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reader.join().unwrap().is_err());
    let sync = w.sync(&file, &fuse);
    sync.wait_for("serving", Duration::from_secs(20));
    assert_eq!(
        std::fs::read(&through).unwrap(),
        std::fs::read(&file).unwrap()
    );
    drop(sync);
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
}

/// The rows of the Markdown table under `heading` in `md`, as trimmed cells (header and rule
/// left out).
fn md_table(md: &str, heading: &str) -> Vec<Vec<String>> {
    let at = md
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{md}"));
    (md[at..].lines())
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().to_owned()).collect()
        })
        .collect()
}

/// `peer compare --quick` measures all five detectors against a real replica and writes a report
/// whose every figure is there and in range (no speed asserted): idle sends nothing, every write
/// workload has CPU, a writer time, bytes on the wire and p50 ≤ p99; each replica ended identical;
/// each recommendation names a measured detector; the plots are SVG.
#[test]
fn peer_compare_quick_measures_every_detector_and_recommends_from_its_figures() {
    let w = World::new();
    let out = w.path("report");
    let run = Command::new(BIN)
        .args(["compare", "--quick", "--out", out.to_str().unwrap()])
        .args(["--work-dir", w.path("work").to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Recommendations:"), "{stdout}");
    // Its FUSE mounts (its own and nbdfuse's) are gone, and so are its children.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(w.path("work").to_str().unwrap()),
        "{mounts}"
    );
    let work = w.path("work");
    let left: Vec<String> = (std::fs::read_dir("/proc").unwrap().flatten())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(work.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let detectors = ["hash", "uffd", "inotify", "fuse", "nbd"];
    assert!(!md.contains("not measured:"), "{md}");

    let idle = md_table(&md, "## Idle");
    assert_eq!(idle.len(), detectors.len(), "{md}");
    for row in &idle {
        assert!(detectors.contains(&row[0].as_str()), "{row:?}");
        let cpu: f64 = row[2].parse().unwrap();
        assert!(cpu.is_finite() && cpu >= 0.0, "{row:?}");
        assert_eq!(row[4], "0", "an idle region sent chunks: {row:?}");
    }
    let cells = md_table(&md, "## Under writes");
    assert_eq!(cells.len(), detectors.len() * 3, "{md}");
    for row in &cells {
        assert_eq!(row.len(), 12, "{row:?}");
        assert!(row.iter().all(|c| !c.is_empty()), "an empty cell: {row:?}");
        let f: Vec<f64> = row[3..].iter().map(|c| c.parse().unwrap()).collect();
        let [written, cpu, replica_cpu, write_us, slowdown, wire, p50, p99, overhead] = f[..]
        else {
            unreachable!()
        };
        assert!(written > 0.0 && written <= 16.0 * 1.05, "{row:?}");
        assert!(cpu > 0.0 && replica_cpu >= 0.0 && write_us > 0.0, "{row:?}");
        assert!(slowdown > 0.0 && overhead >= cpu, "{row:?}");
        // Every chunk written was sent: in 64 KiB chunks for 4 KiB writes, at most 16 bytes (plus
        // headers) per byte changed, and at least one where no page is written twice in a round
        // (a hot set's pages are).
        let least = if row[2].starts_with("hot set") {
            0.01
        } else {
            0.9
        };
        assert!(wire >= least && wire <= 17.0, "{row:?}");
        assert!(p50 > 0.0 && p50 <= p99, "{row:?}");
    }
    for d in detectors {
        assert_eq!(
            cells.iter().filter(|r| r[0] == d).count(),
            3,
            "{d}: random, sequential, hot set"
        );
        assert!(
            md.contains(&format!("- {d} (64 MiB): byte-identical")),
            "{d}'s replica: {md}"
        );
    }
    let recs: Vec<&str> = (md.lines())
        .skip_while(|l| !l.starts_with("## Recommendations"))
        .filter(|l| l.starts_with("- **"))
        .collect();
    assert_eq!(recs.len(), 6, "{md}");
    for r in recs {
        let picked = r.split("**").nth(3).unwrap_or("");
        assert!(detectors.contains(&picked), "{r}");
    }
    for svg in ["cpu.svg", "lag.svg", "slowdown.svg", "wire.svg"] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(s.contains("<svg") && s.contains("uffd"), "{svg}");
        assert!(
            md.contains(&format!("]({svg})")),
            "{svg} is not in the report"
        );
    }
}
