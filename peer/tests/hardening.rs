//! Bad input from peers, clients, files and users, against real `peer` processes: links in the
//! replica directory, files that shrink under every reader, slow and lying NBD clients, special
//! files as regions, a full disk at the replica, sparse regions, damaged identities.

mod support;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// A `peer` run that must fail with a message (exit status 1, never a signal).
fn fails_with(p: &mut Proc, timeout: Duration) -> String {
    let status = p.wait(timeout);
    let out = p.output();
    assert_eq!(status.signal(), None, "killed by a signal:\n{out}");
    assert_eq!(status.code(), Some(1), "{out}");
    out
}

/// The line `peer` printed last for its error.
fn error_line(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
}

/// Truncates `file` to `len` bytes in place, as another process would.
fn shrink(file: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(len).unwrap();
}

/// The sync `p` ends with its region's change of size, and nothing else.
fn ends_resized(p: &mut Proc) {
    let out = fails_with(p, Duration::from_secs(60));
    let e = error_line(&out);
    assert!(e.contains("changed size") || e.contains("shrank"), "{out}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mount(w: &World, name: &str, sock: &Path) -> Proc {
    mount_as(w, "owner-id", name, sock)
}

/// `peer mount` of `name` with the identity in `id`.
fn mount_as(w: &World, id: &str, name: &str, sock: &Path) -> Proc {
    let listen = format!("unix:{}", sock.display());
    Proc::start(&[
        "mount",
        "--peer",
        &w.addr(),
        "--name",
        name,
        "--nbd-listen",
        &listen,
        "--identity",
        w.path(id).to_str().unwrap(),
        "--trust",
        &w.replica_fp,
    ])
}

#[test]
fn links_in_the_replica_directory_are_never_followed() {
    let w = World::new();
    let outside = w.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.join("target");
    let secret = outside.join("secret");
    std::fs::write(&target, b"precious").unwrap();
    std::fs::write(&secret, b"secret bytes").unwrap();
    let rep = w.path("replicas");
    std::os::unix::fs::symlink(&target, rep.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("created"), rep.join("dangling")).unwrap();
    std::fs::hard_link(&target, rep.join("hard")).unwrap();
    std::os::unix::fs::symlink(&secret, rep.join("leak")).unwrap();
    let _server = w.serve();
    let file = w.random_file("r.bin", 2 << 20);
    for (name, why) in [
        ("evil", "symbolic link"),
        ("dangling", "symbolic link"),
        ("hard", "hard links"),
    ] {
        let mut p = w.sync(&file, &["--name", name, "--once", "--reconnect-for", "0"]);
        let out = fails_with(&mut p, Duration::from_secs(60));
        assert!(error_line(&out).contains(why), "{name}: {out}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(!outside.join("created").exists());
    // Reads: a mount of the link is refused and exports nothing.
    let mut m = mount(&w, "leak", &w.path("leak.sock"));
    let out = fails_with(&mut m, Duration::from_secs(60));
    assert!(error_line(&out).contains("symbolic link"), "{out}");
    assert!(!out.contains("mounted lazily"), "{out}");
}

#[test]
fn a_region_that_shrinks_under_the_owner_is_reported_not_a_signal() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("r.bin", 256 << 20);
    // Paced, so the first round is still reading the file when it shrinks.
    let mut p = w.sync(&file, &["--max-rate", "16", "--interval", "50"]);
    p.wait_for("chunks differ", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    shrink(&file, 1 << 20);
    ends_resized(&mut p);
}

#[test]
fn a_backing_file_that_shrinks_under_the_nbd_export_is_reported_not_a_signal() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("disk.img", 8 << 20);
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--detector", "nbd", "--nbd-listen", &listen];
    let mut p = w.sync(&file, &args);
    p.wait_for("chunks differ", Duration::from_secs(30));
    shrink(&file, 1 << 20);
    // A read past the new end through the export: an I/O error to the client (or, once the
    // sync loop saw the resize first, no export), never bytes and never a signal.
    let uri = format!("nbd://127.0.0.1:{port}/disk.img");
    let read = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", "read 6M 64k"])
        .output()
        .expect("qemu-io is needed (test.sh installs it)");
    let said =
        String::from_utf8_lossy(&read.stdout).into_owned() + &String::from_utf8_lossy(&read.stderr);
    assert!(!said.contains("65536/65536"), "{said}");
    // Writes through the export wake the sync loop, which finds the file resized.
    let _ = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", "write -P 1 0 4k"])
        .output();
    ends_resized(&mut p);
}

#[test]
fn a_replica_resynced_smaller_under_a_mount_ends_the_mount_not_the_server() {
    let w = World::new();
    let mut server = w.serve_with(&["--mount-max-rate", "8"]);
    let file = w.random_file("img", 128 << 20);
    let mut owner = w.sync(&file, &["--once"]);
    assert!(owner.wait(Duration::from_secs(120)).success());
    // The mount's background push is paced: it is still reading the replica below.
    let m = mount(&w, "img", &w.path("m.sock"));
    m.wait_for("mounted lazily", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    random_file(&file, 1 << 20);
    let mut owner = w.sync(&file, &["--once"]);
    assert!(
        owner.wait(Duration::from_secs(60)).success(),
        "{}",
        owner.output()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("img")).unwrap()
    );
    server.wait_for("mount of img ended", Duration::from_secs(30));
    assert!(server.child.try_wait().unwrap().is_none(), "serve exited");
    drop(m);
    // The server still serves.
    let other = w.random_file("other", 1 << 20);
    let mut owner = w.sync(&other, &["--once"]);
    assert!(owner.wait(Duration::from_secs(60)).success());
    wait_identical(&other, &w.replica("other"), Duration::from_secs(10));
}

/// Greets, enters transmission of `name` with NBD_OPT_EXPORT_NAME, and reads the export's info.
fn nbd_transmission(port: u16, name: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 18];
    s.read_exact(&mut b).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    let mut m = 0x49484156454F5054u64.to_be_bytes().to_vec();
    m.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    s.write_all(&m).unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).unwrap();
    s
}

