//! Live migration between real `peer` processes: a writer in the style of QEMU's migration test
//! (it increments a counter in pages of a mapped file, at random, without pause) runs at A while
//! `peer migrate` moves the region to B; it is frozen at the handoff, continues at B on B's copy,
//! and the region is migrated back. No page may be lost or stale at any step.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use support::*;

const PAGES: usize = 4096;

/// A child process killed when dropped (a failing test leaves no writer behind).
struct Killed(Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A writer process incrementing the u64 at the start of random pages of `file` until it is
/// stopped from outside (SIGSTOP, a cgroup's freeze) or killed: the [`COUNTER_WRITER`] in its
/// mmap mode, never asked to stop itself.
fn writer(w: &World, file: &Path) -> Killed {
    CounterWriter::start(w, file, "mmap", "writer").child
}

fn counters(file: &Path) -> Vec<u64> {
    let b = std::fs::read(file).unwrap();
    (0..PAGES)
        .map(|p| u64::from_le_bytes(b[p * 4096..p * 4096 + 8].try_into().unwrap()))
        .collect()
}

/// The `peer migrate` command of `file` to `addr` as identity `id` trusting `trust`, with `extra`
/// arguments.
fn migrate_cmd(file: &Path, addr: &str, id: &Path, trust: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "migrate",
        "--region",
        file.to_str().unwrap(),
        "--peer",
        addr,
    ])
    .args(["--identity", id.to_str().unwrap(), "--trust", trust])
    .args(["--downtime-ms", "50"])
    .args(extra)
    .env("NO_COLOR", "1");
    c
}

/// `peer migrate` of `file` to the world's serve, as A, with `extra` arguments, left running.
fn migrating(w: &World, file: &Path, extra: &[&str]) -> Proc {
    let id = w.path("owner-id");
    Proc::spawn(&mut migrate_cmd(file, &w.addr(), &id, &w.replica_fp, extra))
}

/// Runs `peer migrate` to its end: (success, stdout, stderr).
fn migrate_run(
    file: &Path,
    addr: &str,
    id: &Path,
    trust: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let out = migrate_cmd(file, addr, id, trust, extra).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `peer migrate` with the freeze options `freeze`.
fn migrate_freezing(file: &Path, addr: &str, id: &Path, trust: &str, freeze: &[&str]) -> String {
    let (ok, stdout, stderr) = migrate_run(file, addr, id, trust, freeze);
    assert!(ok, "migrate failed:\n{stderr}{stdout}");
    assert!(stdout.contains("downtime"), "{stdout}");
    stdout
}

/// Whether process `pid` is stopped (SIGSTOP), waiting a little for a signal just sent to land.
fn stopped(pid: u32) -> bool {
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // pid (comm) STATE …; comm may hold spaces, so take what follows the last ')'.
        stat.rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('T')
    };
    (0..100).any(|_| state() || (std::thread::sleep(Duration::from_millis(20)), false).1)
}

/// Whether the serve of world `w` (directory `replicas`) owns `name`, handed over from A (at the
/// epoch after A's first).
fn owned_at_b(w: &World, name: &str) -> bool {
    std::fs::read_to_string(w.path("replicas/.memsync/owners"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{name} self 2 from:")))
}

/// The move is complete: B alone owns `mem` and holds A's final bytes of `file`, and A's writer
/// `pid` stays frozen.
fn assert_moved(w: &World, file: &Path, pid: u32) {
    assert!(owned_at_b(w, "mem"), "B does not own the region");
    assert!(stopped(pid), "the writer at A was thawed");
    assert_eq!(
        std::fs::read(file).unwrap(),
        std::fs::read(w.replica("mem")).unwrap()
    );
}

/// A world with a serve at B and a writer at A already writing its region `mem`.
fn migrating_world() -> (World, Proc, PathBuf, Killed) {
    migrating_world_serving(|_| Vec::new())
}

/// [`migrating_world`] with the arguments `extra` makes to B's serve.
fn migrating_world_serving(
    extra: impl Fn(&World) -> Vec<String>,
) -> (World, Proc, PathBuf, Killed) {
    let w = World::new();
    let args = extra(&w);
    let b = w.serve_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let file = w.path("mem");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((PAGES * 4096) as u64)
        .unwrap();
    let at_a = writer(&w, &file);
    wait_more(&file, 0);
    (w, b, file, at_a)
}

/// The workload of the there-and-back tests, in the style of QEMU's migration test: it
/// increments the u64 at the start of random pages of its file without pause, then writes the
/// counters it wrote to the file STOPPED (JSON, page → value) and sleeps. `mmap`: it writes a
/// shared mapping and stops itself once the file STOP exists (the migration's `--before-freeze`
/// hook creates it and waits for STOPPED). It is not stopped from outside: on this machine's
/// kernel a process frozen (SIGSTOP, cgroup.freeze) while it writes a shared file mapping loses a
/// page now and then, memsync or not (tests/kernel/frozen_writer_loses_a_page.py). `pwrite`: every
/// increment is a write(2) of a file that an NBD export backs (through nbdfuse), acknowledged or
/// refused by the export; it stops at the first refused one, which the migration's freeze holds
/// and its handoff refuses.
const COUNTER_WRITER: &str = r#"
import json, mmap, os, random, struct, sys, time
path, stop, stopped, how = sys.argv[1:5]
fd = os.open(path, os.O_RDWR)
pages = os.fstat(fd).st_size // 4096
wrote = {}
if how == "mmap":
    m = mmap.mmap(fd, 0)
    def bump(p):
        v = struct.unpack_from("<Q", m, p * 4096)[0] + 1
        struct.pack_into("<Q", m, p * 4096, v)
        return v
else:
    def bump(p):
        v = struct.unpack("<Q", os.pread(fd, 8, p * 4096))[0] + 1
        os.pwrite(fd, struct.pack("<Q", v), p * 4096)
        return v
n = 0
try:
    while n % 1024 or not os.path.exists(stop):
        p = random.randrange(pages)
        wrote[p] = bump(p)
        n += 1
except OSError as e:
    print(f"writer: stopped by {e}", file=sys.stderr)
open(stopped + ".tmp", "w").write(json.dumps(wrote))
os.rename(stopped + ".tmp", stopped)
while True:
    time.sleep(60)
"#;

/// A running [`COUNTER_WRITER`].
struct CounterWriter {
    child: Killed,
    stop: PathBuf,
    stopped: PathBuf,
}

impl CounterWriter {
    /// Starts it on `file`, `how` being `mmap` or `pwrite`; `tag` names its files in the world.
    fn start(w: &World, file: &Path, how: &str, tag: &str) -> CounterWriter {
        let script = w.path("counter-writer.py");
        std::fs::write(&script, COUNTER_WRITER).unwrap();
        let (stop, stopped) = (
            w.path(&format!("{tag}.stop")),
            w.path(&format!("{tag}.stopped")),
        );
        let child = Command::new("python3")
            .arg(&script)
            .args([file, &stop, &stopped])
            .arg(how)
            .spawn()
            .expect("python3 runs the writer");
        CounterWriter {
            child: Killed(child),
            stop,
            stopped,
        }
    }

    /// The `--before-freeze` hook that stops it, returning once it stopped.
    fn stop_hook(&self) -> String {
        format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.01; done",
            self.stop.display(),
            self.stopped.display()
        )
    }

    /// Waits until it stopped and ends it: the counters of the pages `before` held, once it
    /// wrote its own.
    fn last_written(self, before: &[u64]) -> Vec<u64> {
        wait_file(&self.stopped, Duration::from_secs(60));
        let wrote: std::collections::HashMap<String, u64> =
            serde_json::from_str(&std::fs::read_to_string(&self.stopped).unwrap()).unwrap();
        let mut last = before.to_vec();
        for (page, v) in wrote {
            last[page.parse::<usize>().unwrap()] = v;
        }
        last
    }
}

/// A's region `mem`, which the counter writer (`at-a`) is writing.
fn written_at_a(w: &World) -> (PathBuf, CounterWriter) {
    let file = w.path("mem");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((PAGES * 4096) as u64)
        .unwrap();
    let writer = CounterWriter::start(w, &file, "mmap", "at-a");
    wait_more(&file, 0);
    (file, writer)
}

/// Waits until the counters of `file` sum to more than `than` (python can take a while to start
/// on a busy machine, and a migration of an unwritten region is over at once).
fn wait_more(file: &Path, than: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counters(file).iter().sum::<u64>() <= than {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never wrote"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One move of the there-and-back tests: the region `file` (named `mem`), owned as identity `id`,
/// goes to the serve at `to`, trusted as `trust`.
struct Leg<'a> {
    file: &'a Path,
    to: &'a str,
    id: PathBuf,
    trust: &'a str,
}

/// Runs the counter writer on the region of `leg` while the region migrates, with the detector
/// `hash` (`peer migrate` scans the file, the writer stops itself at the freeze) or `nbd` (a
/// `peer sync --detector nbd` is asked through its control socket; the writer writes through its
/// export, mounted with nbdfuse). Returns the counters the writer last wrote: the region must hold
/// exactly these at both ends after the move.
fn move_written(w: &World, leg: &Leg, detector: &str, tag: &str) -> Vec<u64> {
    let before = counters(leg.file);
    let (id, trust) = (leg.id.to_str().unwrap(), leg.trust);
    if detector == "hash" {
        let writer = CounterWriter::start(w, leg.file, "mmap", tag);
        wait_more(leg.file, before.iter().sum());
        let stop = writer.stop_hook();
        let report = migrate_freezing(
            leg.file,
            leg.to,
            &leg.id,
            trust,
            &["--before-freeze", &stop],
        );
        eprintln!("{tag}: {report}");
        return writer.last_written(&before);
    }
    let port = free_tcp_port();
    let ctl = w.path("ctl");
    let sync = Proc::spawn(
        Command::new(BIN)
            .args([
                "sync",
                "--region",
                leg.file.to_str().unwrap(),
                "--peer",
                leg.to,
            ])
            .args(["--identity", id, "--trust", trust, "--interval", "100"])
            .args([
                "--detector",
                "nbd",
                "--nbd-listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("MEMSYNC_CONTROL_DIR", &ctl),
    );
    sync.wait_for("acknowledged", Duration::from_secs(30));
    let size = std::fs::metadata(leg.file).unwrap().len();
    let (_fuse, mnt, through) = nbdfuse(w, &format!("nbd://127.0.0.1:{port}/mem"), size, tag);
    let writer = CounterWriter::start(w, &through, "pwrite", tag);
    wait_more(leg.file, before.iter().sum());
    let said = migrate_through_socket(&ctl, sync.child.id(), &[]);
    eprintln!("{tag}: {said}");
    let last = writer.last_written(&before);
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    last
}

/// Mounts the NBD export `uri` (of a region of `size` bytes) as a file with nbdfuse, in a
/// directory of the world named after `tag`: (nbdfuse, the mount point, the file).
fn nbdfuse(w: &World, uri: &str, size: u64, tag: &str) -> (Killed, PathBuf, PathBuf) {
    let mnt = w.path(&format!("{tag}.mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let through = mnt.join("mem");
    let fuse = Killed(
        Command::new("nbdfuse")
            .arg(&through)
            .arg(uri)
            .spawn()
            .expect("nbdfuse is needed; test.sh installs libnbd-bin and fuse3"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::metadata(&through).is_ok_and(|m| m.len() == size) {
        assert!(
            std::time::Instant::now() < deadline,
            "nbdfuse never mounted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (fuse, mnt, through)
}

/// After a move back: `to` holds exactly the counters `last` the writer left, equals `from`, and
/// no page is below what it held at the first handoff (`first`).
fn assert_no_page_lost_or_stale(to: &Path, from: &Path, first: &[u64], last: &[u64]) {
    assert_eq!(
        counters(to),
        last,
        "the region lacks writes the writer made"
    );
    assert_eq!(std::fs::read(to).unwrap(), std::fs::read(from).unwrap());
    let stale: Vec<_> = (0..PAGES)
        .filter(|&p| last[p] < first[p])
        .map(|p| (p, first[p], last[p]))
        .take(8)
        .collect();
    assert!(
        stale.is_empty(),
        "pages went back (page, at the first handoff, at the end): {stale:?}"
    );
}

/// The there-and-back test with `detector` at both ends: A → B while the writer runs at A, the
/// writer continues at B on B's copy, B → A. Every page holds what the writer last wrote, at both
/// ends of both moves: none lost, none stale.
fn there_and_back(detector: &str) {
    let w = World::new();
    let hook = w.path("handed-over");
    let on_handoff = format!(
        "echo $MEMSYNC_REGION $MEMSYNC_GENERATION > {}",
        hook.display()
    );
    let server_b = w.serve_with(&["--on-handoff", &on_handoff]);
    let file = w.path("mem");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((PAGES * 4096) as u64)
        .unwrap();
    let there = Leg {
        file: &file,
        to: &w.addr(),
        id: w.path("owner-id"),
        trust: &w.replica_fp,
    };
    let at_handoff = move_written(&w, &there, detector, "at-a");
    let b_copy = w.replica("mem");
    assert!(
        at_handoff.iter().sum::<u64>() > 0,
        "the writer wrote nothing"
    );
    assert_eq!(
        counters(&b_copy),
        at_handoff,
        "B lacks writes A's writer made"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
    server_b.wait_for("this peer owns it now", Duration::from_secs(10));
    let owners = std::fs::read_to_string(w.path("replicas/.memsync/owners")).unwrap();
    assert!(owners.contains("mem self"), "{owners}");
    let hooked = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&hook)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert!(
        hooked.is_some_and(|h| h.starts_with("mem ")),
        "no on-handoff run"
    );
    // A may not write B's region any more, now that B owns it.
    let mut again = w.sync(&file, &["--once", "--reconnect-for", "0"]);
    assert!(!again.wait(Duration::from_secs(30)).success());
    assert!(again.output().contains("HANDED_OVER"), "{}", again.output());

    // The workload continues at B on B's copy, and moves back to a serve at A.
    let addr_a = format!("127.0.0.1:{}", free_udp_port());
    let _server_a = w.serve_as(&addr_a, "back", "owner-id", &["--trust", &w.replica_fp]);
    let back = Leg {
        file: &b_copy,
        to: &addr_a,
        id: w.path("replica-id"),
        trust: &w.owner_fp,
    };
    let at_end = move_written(&w, &back, detector, "at-b");
    let a_copy = w.path("back").join("mem");
    // B's writer went on from A's last counters: no page went back.
    assert_no_page_lost_or_stale(&a_copy, &b_copy, &at_handoff, &at_end);
    assert!(at_end.iter().sum::<u64>() > at_handoff.iter().sum::<u64>());
}

#[test]
fn a_written_region_migrates_there_and_back_without_a_lost_or_stale_page() {
    there_and_back("hash");
}

#[test]
fn a_region_written_through_nbd_exports_migrates_there_and_back_without_a_lost_or_stale_page() {
    there_and_back("nbd");
}

#[test]
fn an_nbd_export_holds_writes_at_the_freeze_and_refuses_them_once_handed_over() {
    let w = World::new();
    let _server_b = w.serve();
    let file = w.random_file("disk.img", 64 << 20);
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut m = Proc::start(&[
        "migrate",
        "--region",
        file.to_str().unwrap(),
        "--peer",
        &w.addr(),
        "--identity",
        w.path("owner-id").to_str().unwrap(),
        "--trust",
        &w.replica_fp,
        "--detector",
        "nbd",
        "--nbd-listen",
        &listen,
        "--downtime-ms",
        "20",
    ]);
    m.wait_for("as NBD export", Duration::from_secs(30));
    // A client writing through the export while the region migrates.
    let uri = format!("nbd://127.0.0.1:{port}/disk.img");
    let writes: Vec<String> = (0..2000u64)
        .map(|i| format!("write -P {} {} 4k", i % 251, (i * 7919 % 16384) * 4096))
        .collect();
    let mut client = Command::new("qemu-io");
    client.args(["-f", "raw", &uri]);
    for c in &writes {
        client.args(["-c", c]);
    }
    let client = client.output().expect("qemu-io (test.sh installs it)");
    m.wait_for("migrated:", Duration::from_secs(60));
    // After the handoff: A's copy is B's, writes are refused, reads still served.
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("disk.img")).unwrap()
    );
    let late = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", "write -P 0xee 0 4k"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&late.stdout).into_owned() + &String::from_utf8_lossy(&late.stderr);
    // New clients see a read-only export; a write is refused either way.
    assert!(
        said.contains("Operation not permitted") || said.contains("Permission denied"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("disk.img")).unwrap()
    );
    let read = Command::new("qemu-io")
        .args(["-f", "raw", "-r", &uri, "-c", "read 0 64k"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("read 65536/65536"),
        "{read:?}"
    );
    // Every write the client saw succeed before the handoff is in B's copy (checked above);
    // the client saw no other error than the refusal.
    let out = String::from_utf8_lossy(&client.stdout).into_owned()
        + &String::from_utf8_lossy(&client.stderr);
    assert!(
        out.lines()
            .filter(|l| l.contains("failed"))
            .all(|l| l.contains("Operation not permitted")),
        "{out}"
    );
    m.signal(libc::SIGINT);
    let _ = m.wait(Duration::from_secs(10));
}

/// A cgroup v2 of this test's own, removed on drop (its processes killed first).
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
            })
            .expect("a cgroup v2 hierarchy is mounted (cgroup.freeze)");
        let dir = Path::new(&root).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_cgroup_is_frozen_for_the_handoff_and_stays_frozen() {
    let w = World::new();
    let _server = w.serve();
    let file = w.path("mem");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((PAGES * 4096) as u64)
        .unwrap();
    let cg = Cgroup::new("memsync-migrate");
    let at_a = writer(&w, &file);
    std::fs::write(cg.0.join("cgroup.procs"), at_a.id().to_string()).unwrap();
    wait_more(&file, 0);
    let cgroup = cg.0.to_str().unwrap();
    let report = migrate_freezing(
        &file,
        &w.addr(),
        &w.path("owner-id"),
        &w.replica_fp,
        &["--freeze-cgroup", cgroup],
    );
    eprintln!("cgroup: {report}");
    let events = std::fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let before = std::fs::read(&file).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the frozen writer wrote"
    );
    assert_eq!(before, std::fs::read(w.replica("mem")).unwrap());
    assert!(
        counters(&file).iter().sum::<u64>() > 0,
        "the writer wrote nothing"
    );
    drop(cg);
}

#[test]
fn a_migrate_killed_while_frozen_is_finished_by_running_it_again() {
    let (w, _b, file, at_a) = migrating_world();
    let (id, pid) = (w.path("owner-id"), at_a.id());
    // The writer is frozen, then `peer migrate` is killed before any HANDOFF went out.
    let crash = format!("kill -STOP {pid}; kill -9 $PPID");
    let (ok, _, stderr) = migrate_run(
        &file,
        &w.addr(),
        &id,
        &w.replica_fp,
        &["--before-freeze", &crash],
    );
    assert!(!ok, "the killed migrate succeeded");
    assert!(stopped(pid), "the writer was not left frozen: {stderr}");
    assert!(!owned_at_b(&w, "mem"), "B owns a region it never accepted");
    // The operator's resolution: the same command again. It finishes the move.
    let freeze = ["--freeze-pid", &pid.to_string()];
    let report = migrate_freezing(&file, &w.addr(), &id, &w.replica_fp, &freeze);
    eprintln!("{report}");
    assert!(owned_at_b(&w, "mem"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("mem")).unwrap()
    );
    // Once more: B owns the region already; nothing moves and nothing thaws.
    let (ok, stdout, stderr) = migrate_run(&file, &w.addr(), &id, &w.replica_fp, &freeze);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("already handed over"), "{stdout}");
    assert!(
        stopped(pid),
        "the writer was thawed although B owns the region"
    );
}

#[test]
fn a_replica_killed_while_the_owner_is_frozen_takes_the_handoff_after_its_restart() {
    let (w, mut b, file, at_a) = migrating_world();
    let pid = at_a.id();
    let kill_b = format!("kill -9 {}", b.child.id());
    let freeze = ["--freeze-pid", &pid.to_string(), "--before-freeze", &kill_b];
    let mut m = Proc::spawn(&mut migrate_cmd(
        &file,
        &w.addr(),
        &w.path("owner-id"),
        &w.replica_fp,
        &freeze,
    ));
    let _ = b.child.wait();
    // A's writers stay frozen while B is gone; A still owns the region and retries.
    std::thread::sleep(Duration::from_secs(1));
    assert!(stopped(pid));
    assert!(!owned_at_b(&w, "mem"));
    let _b = w.serve();
    assert!(m.wait(Duration::from_secs(90)).success(), "{}", m.output());
    assert_moved(&w, &file, pid);
}

/// Starts `peer migrate` of the world's region through a relay to B, with `extra` arguments, and
/// returns once the freeze began: its `--before-freeze` hook waits until the file `go` (the
/// fourth value) exists, so the test sets the link up before the last round. Returns the relay,
/// the migrate process, the writer's PID and `go`.
fn migrate_through_relay(
    w: &World,
    file: &Path,
    at_a: &Killed,
    extra: &[&str],
) -> (Relay, Proc, u32, PathBuf) {
    let relay = Relay::new(&w.addr());
    let (pid, mark, go) = (at_a.id(), w.path("frozen"), w.path("go"));
    let hook = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.01; done",
        mark.display(),
        go.display()
    );
    let pid_arg = pid.to_string();
    let mut args = vec!["--freeze-pid", &pid_arg, "--before-freeze", &hook];
    args.extend_from_slice(extra);
    let cmd = &mut migrate_cmd(file, &relay.addr, &w.path("owner-id"), &w.replica_fp, &args);
    let m = Proc::spawn(cmd);
    wait_file(&mark, Duration::from_secs(60));
    (relay, m, pid, go)
}

/// Who is killed with kill -9 in [`at_the_handoff`].
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    Nobody,
    A,
    B,
}

/// Migrates through a relay that holds HANDOFF (`hold_handoff`) or its acknowledgement for 2 s
/// from the freeze; once HANDOFF went out, cuts the link for longer than QUIC's 5 s idle timeout
/// (what was held is lost) and kills `kill`. Nobody writes then, and B owns the region exactly if
/// HANDOFF reached it. The move completes by A's probe once the link is back, after B's `serve`
/// was restarted (a kill of B), or by running the same `peer migrate` again (a kill of A).
/// Returns the log (stdout, after a kill of A) of the `peer migrate` that completed it.
fn at_the_handoff(hold_handoff: bool, kill: Kill) -> String {
    let (w, mut b, file, at_a) = migrating_world();
    let (relay, mut m, pid, go) = migrate_through_relay(&w, &file, &at_a, &[]);
    relay.delay(hold_handoff, Duration::from_secs(2));
    std::fs::write(&go, "").unwrap();
    m.wait_for("offering ownership", Duration::from_secs(60));
    if !hold_handoff {
        // HANDOFF reaches B at once: it takes the region before the cut.
        b.wait_for("this peer owns it now", Duration::from_secs(10));
    }
    relay.cut(true);
    match kill {
        Kill::A => m.kill9(),
        Kill::B => b.kill9(),
        Kill::Nobody => {}
    }
    relay.delay(hold_handoff, Duration::ZERO);
    assert!(stopped(pid));
    assert_eq!(owned_at_b(&w, "mem"), !hold_handoff);
    if kill == Kill::A {
        let freeze = ["--freeze-pid", &pid.to_string()];
        let (id, trust) = (w.path("owner-id"), &w.replica_fp);
        let (ok, stdout, stderr) = migrate_run(&file, &w.addr(), &id, trust, &freeze);
        assert!(ok, "{stderr}{stdout}");
        assert_moved(&w, &file, pid);
        return stdout;
    }
    let _b = (kill == Kill::B).then(|| w.serve());
    std::thread::sleep(Duration::from_secs(7));
    relay.cut(false);
    assert!(m.wait(Duration::from_secs(90)).success(), "{}", m.output());
    // The probe settled it: B is the only owner, with A's final bytes; A's writer stays frozen.
    assert_moved(&w, &file, pid);
    m.output()
}

#[test]
fn a_handoff_acknowledgement_lost_with_the_link_is_settled_by_the_probe() {
    // B accepted; its HANDOFF_ACK was lost. A's probe hears HANDED_OVER.
    let log = at_the_handoff(false, Kill::Nobody);
    assert!(
        log.contains("asking the replica whether it took the handoff"),
        "{log}"
    );
    assert!(log.contains("the replica had taken the handoff"), "{log}");
}

#[test]
fn a_handoff_lost_with_the_link_is_probed_and_offered_again() {
    // HANDOFF itself was lost: B answers the probe as a replica, A offers the handoff again.
    let log = at_the_handoff(true, Kill::Nobody);
    assert!(
        log.contains("asking the replica whether it took the handoff"),
        "{log}"
    );
    assert!(
        log.contains("the replica did not take the handoff"),
        "{log}"
    );
}

#[test]
fn a_migrate_killed_after_b_took_the_handoff_is_told_so_when_run_again() {
    let out = at_the_handoff(false, Kill::A);
    assert!(out.contains("already handed over"), "{out}");
}

#[test]
fn a_migrate_killed_with_its_handoff_lost_completes_when_run_again() {
    let out = at_the_handoff(true, Kill::A);
    assert!(out.contains("handed over at generation"), "{out}");
}

#[test]
fn a_replica_killed_after_taking_the_handoff_says_so_to_the_probe_after_its_restart() {
    let log = at_the_handoff(false, Kill::B);
    assert!(log.contains("the replica had taken the handoff"), "{log}");
}

#[test]
fn a_replica_killed_before_the_handoff_reached_it_takes_it_when_offered_again() {
    let log = at_the_handoff(true, Kill::B);
    assert!(
        log.contains("the replica did not take the handoff"),
        "{log}"
    );
}

#[test]
fn a_link_cut_at_the_freeze_delays_the_handoff_until_it_returns() {
    let (w, _b, file, at_a) = migrating_world();
    let (relay, mut m, pid, go) = migrate_through_relay(&w, &file, &at_a, &[]);
    relay.cut(true);
    std::fs::write(&go, "").unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert!(!owned_at_b(&w, "mem") && stopped(pid));
    relay.cut(false);
    assert!(m.wait(Duration::from_secs(90)).success(), "{}", m.output());
    assert_moved(&w, &file, pid);
}

#[test]
fn a_running_sync_migrates_its_region_when_asked_through_its_control_socket() {
    let (w, _b, file, at_a) = migrating_world();
    let ctl = w.path("ctl");
    let mut sync = Proc::spawn(
        Command::new(BIN)
            .args(["sync", "--region", file.to_str().unwrap()])
            .args(w.owner_args())
            .args(["--interval", "100"])
            .env("MEMSYNC_CONTROL_DIR", &ctl),
    );
    sync.wait_for("acknowledged", Duration::from_secs(30));
    let (writer, sync_pid) = (at_a.id().to_string(), sync.child.id().to_string());
    // A region it does not replicate: refused, saying so; the sync goes on.
    let out = Command::new(BIN)
        .args(["migrate", "--sync", &sync_pid, "--name", "nosuch"])
        .env("MEMSYNC_CONTROL_DIR", &ctl)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no region named nosuch"), "{said}");
    let out = Command::new(BIN)
        .args(["migrate", "--sync", &sync_pid, "--name", "mem"])
        .args(["--freeze-pid", &writer, "--downtime-ms", "50"])
        .env("MEMSYNC_CONTROL_DIR", &ctl)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mem: handed over at generation"),
        "{stdout}"
    );
    assert!(stdout.contains("downtime"), "{stdout}");
    // The sync went on from its stream: one reconciliation, at its start, none for the migration.
    assert_eq!(
        sync.all_with("replica reconciled").len(),
        1,
        "{}",
        sync.output()
    );
    // Its only region handed over, the sync is done.
    assert!(
        sync.wait(Duration::from_secs(30)).success(),
        "{}",
        sync.output()
    );
    assert_moved(&w, &file, at_a.id());
}

#[test]
fn either_side_killed_during_pre_copy_leaves_a_the_owner_and_the_move_completes_later() {
    let (w, mut b, file, at_a) = migrating_world();
    let (id, pid) = (w.path("owner-id"), at_a.id().to_string());
    // A slow first round (a rate limit) keeps the migration in pre-copy while we kill.
    let slow = ["--freeze-pid", &pid, "--max-rate", "1"];
    let mut m = Proc::spawn(&mut migrate_cmd(
        &file,
        &w.addr(),
        &id,
        &w.replica_fp,
        &slow,
    ));
    m.wait_for("replica reconciled", Duration::from_secs(30));
    // kill -9 of B mid-round: A's writer goes on (nothing was frozen), A retries, and once B is
    // back the migration goes on from where it was and completes.
    b.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!stopped(at_a.id()) && !owned_at_b(&w, "mem"));
    let _b = w.serve();
    m.wait_for("reconnected", Duration::from_secs(60));
    // kill -9 of A mid-round: nothing was frozen, nothing is owned by B; A is still the owner.
    m.kill9();
    assert!(!stopped(at_a.id()) && !owned_at_b(&w, "mem"));
    let counters_before = counters(&file).iter().sum::<u64>();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        counters(&file).iter().sum::<u64>() > counters_before,
        "the writer stopped"
    );
    // The same command, without the limit, completes the move.
    let report = migrate_freezing(
        &file,
        &w.addr(),
        &id,
        &w.replica_fp,
        &["--freeze-pid", &pid],
    );
    eprintln!("{report}");
    assert_moved(&w, &file, at_a.id());
}