/// A WRITE header claiming `len` bytes of payload, none of which follow.
fn lying_write(s: &mut std::net::TcpStream, len: u32) {
    let mut m = 0x25609513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
    m.extend_from_slice(&1u64.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    s.write_all(&m).unwrap();
}

#[test]
fn slow_and_lying_nbd_clients_hold_bounded_memory_and_slots() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("disk.img", 64 << 20);
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--detector",
        "nbd",
        "--nbd-listen",
        &listen,
        "--nbd-max-connections",
        "48",
        "--nbd-handshake-timeout",
        "2",
    ];
    let p = w.sync(&file, &args);
    p.wait_for("acknowledged", Duration::from_secs(60));
    let pid = p.child.id();
    let before = rss_kib(pid);
    // 40 clients each claim a 32 MiB WRITE and send none of it.
    let mut liars: Vec<_> = (0..40)
        .map(|_| {
            let mut s = nbd_transmission(port, "disk.img");
            lying_write(&mut s, 32 << 20);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let grown = rss_kib(pid).saturating_sub(before);
    // Each holds at most one 256 KiB piece: 40 connections stay far below one 32 MiB payload.
    assert!(
        grown < 32 << 10,
        "RSS grew by {grown} KiB for 40 lying clients"
    );
    // The cap: 40 liars + 8 more fill 48 slots; the 49th is closed at once.
    let mut more: Vec<_> = (0..8).map(|_| nbd_transmission(port, "disk.img")).collect();
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(closed(&mut extra), "a client past the cap was served");
    // A client that never finishes its handshake is closed after the timeout.
    drop(more.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; 18];
    silent.read_exact(&mut greeting).unwrap();
    assert!(closed(&mut silent), "a silent client was not closed");
    // Freed slots serve real clients again.
    liars.clear();
    more.clear();
    std::thread::sleep(Duration::from_millis(300));
    let uri = format!("nbd://127.0.0.1:{port}/disk.img");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", "read 0 1M"])
        .output()
        .expect("qemu-io");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn special_files_are_named_for_what_they_are() {
    let w = World::new();
    let fifo = w.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let dir = w.path("adir");
    std::fs::create_dir(&dir).unwrap();
    for (path, said) in [
        (fifo.as_path(), "is a FIFO"),
        (dir.as_path(), "is a directory"),
        (Path::new("/dev/null"), "is a character device"),
        (Path::new("/dev/zero"), "is a character device"),
    ] {
        let mut p = w.sync(path, &["--name", "x", "--once"]);
        let out = fails_with(&mut p, Duration::from_secs(30));
        let e = error_line(&out);
        assert!(
            e.contains(said) && e.contains("a region is a regular file or a block device"),
            "{e}"
        );
    }
}

/// A tmpfs of `size` at `dir` (root only, as the tests run); unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        SmallFs(dir.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_at_the_replica_is_reported_with_its_reason_every_time() {
    let w = World::new();
    let _fs = SmallFs::mount(&w.path("replicas"), "1M");
    let _server = w.serve();
    let file = w.random_file("big", 8 << 20);
    for run in 0..4 {
        let mut p = w.sync(&file, &["--once", "--reconnect-for", "0"]);
        let out = fails_with(&mut p, Duration::from_secs(60));
        let e = error_line(&out);
        assert!(e.contains("No space left on device"), "run {run}: {out}");
        let _ = std::fs::remove_file(w.replica("big"));
    }
}

#[test]
fn holes_of_a_sparse_region_are_never_read() {
    let w = World::new();
    let _server = w.serve();
    let file = w.path("sparse");
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(2 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xab; 256 << 10], 1 << 30).unwrap();
    drop(f);
    let p = w.sync(&file, &["--interval", "100"]);
    p.wait_for("acknowledged", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500)); // a few more scans
    let rss = rss_kib(p.child.id());
    assert!(rss < 256 << 10, "owner RSS {rss} KiB for 256 KiB of data");
    let mut buf = vec![0u8; 256 << 10];
    let r = std::fs::File::open(w.replica("sparse")).unwrap();
    r.read_exact_at(&mut buf, 1 << 30).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
}