/// Writes `byte` over chunk `index` (64 KiB chunks) of `file`.
fn write_chunk(file: &Path, index: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&[byte; 65536], index << 16).unwrap();
}

#[test]
fn a_promoted_replica_fences_its_lost_owner_which_rejoins_as_its_replica() {
    let w = World::new();
    let mut server_b = w.serve();
    let file = w.random_file("mem", 64 << 16);
    let mut first = w.sync(&file, &["--once"]);
    assert!(
        first.wait(Duration::from_secs(30)).success(),
        "{}",
        first.output()
    );
    let b_copy = w.replica("mem");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
    // A is cut off and goes on writing chunks 1..=3; the operator declares it lost and promotes B.
    for i in 1..=3 {
        write_chunk(&file, i, 0xa1);
    }
    let replicas = w.path("replicas");
    let promote = |expect| promote(&replicas, expect);
    // Not while the serve holds the directory.
    assert!(promote(false).contains("stop it first"));
    server_b.signal(libc::SIGTERM);
    assert!(server_b.wait(Duration::from_secs(20)).success());
    let said = promote(true);
    assert!(
        said.contains("fenced") && said.contains(&w.owner_fp) && said.contains("generation 1"),
        "{said}"
    );
    assert!(promote(false).contains("owned by this peer already"));
    // The replica's index no longer describes DIR/mem, which the workload writes from now on.
    assert_eq!(replicas.join(".mem.index").metadata().unwrap().len(), 0);
    let owners = std::fs::read_to_string(replicas.join(".memsync/owners")).unwrap();
    assert!(
        owners.contains(&format!("mem promoted:{}", w.owner_fp)),
        "{owners}"
    );

    // A returns and is refused, with what happened and how to rejoin; B's copy is untouched.
    let at_promotion = std::fs::read(&b_copy).unwrap();
    let server_b = w.serve();
    let mut back = w.sync(&file, &["--once", "--reconnect-for", "0"]);
    assert!(!back.wait(Duration::from_secs(30)).success());
    let said = back.output();
    assert!(said.contains("fenced") && said.contains("rejoin"), "{said}");
    assert_eq!(std::fs::read(&b_copy).unwrap(), at_promotion);

    // B writes as the owner (chunk 10); A rejoins as B's replica with its own copy: only the
    // chunks either side wrote since move, and A's writes after the promotion are replaced.
    write_chunk(&b_copy, 10, 0xb2);
    let addr_a = format!("127.0.0.1:{}", free_udp_port());
    std::fs::create_dir_all(w.path("rejoined")).unwrap();
    std::fs::copy(&file, w.path("rejoined/mem")).unwrap();
    let _server_a = w.serve_as(&addr_a, "rejoined", "owner-id", &["--trust", &w.replica_fp]);
    let mut sync_b = w.sync_to(&addr_a, &b_copy, "replica-id", &w.owner_fp, &["--once"]);
    assert!(
        sync_b.wait(Duration::from_secs(30)).success(),
        "{}",
        sync_b.output()
    );
    assert!(
        sync_b
            .output()
            .contains("replica reconciled, 4 of 64 chunks differ (3 written by the fenced owner after generation 1, discarded; 1 changed here since the promotion)"),
        "{}",
        sync_b.output()
    );
    assert_eq!(
        std::fs::read(w.path("rejoined/mem")).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
    drop(server_b);
}

/// `peer promote --dir DIR mem`, expected to succeed or not; its output.
fn promote(dir: &Path, expect: bool) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["promote", "--dir", dir.to_str().unwrap(), "mem"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.success(), expect, "{text}");
    text
}

/// Failover with three peers (spec §8.8): A replicates to B and C, and is declared lost while it
/// still streams to C. B is promoted (epoch 2) and syncs to C: C admits B, ends A's stream with
/// FENCED and reconciles to B's copy. From then on A is fenced at C as at B, and what it writes
/// reaches neither.
#[test]
fn a_promotion_fences_the_lost_owner_at_every_replica_the_new_owner_reaches() {
    let w = World::new();
    let c_fp = peer_id(&w.path("c-id"));
    let addr_c = format!("127.0.0.1:{}", free_udp_port());
    std::fs::create_dir_all(w.path("c")).unwrap();
    let trust_both = ["--trust", &w.owner_fp, "--trust", &w.replica_fp];
    let _server_c = w.serve_as(&addr_c, "c", "c-id", &trust_both);
    let mut server_b = w.serve();
    let file = w.random_file("mem", 64 << 16);
    let (b_copy, c_copy) = (w.replica("mem"), w.path("c/mem"));
    let mut a_to_b = w.sync(&file, &["--once"]);
    assert!(
        a_to_b.wait(Duration::from_secs(30)).success(),
        "{}",
        a_to_b.output()
    );
    let mut a_to_c = w.sync_to(&addr_c, &file, "owner-id", &c_fp, &["--interval", "50ms"]);
    wait_identical(&file, &c_copy, Duration::from_secs(30));

    // B is promoted; A, cut off from B only, goes on writing, and C (which never heard of the
    // promotion) still takes A's chunk 1.
    server_b.signal(libc::SIGTERM);
    assert!(server_b.wait(Duration::from_secs(20)).success());
    assert!(promote(&w.path("replicas"), true).contains("epoch 2"));
    write_chunk(&file, 1, 0xa1);
    wait_identical(&file, &c_copy, Duration::from_secs(30));

    // B, the owner at epoch 2, writes chunk 5 and syncs to C: A's writes there are replaced.
    write_chunk(&b_copy, 5, 0xb5);
    let mut b_to_c = w.sync_to(&addr_c, &b_copy, "replica-id", &c_fp, &["--once"]);
    assert!(
        b_to_c.wait(Duration::from_secs(30)).success(),
        "{}",
        b_to_c.output()
    );
    assert!(
        b_to_c
            .output()
            .contains("replica reconciled, 2 of 64 chunks differ (1 written by the fenced owner after generation 1, discarded; 1 changed here since the promotion)"),
        "{}",
        b_to_c.output()
    );
    assert_eq!(
        std::fs::read(&c_copy).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
    let owners = std::fs::read_to_string(w.path("c/.memsync/owners")).unwrap();
    assert!(
        owners.contains(&format!("mem {} 2", w.replica_fp)),
        "{owners}"
    );

    // A's stream at C was ended with FENCED, and A stops.
    assert!(!a_to_c.wait(Duration::from_secs(30)).success());
    let said = a_to_c.output();
    assert!(
        said.contains("FENCED") && said.contains("newer epoch"),
        "{said}"
    );

    // What A writes from now on reaches neither C nor B.
    write_chunk(&file, 2, 0xa2);
    let mut again = w.sync_to(
        &addr_c,
        &file,
        "owner-id",
        &c_fp,
        &["--once", "--reconnect-for", "0"],
    );
    assert!(!again.wait(Duration::from_secs(30)).success());
    let said = again.output();
    assert!(
        said.contains("FENCED") && said.contains("is fenced"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&c_copy).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
    let _server_b = w.serve();
    let mut again = w.sync(&file, &["--once", "--reconnect-for", "0"]);
    assert!(!again.wait(Duration::from_secs(30)).success());
    assert!(again.output().contains("FENCED"), "{}", again.output());
    assert_eq!(
        std::fs::read(&c_copy).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
}

// Post-copy (spec/PROTOCOL.md §8.10): ownership moves at the freeze, before B holds every chunk;
// B's workload uses the region through B's NBD export at once, and B fetches what it lacks from A.

/// The chunk size `peer migrate` uses by default: 64 KiB, 16 of the writer's pages.
const CHUNK: usize = 65536;

/// The chunks B's post-copy record (DIR/.mem.postcopy) says are still with A.
fn missing_at_b(w: &World) -> Vec<usize> {
    let rec = std::fs::read(w.path("replicas/.mem.postcopy")).unwrap_or_default();
    let Some(nl) = rec.iter().position(|&b| b == b'\n') else {
        return Vec::new();
    };
    (rec[nl + 1..].iter().enumerate())
        .filter(|(_, &b)| b == 1)
        .map(|(i, _)| i)
        .collect()
}

/// The URI of B's export of `mem` (serve --nbd-dir NBD, NBD being the world's `nbd`).
fn export_uri(w: &World) -> String {
    format!(
        "nbd+unix:///mem?socket={}",
        w.path("nbd/mem.sock").display()
    )
}

/// B's serve arguments for the post-copy tests.
fn nbd_dir(w: &World) -> String {
    let d = w.path("nbd");
    std::fs::create_dir_all(&d).unwrap();
    d.to_str().unwrap().to_owned()
}

/// `qemu-io -c CMD` on B's export, started.
fn qemu_io(w: &World, cmd: &str) -> Killed {
    Killed(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd, &export_uri(w)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qemu-io is needed; test.sh installs qemu-utils"),
    )
}

/// Waits for a started client: its success and what it printed.
fn finished(mut c: Killed, timeout: Duration) -> (bool, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let mut out = String::new();
            for pipe in [
                c.stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
                c.stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            ]
            .into_iter()
            .flatten()
            {
                let mut p = pipe;
                let _ = p.read_to_string(&mut out);
            }
            return (status.success(), out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_post_copy_migration_hands_over_at_the_freeze_and_the_workload_goes_on_at_b() {
    let w = World::new();
    let nbd = nbd_dir(&w);
    let hook = w.path("handed-over");
    let on_handoff = format!("echo $MEMSYNC_NBD > {}", hook.display());
    let _b = w.serve_with(&["--nbd-dir", &nbd, "--on-handoff", &on_handoff]);
    let (file, writer) = written_at_a(&w);
    // One pre-copy round while the writer writes, then the freeze: what it wrote meanwhile is
    // stale at B, and moves after the handoff.
    let stop = writer.stop_hook();
    let freeze = ["--before-freeze", &stop, "--postcopy", "--max-rounds", "1"];
    let report = migrate_freezing(
        &file,
        &w.addr(),
        &w.path("owner-id"),
        &w.replica_fp,
        &freeze,
    );
    eprintln!("{report}");
    let stale: u64 = report
        .split("post-copy: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no post-copy in the report: {report}"));
    assert!(stale > 0, "nothing was left for post-copy: {report}");
    assert!(!report.contains("unfinished"), "{report}");
    let at_handoff = writer.last_written(&vec![0; PAGES]);
    assert!(
        at_handoff.iter().sum::<u64>() > 0,
        "the writer wrote nothing"
    );
    assert_eq!(
        counters(&w.replica("mem")),
        at_handoff,
        "B lacks writes A's writer made"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("mem")).unwrap()
    );
    assert!(owned_at_b(&w, "mem"));
    assert!(
        !w.path("replicas/.mem.postcopy").exists(),
        "B still records missing chunks"
    );
    let told = std::fs::read_to_string(&hook).unwrap_or_default();
    assert_eq!(
        told.trim(),
        export_uri(&w),
        "the on-handoff command was not told the export"
    );

    // The workload goes on at B, through B's export, from B's copy.
    let size = (PAGES * 4096) as u64;
    let (_fuse, mnt, through) = nbdfuse(&w, &export_uri(&w), size, "at-b");
    let writer = CounterWriter::start(&w, &through, "pwrite", "at-b");
    wait_more(&w.replica("mem"), at_handoff.iter().sum());
    let stopped = Command::new("sh")
        .arg("-c")
        .arg(writer.stop_hook())
        .status()
        .unwrap();
    assert!(stopped.success());
    let at_end = writer.last_written(&at_handoff);
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(
        counters(&w.replica("mem")),
        at_end,
        "B's export lost writes"
    );
    assert!(
        (0..PAGES).all(|p| at_end[p] >= at_handoff[p]),
        "a page went back at B"
    );
}

/// A post-copy migration under way, the link to B cut just after B took the region.
struct PostCopying {
    w: World,
    /// B's serve, with an NBD export of what it owns.
    b: Proc,
    /// A's region.
    file: PathBuf,
    relay: Relay,
    /// A's `peer migrate`.
    m: Proc,
    /// A's writer, frozen.
    pid: u32,
    _at_a: Killed,
}

impl PostCopying {
    /// Brings the link back at full speed and waits until `peer migrate` finished the post-copy.
    fn link_returns(&mut self) {
        self.relay.delay(false, Duration::ZERO);
        self.relay.cut(false);
        let m = &mut self.m;
        assert!(m.wait(Duration::from_secs(90)).success(), "{}", m.output());
    }
}

/// Starts a post-copy migration (one pre-copy round while A's writer writes, so every chunk it
/// wrote meanwhile is stale at B) through a relay whose link to B is slow from the freeze on
/// (1.5 s one way), and cuts the link once B owns the region: B then lacks its stale chunks for
/// as long as the cut lasts. B's serve has `serve_extra` arguments.
fn post_copying(serve_extra: &[&str]) -> PostCopying {
    let (w, b, file, at_a) = migrating_world_serving(|w| {
        let mut args = vec!["--nbd-dir".to_owned(), nbd_dir(w)];
        args.extend(serve_extra.iter().map(|a| a.to_string()));
        args
    });
    let (relay, m, pid, go) =
        migrate_through_relay(&w, &file, &at_a, &["--postcopy", "--max-rounds", "1"]);
    relay.delay(false, Duration::from_millis(1500));
    std::fs::write(&go, "").unwrap();
    b.wait_for("this peer owns it now", Duration::from_secs(60));
    relay.cut(true);
    assert!(owned_at_b(&w, "mem") && stopped(pid));
    PostCopying {
        w,
        b,
        file,
        relay,
        m,
        pid,
        _at_a: at_a,
    }
}

#[test]
fn post_copy_reads_fail_with_eio_once_an_outage_outlasts_the_tolerance_and_work_again_after() {
    let mut p = post_copying(&["--outage-tolerance", "2s"]);
    let stale = missing_at_b(&p.w);
    let at = (stale[0] * CHUNK).to_string();
    let started = std::time::Instant::now();
    let (ok, out) = finished(
        qemu_io(&p.w, &format!("read {at} 4k")),
        Duration::from_secs(30),
    );
    assert!(
        !ok || out.contains("failed"),
        "a read of a missing chunk did not fail: {out}"
    );
    assert!(out.contains("Input/output error"), "{out}");
    // It waited for the tolerance (counted from the loss of the stream, after QUIC's idle
    // timeout), not less.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    p.link_returns();
    let (ok, out) = finished(
        qemu_io(&p.w, &format!("read -v {at} 16")),
        Duration::from_secs(30),
    );
    assert!(ok && !out.contains("failed"), "{out}");
    assert_eq!(
        std::fs::read(&p.file).unwrap(),
        std::fs::read(p.w.replica("mem")).unwrap()
    );
}

/// A post-copy migration through a relay whose link to B is slow from the freeze on (1.5 s
/// one way), so B owns the region for a while with chunks missing; then the link is cut for
/// longer than QUIC's idle timeout, and `kill` is killed with kill -9. During the cut, a whole
/// chunk written at B needs nothing from A and completes, while a partial write and a read of
/// missing chunks wait (unless B was killed: then they start after its restart). After the link
/// returns (and B's serve or A's migrate restarted), everything completes: B holds A's frozen
/// bytes and its own writes, and a late copy never overwrote the whole chunk B wrote.
fn post_copy_cut(kill: Kill) {
    let PostCopying {
        w,
        mut b,
        file,
        relay,
        mut m,
        pid,
        _at_a: _writer,
    } = post_copying(&[]);
    let serve_b = || w.serve_with(&["--nbd-dir", w.path("nbd").to_str().unwrap()]);
    let stale = missing_at_b(&w);
    assert!(stale.len() >= 2, "too little left for post-copy: {stale:?}");
    let (whole, part) = (stale[0], stale[1]);
    let whole_at = (whole * CHUNK).to_string();
    let part_at = (part * CHUNK + 100).to_string();
    let copy = w.path("copy.raw");
    let clients = |w: &World| {
        let (ok, out) = finished(
            qemu_io(w, &format!("write -P 0x5a {whole_at} 64k")),
            Duration::from_secs(30),
        );
        assert!(ok, "a whole chunk written at B waited for A: {out}");
        let part = qemu_io(w, &format!("write -P 0xa5 {part_at} 10"));
        let read = Killed(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &export_uri(w)])
                .arg(&copy)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        (part, read)
    };
    let mut waiting = None;
    match kill {
        Kill::A => m.kill9(),
        Kill::B => b.kill9(),
        Kill::Nobody => {}
    }
    if kill != Kill::B {
        waiting = Some(clients(&w));
    }
    // Longer than QUIC's idle timeout: the connection is lost, not just paused.
    std::thread::sleep(Duration::from_secs(7));
    if let Some((writing, reading)) = &mut waiting {
        assert!(
            writing.try_wait().unwrap().is_none(),
            "a partial write of a missing chunk did not wait"
        );
        assert!(
            reading.try_wait().unwrap().is_none(),
            "a read of missing chunks did not wait"
        );
    }
    relay.delay(false, Duration::ZERO);
    relay.cut(false);
    let _b = (kill == Kill::B).then(|| {
        let b = serve_b();
        b.wait_for("post-copy unfinished", Duration::from_secs(10));
        waiting = Some(clients(&w));
        b
    });
    if kill == Kill::A {
        // The operator runs the same migration again: it serves what B still lacks.
        let freeze = ["--freeze-pid", &pid.to_string(), "--postcopy"];
        let (ok, stdout, stderr) = migrate_run(
            &file,
            &w.addr(),
            &w.path("owner-id"),
            &w.replica_fp,
            &freeze,
        );
        assert!(ok && stdout.contains("post-copy"), "{stderr}{stdout}");
    } else {
        assert!(m.wait(Duration::from_secs(90)).success(), "{}", m.output());
        assert!(m.output().contains("post-copy"), "{}", m.output());
    }
    let (writing, reading) = waiting.expect("clients started");
    let (ok, out) = finished(writing, Duration::from_secs(60));
    assert!(ok, "{out}");
    let (ok, out) = finished(reading, Duration::from_secs(60));
    assert!(ok, "{out}");
    // B holds A's frozen bytes, its whole-chunk write and its partial one; the copy read during
    // post-copy holds A's bytes too (the partial write may or may not have preceded it).
    let mut expected = std::fs::read(&file).unwrap();
    expected[whole * CHUNK..(whole + 1) * CHUNK].fill(0x5a);
    let at_b = std::fs::read(w.replica("mem")).unwrap();
    let copied = std::fs::read(&copy).unwrap();
    let p = part * CHUNK + 100;
    assert_eq!(copied[..p], expected[..p]);
    assert_eq!(copied[p + 10..], expected[p + 10..]);
    expected[p..p + 10].fill(0xa5);
    assert!(
        at_b[whole * CHUNK..(whole + 1) * CHUNK]
            .iter()
            .all(|&x| x == 0x5a),
        "a late copy from A overwrote the chunk B wrote"
    );
    assert_eq!(
        at_b, expected,
        "B's region is not A's frozen one plus B's writes"
    );
    assert!(owned_at_b(&w, "mem") && stopped(pid));
    assert!(missing_at_b(&w).is_empty() && !w.path("replicas/.mem.postcopy").exists());
}

#[test]
fn post_copy_under_a_cut_link_waits_and_completes_when_the_link_returns() {
    post_copy_cut(Kill::Nobody);
}

#[test]
fn a_new_owner_killed_during_post_copy_resumes_the_fetches_after_its_restart() {
    post_copy_cut(Kill::B);
}

#[test]
fn an_old_owner_killed_during_post_copy_serves_the_rest_when_migrate_runs_again() {
    post_copy_cut(Kill::A);
}

/// Waits until `cond` holds, up to `secs` seconds, saying `what` when it never does.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A region moved A → B with `peer migrate --follow` to B's serve (through a relay, if
/// `relayed`) while the counter writer writes it at A.
struct Followed {
    w: World,
    /// B's serve, its control socket in `ctl`.
    b: Proc,
    /// A's `peer migrate --follow`, following B.
    a: Proc,
    /// A's region file.
    file: PathBuf,
    /// The counters A's writer last wrote.
    at_handoff: Vec<u64>,
    ctl: PathBuf,
    relay: Option<Relay>,
}

/// B's serve, with its control socket in `ctl`.
fn serve_controlled(w: &World, ctl: &Path) -> Proc {
    serve_controlled_with(w, ctl, &[])
}

/// [`serve_controlled`] with `extra` arguments.
fn serve_controlled_with(w: &World, ctl: &Path, extra: &[&str]) -> Proc {
    let b = Proc::spawn(
        Command::new(BIN)
            .args(["serve", "--listen", &w.addr(), "--dir"])
            .arg(w.path("replicas"))
            .args(["--identity", w.path("replica-id").to_str().unwrap()])
            .args(["--trust", &w.owner_fp])
            .args(extra)
            .env("MEMSYNC_CONTROL_DIR", ctl),
    );
    b.wait_for("serving replicas", Duration::from_secs(20));
    b
}

/// `peer migrate --sync PID --name mem` with `extra` flags, through the control sockets in `ctl`:
/// its report.
fn migrate_through_socket(ctl: &Path, pid: u32, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["migrate", "--sync", &pid.to_string(), "--name", "mem"])
        .args(["--downtime-ms", "50"])
        .args(extra)
        .env("MEMSYNC_CONTROL_DIR", ctl)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("downtime"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("migrated: {said}");
    said
}

fn followed_move(relayed: bool) -> Followed {
    followed_move_with(relayed, |_| Vec::new())
}

/// [`followed_move`] with the arguments `extra` makes to B's serve.
fn followed_move_with(relayed: bool, extra: impl Fn(&World) -> Vec<String>) -> Followed {
    let w = World::new();
    let ctl = w.path("ctl");
    let args = extra(&w);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = serve_controlled_with(&w, &ctl, &args);
    let relay = relayed.then(|| Relay::new(&w.addr()));
    let (file, writer) = written_at_a(&w);
    let stop = writer.stop_hook();
    let to = relay.as_ref().map_or_else(|| w.addr(), |r| r.addr.clone());
    let a = Proc::spawn(
        migrate_cmd(&file, &to, &w.path("owner-id"), &w.replica_fp, &[])
            .args(["--before-freeze", &stop, "--follow"])
            .env("MEMSYNC_CONTROL_DIR", &ctl),
    );
    let at_handoff = writer.last_written(&[0; PAGES]);
    a.wait_for(
        "following its new owner as its replica",
        Duration::from_secs(60),
    );
    Followed {
        w,
        b,
        a,
        file,
        at_handoff,
        ctl,
        relay,
    }
}

/// Spec §8.6 step 5 between real peers: after the move A → B, B streams the region as its owner on
/// the stream the handoff came on and A, which follows, receives B's writes; the region then moves
/// back B → A on that same stream (asked through B's serve's control socket), and A streams it to
/// B again. No page is lost or stale at any step, and no stream is opened but the first.
#[test]
fn the_old_owner_follows_the_new_one_on_the_same_stream_and_takes_the_region_back() {
    let Followed {
        w,
        b,
        a,
        file,
        at_handoff,
        ctl,
        ..
    } = followed_move(false);
    let b_copy = w.replica("mem");
    assert_eq!(
        counters(&b_copy),
        at_handoff,
        "B lacks writes A's writer made"
    );
    assert!(owned_at_b(&w, "mem"));
    b.wait_for("streaming it as its owner", Duration::from_secs(10));

    // The workload goes on at B, and A's file follows it.
    let at_b = CounterWriter::start(&w, &b_copy, "mmap", "at-b");
    let before: u64 = at_handoff.iter().sum();
    eventually(60, "A receives B's writes", || {
        counters(&file).iter().sum::<u64>() > before
    });

    // Back to A, on the same stream.
    migrate_through_socket(&ctl, b.child.id(), &["--before-freeze", &at_b.stop_hook()]);
    let back = at_b.last_written(&at_handoff);
    a.wait_for("this peer owns it again", Duration::from_secs(10));
    assert_no_page_lost_or_stale(&file, &b_copy, &at_handoff, &back);
    // B recorded A as the owner, at the epoch after its own.
    let owners = std::fs::read_to_string(w.path("replicas/.memsync/owners")).unwrap();
    assert!(
        owners.contains(&format!("mem {} 3", w.owner_fp)),
        "{owners}"
    );

    // A owns it again and streams it to B: B, a replica once more, receives A's writes.
    let again = CounterWriter::start(&w, &file, "mmap", "again");
    let sum: u64 = back.iter().sum();
    eventually(60, "B receives A's writes", || {
        counters(&b_copy).iter().sum::<u64>() > sum
    });
    drop(again);
    // One stream carried all of it: A reconciled once as owner, and never reconnected.
    assert_eq!(a.all_with("replica reconciled").len(), 2, "{}", a.output());
    assert!(!a.output().contains("reconnected"), "{}", a.output());
}

/// A following old owner whose link to the new owner broke asks for the region again on a new
/// connection (MOUNT, then its hashes): the new owner's writes of the outage reach it. The mount
/// rules of B's serve name another region only: the peer B took the region from may still ask.
#[test]
fn a_following_old_owner_catches_up_after_a_broken_link() {
    let Followed {
        w,
        b: _b,
        a,
        file,
        at_handoff,
        relay,
        ..
    } = followed_move_with(true, |_| vec!["--allow-mount".into(), "other=*".into()]);
    let relay = relay.expect("relayed");
    let b_copy = w.replica("mem");
    assert_eq!(counters(&b_copy), at_handoff);
    let at_b = CounterWriter::start(&w, &b_copy, "mmap", "at-b");
    relay.cut(true);
    // Longer than QUIC's idle timeout: the connection is lost, and B's writes go on.
    std::thread::sleep(Duration::from_secs(7));
    relay.cut(false);
    a.wait_for("reconnected", Duration::from_secs(60));
    let hook = at_b.stop_hook();
    assert!(Command::new("sh")
        .args(["-c", &hook])
        .status()
        .unwrap()
        .success());
    let last = at_b.last_written(&at_handoff);
    eventually(60, "A catches up with B", || counters(&file) == last);
    wait_identical(&file, &b_copy, Duration::from_secs(30));
}

/// qemu-io's `cmd` on the NBD export at `uri` (read-only with `ro`), run to its end: (success,
/// output).
fn qemu_io_at(uri: &str, cmd: &str, ro: bool) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    if ro {
        c.arg("-r");
    }
    let out = c.args(["-c", cmd, uri]).output().expect("qemu-io");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !said.contains("failed"), said)
}