#[test]
fn damaged_identities_and_bad_paths_get_one_clear_message() {
    let w = World::new();
    let id = w.path("owner-id");
    let cert = id.join("cert.der");
    let der = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, &der[..der.len() / 3]).unwrap();
    let out = Command::new(BIN)
        .args(["id", "--identity", id.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        out.stdout.is_empty(),
        "printed a fingerprint of a damaged identity"
    );
    assert!(err.contains("not a valid pair"), "{err}");
    // Each cause once: the missing file's reason is not repeated.
    let out = Command::new(BIN)
        .args([
            "sync",
            "--region",
            "/nonexistent/r",
            "--peer",
            "127.0.0.1:1",
        ])
        .args(["--identity", w.path("replica-id").to_str().unwrap()])
        .args(["--trust", &w.owner_fp, "--once"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A file where a directory belongs.
    let plain = w.path("plain");
    std::fs::write(&plain, b"").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            plain.to_str().unwrap(),
        ])
        .args(["--identity", w.path("replica-id").to_str().unwrap()])
        .args(["--trust", &w.owner_fp])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn a_region_stays_with_its_owner_and_mounts_follow_the_rules() {
    let w = World::new();
    let other_fp = peer_id(&w.path("other-id"));
    let rule = format!("r.bin={}", w.owner_fp);
    let serve_args = ["--trust", &other_fp, "--allow-mount", &rule];
    let server = w.serve_with(&serve_args);
    let file = w.random_file("r.bin", 1 << 20);
    let mut owner = w.sync(&file, &["--once"]);
    assert!(
        owner.wait(Duration::from_secs(60)).success(),
        "{}",
        owner.output()
    );
    let held = std::fs::read(w.replica("r.bin")).unwrap();
    // Another trusted peer's region of the same name, while the owner is away.
    let intruder = w.path("intruder");
    std::fs::create_dir(&intruder).unwrap();
    let theirs = intruder.join("r.bin");
    random_file(&theirs, 2 << 20);
    let once = ["--once", "--reconnect-for", "0"];
    let sync_as_other = || w.sync_as(&theirs, "other-id", &w.replica_fp, &once);
    let out = fails_with(&mut sync_as_other(), Duration::from_secs(60));
    let e = error_line(&out);
    assert!(e.contains("FORBIDDEN") && e.contains(&other_fp), "{out}");
    assert_eq!(std::fs::read(w.replica("r.bin")).unwrap(), held);
    // Remembered across a restart of the replica.
    drop(server);
    let _server = w.serve_with(&serve_args);
    let out = fails_with(&mut sync_as_other(), Duration::from_secs(60));
    assert!(error_line(&out).contains("FORBIDDEN"), "{out}");
    assert_eq!(std::fs::read(w.replica("r.bin")).unwrap(), held);
    // Mounts: the rule names the owner only.
    let mut m = mount_as(&w, "other-id", "r.bin", &w.path("o.sock"));
    let out = fails_with(&mut m, Duration::from_secs(60));
    let e = error_line(&out);
    assert!(
        e.contains("may not mount") && e.contains(&other_fp),
        "{out}"
    );
    let m = mount(&w, "r.bin", &w.path("m.sock"));
    m.wait_for("mounted lazily", Duration::from_secs(30));
}