/// `--follow` with the NBD detector: once B owns the region, A's export refuses writes and serves
/// B's writes read-only as A follows; handed back, it takes writes again and B receives them.
#[test]
fn a_following_nbd_export_serves_the_new_owners_bytes_and_takes_writes_when_handed_back() {
    use std::os::unix::fs::FileExt;
    let w = World::new();
    let ctl = w.path("ctl");
    let b = serve_controlled(&w, &ctl);
    let file = w.path("mem");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((PAGES * 4096) as u64)
        .unwrap();
    let port = free_tcp_port();
    let a = Proc::spawn(
        Command::new(BIN)
            .args(["sync", "--region", file.to_str().unwrap()])
            .args(w.owner_args())
            .args(["--interval", "100", "--detector", "nbd", "--follow"])
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .env("MEMSYNC_CONTROL_DIR", &ctl),
    );
    a.wait_for("acknowledged", Duration::from_secs(30));
    let uri = format!("nbd://127.0.0.1:{port}/mem");
    let (ok, said) = qemu_io_at(&uri, "write -P 0x11 0 64k", false);
    assert!(ok, "{said}");
    migrate_through_socket(&ctl, a.child.id(), &[]);
    a.wait_for(
        "following its new owner as its replica",
        Duration::from_secs(30),
    );
    let b_copy = w.replica("mem");
    assert_eq!(std::fs::read(&b_copy).unwrap()[..65536], [0x11; 65536]);
    // A's export refuses writes now, and serves what B writes.
    let (ok, said) = qemu_io_at(&uri, "write -P 0x12 0 64k", false);
    assert!(!ok, "a write at A went through after the handoff: {said}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&b_copy)
        .unwrap();
    f.write_all_at(&[0x22; 65536], 65536).unwrap();
    eventually(60, "A's export serves B's write", || {
        qemu_io_at(&uri, "read -P 0x22 64k 64k", true).0
    });
    // Handed back: A's export takes writes again, and B, its replica again, receives them.
    migrate_through_socket(&ctl, b.child.id(), &[]);
    a.wait_for("this peer owns it again", Duration::from_secs(30));
    let (ok, said) = qemu_io_at(&uri, "write -P 0x33 128k 64k", false);
    assert!(ok, "{said}");
    eventually(60, "B receives A's write through its export", || {
        std::fs::read(&b_copy).unwrap()[131072..196608] == [0x33; 65536]
    });
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&b_copy).unwrap()
    );
}

/// After a post-copy handoff the new owner ends the stream once it holds everything; an old owner
/// that follows asks for the region again (MOUNT) and receives what the new owner writes.
#[test]
fn a_following_old_owner_asks_for_the_region_again_once_post_copy_is_done() {
    let w = World::new();
    let nbd = nbd_dir(&w);
    let _b = w.serve_with(&["--nbd-dir", &nbd]);
    let (file, writer) = written_at_a(&w);
    let stop = writer.stop_hook();
    let flags = [
        "--before-freeze",
        &stop,
        "--postcopy",
        "--max-rounds",
        "1",
        "--follow",
    ];
    let a = migrating(&w, &file, &flags);
    let at_handoff = writer.last_written(&[0; PAGES]);
    a.wait_for("post-copy done", Duration::from_secs(60));
    a.wait_for(
        "following its new owner as its replica",
        Duration::from_secs(30),
    );
    assert_eq!(counters(&w.replica("mem")), at_handoff);
    // B's workload writes through B's export; A's file follows.
    let (ok, said) = qemu_io_at(&export_uri(&w), "write -P 0x44 0 4k", false);
    assert!(ok, "{said}");
    eventually(60, "A receives B's write", || {
        std::fs::read(&file).unwrap()[..4096] == [0x44; 4096]
    });
}

/// Writes `byte` over the first 4 KiB of page `page` of B's copy (B's workload) and waits until
/// A's `file` holds it: A follows B.
fn b_writes_and_a_follows(w: &World, file: &Path, page: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let b_copy = std::fs::OpenOptions::new()
        .write(true)
        .open(w.replica("mem"))
        .unwrap();
    b_copy.write_all_at(&[byte; 4096], page * 4096).unwrap();
    let range = (page * 4096) as usize..(page * 4096 + 4096) as usize;
    eventually(60, "A follows B's write", || {
        std::fs::read(file).unwrap()[range.clone()] == [byte; 4096]
    });
}

/// kill -9 of either side while the old owner follows: a restarted new owner is asked for the
/// region again (it owns it, by its records), and a restarted `peer sync --follow` at the old owner
/// hears that the peer owns the region and follows it. Never two owners: B's records name it the
/// owner throughout. B's mount rules name another region only: its records let A ask.
#[test]
fn either_side_killed_while_the_old_owner_follows_rejoins_with_one_owner() {
    let Followed {
        w,
        mut b,
        mut a,
        file,
        ctl,
        ..
    } = followed_move_with(false, |_| vec!["--allow-mount".into(), "other=*".into()]);
    b_writes_and_a_follows(&w, &file, 1, 0xb1);
    // B killed: its restarted serve owns the region by its records, which also name A as the
    // peer it came from, so A may ask for it again though no mount rule names it.
    b.kill9();
    let _b = serve_controlled_with(&w, &ctl, &["--allow-mount", "other=*"]);
    a.wait_for("reconnected", Duration::from_secs(60));
    b_writes_and_a_follows(&w, &file, 2, 0xb2);
    // A killed: a restarted sync of the file with --follow learns that B owns it and follows.
    a.kill9();
    let a = w.sync(&file, &["--follow", "--interval", "100"]);
    a.wait_for(
        "following its owner as its replica",
        Duration::from_secs(30),
    );
    b_writes_and_a_follows(&w, &file, 3, 0xb3);
    assert!(owned_at_b(&w, "mem"));
    assert!(
        !a.output().contains("acknowledged"),
        "A streamed as an owner: {}",
        a.output()
    );
}

/// A post-copy handoff that finds nothing stale (no writer) is still one: the new owner ends the
/// stream at once instead of turning it around, and `peer migrate` reports it done.
#[test]
fn a_post_copy_handoff_with_nothing_stale_completes() {
    let w = World::new();
    let _b = w.serve();
    let file = w.random_file("mem", PAGES * 4096);
    let (id, trust) = (w.path("owner-id"), &w.replica_fp);
    let (ok, stdout, stderr) = migrate_run(&file, &w.addr(), &id, trust, &["--postcopy"]);
    assert!(ok, "{stderr}{stdout}");
    assert!(stdout.contains("post-copy: 0 stale chunks"), "{stdout}");
    assert!(owned_at_b(&w, "mem"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("mem")).unwrap()
    );
}

/// `serve --owned-detector nbd`: a region owned here learns its changes from the writes through
/// its `--nbd-dir` export (nothing is scanned), and the old owner following it receives them.
#[test]
fn a_region_owned_here_streams_the_writes_of_its_nbd_export_to_its_follower() {
    let w = World::new();
    let nbd = nbd_dir(&w);
    let b = w.serve_with(&["--nbd-dir", &nbd, "--owned-detector", "nbd"]);
    let file = w.random_file("mem", PAGES * 4096);
    let a = migrating(&w, &file, &["--follow"]);
    a.wait_for(
        "following its new owner as its replica",
        Duration::from_secs(60),
    );
    b.wait_for("detector nbd", Duration::from_secs(10));
    let (ok, said) = qemu_io_at(&export_uri(&w), "write -P 0x55 8k 4k", false);
    assert!(ok, "{said}");
    eventually(60, "A receives the write through B's export", || {
        std::fs::read(&file).unwrap()[8192..12288] == [0x55; 4096]
    });
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("mem")).unwrap()
    );
}

/// While a post-copy handoff still fetches chunks, B's file holds stale ones: a mount of the
/// region from B is refused, saying why, instead of being served stale chunks.
#[test]
fn a_mount_of_a_region_still_arriving_in_post_copy_is_refused() {
    let mut p = post_copying(&[]);
    assert!(!missing_at_b(&p.w).is_empty());
    let port = free_tcp_port();
    let mut mount = Proc::spawn(
        Command::new(BIN)
            .args(["mount", "--peer", &p.w.addr(), "--name", "mem"])
            .args(["--identity", p.w.path("owner-id").to_str().unwrap()])
            .args(["--trust", &p.w.replica_fp])
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")]),
    );
    assert!(!mount.wait(Duration::from_secs(30)).success());
    assert!(
        mount.output().contains("still arriving from its old owner"),
        "{}",
        mount.output()
    );
    p.link_returns();
}

/// A handback whose HANDOFF is lost with the link, and B killed then: B's restarted serve holds
/// its export's writes (A may own the region now), until A asks for the region as a replica
/// (MOUNT: it did not take it), when they go on; A follows them.
#[test]
fn a_handback_lost_with_the_link_holds_the_new_owners_writes_until_it_is_settled() {
    let Followed {
        w,
        mut b,
        a,
        file,
        ctl,
        relay,
        ..
    } = followed_move_with(true, |w| vec!["--nbd-dir".into(), nbd_dir(w)]);
    let relay = relay.expect("relayed");
    let (frozen, go) = (w.path("b-frozen"), w.path("b-go"));
    let hook = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.01; done",
        frozen.display(),
        go.display()
    );
    let back = Command::new(BIN)
        .args([
            "migrate",
            "--sync",
            &b.child.id().to_string(),
            "--name",
            "mem",
        ])
        .args(["--before-freeze", &hook])
        .env("MEMSYNC_CONTROL_DIR", &ctl)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _back = Killed(back);
    wait_file(&frozen, Duration::from_secs(60));
    relay.cut(true);
    std::fs::write(&go, "").unwrap();
    b.wait_for("offering ownership", Duration::from_secs(30));
    assert!(w.path("replicas/.mem.handing").exists());
    b.kill9();
    let b = serve_controlled_with(&w, &ctl, &["--nbd-dir", &nbd_dir(&w)]);
    b.wait_for("its writes are held", Duration::from_secs(10));
    let write = qemu_io(&w, "write -P 0x66 0 4k");
    std::thread::sleep(Duration::from_secs(2));
    let mut write = write;
    assert!(
        write.try_wait().unwrap().is_none(),
        "a write went through while held"
    );
    relay.cut(false);
    a.wait_for("reconnected", Duration::from_secs(60));
    let (ok, out) = finished(write, Duration::from_secs(60));
    assert!(ok && !out.contains("failed"), "{out}");
    b.wait_for("did not happen; writes go on here", Duration::from_secs(10));
    assert!(!w.path("replicas/.mem.handing").exists());
    eventually(60, "A follows B's write", || {
        std::fs::read(&file).unwrap()[..4096] == [0x66; 4096]
    });
}
