//! The NBD server against real clients (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdfuse) and
//! against hand-made malformed traffic; write-driven replication and lazy mounts end to end.

mod support;

use memsync_peer::detector::Marks;
use memsync_peer::nbd::wire::*;
use memsync_peer::nbd::{FileExport, Listen, NbdServer};
use memsync_peer::region::{Source, SourceFile};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Runs a client tool; panics with its output if it fails.
/// `qemu-img compare` of a raw file with a raw NBD export; panics if they differ.
fn same_image(file: &Path, uri: &str) {
    let file = file.to_str().unwrap();
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", file, uri],
    );
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed for this test ({e}); test.sh installs it"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `peer sync --detector nbd` on a file, with a replica served by another process.
fn nbd_owner(w: &World, file: &Path, extra: &[&str]) -> (Proc, String) {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--detector",
        "nbd",
        "--nbd-listen",
        &listen,
        "--interval",
        "60000",
    ];
    args.extend_from_slice(extra);
    let p = w.sync(file, &args);
    p.wait_for("as NBD export", Duration::from_secs(30));
    p.wait_for("chunks differ", Duration::from_secs(30));
    let name = file.file_name().unwrap().to_str().unwrap();
    (p, format!("nbd://127.0.0.1:{port}/{name}"))
}

#[test]
fn qemu_writes_through_the_export_reach_the_replica() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("disk.img", 8 << 20);
    let (_owner, uri) = nbd_owner(&w, &file, &["--flush-waits-for-replica"]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0xab 4k 8k",
            "-c",
            "write -P 0xcd 1M 1M",
            "-c",
            "write -z 3M 64k",
            "-c",
            "read -P 0xab 4k 8k",
            "-c",
            "read -P 0xcd 1M 1M",
            "-c",
            "read -P 0 3M 64k",
            "-c",
            "flush",
        ],
    );
    // The flush waited for the replica's acknowledgement, so the replica holds the writes now.
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("disk.img")).unwrap()
    );
    same_image(&file, &uri);
    same_image(&w.replica("disk.img"), &uri);
}

#[test]
fn nbdinfo_and_nbdcopy_in_and_out() {
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("vol.img", 4 << 20);
    let (_owner, uri) = nbd_owner(&w, &file, &[]);
    let info = run("nbdinfo", &["--json", &uri]);
    assert!(info.contains("\"export-size\": 4194304"), "{info}");
    assert!(info.contains("\"block_size_preferred\": 65536"), "{info}");
    assert!(info.contains("\"is_read_only\": false"), "{info}");
    // Copy new content in, then out again.
    let incoming = w.random_file("incoming.img", 4 << 20);
    run("nbdcopy", &[incoming.to_str().unwrap(), &uri]);
    run("nbdcopy", &["--flush", incoming.to_str().unwrap(), &uri]);
    let out = w.path("out.img");
    run("nbdcopy", &[&uri, out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&incoming).unwrap()
    );
    wait_identical(&incoming, &w.replica("vol.img"), Duration::from_secs(30));
}

#[test]
fn a_mapped_file_through_nbdfuse_replicates() {
    if !Path::new("/dev/fuse").exists() {
        panic!("/dev/fuse is needed for nbdfuse");
    }
    let w = World::new();
    let _server = w.serve();
    let file = w.random_file("mem.bin", 4 << 20);
    let (_owner, uri) = nbd_owner(&w, &file, &[]);
    let mnt = w.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut fuse = Command::new("nbdfuse")
        .arg(mnt.join("mem.bin"))
        .arg(&uri)
        .spawn()
        .expect("nbdfuse is needed; test.sh installs libnbd-bin and fuse3");
    let target = mnt.join("mem.bin");
    for _ in 0..200 {
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == 4 << 20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = r#"
import mmap, sys
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 0)
for i in range(100):
    off = (i * 40503) % (len(m) - 4096)
    m[off:off + 16] = bytes([i + 1]) * 16
m.flush()
"#;
    let status = Command::new("python3")
        .args(["-c", script, target.to_str().unwrap()])
        .status()
        .unwrap();
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fuse.kill();
    let _ = fuse.wait();
    assert!(status.success());
    // The owner's file took the writes, and the replica follows.
    let owner = std::fs::read(&file).unwrap();
    assert_eq!(&owner[40503..40503 + 16], &[2u8; 16]);
    wait_identical(&file, &w.replica("mem.bin"), Duration::from_secs(30));
}

#[test]
fn a_lazy_mount_answers_reads_before_it_holds_the_data() {
    let w = World::new();
    let server = w.serve();
    let file = w.random_file("big.img", 192 << 20);
    // A known pattern at the very end: the last chunk the background pull would send.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(-(64 << 10))).unwrap();
        f.write_all(&vec![0x5a; 64 << 10]).unwrap();
    }
    let mut owner = w.sync(&file, &["--once"]);
    assert!(
        owner.wait(Duration::from_secs(300)).success(),
        "{}",
        owner.output()
    );
    let sock = w.path("mount.sock");
    let listen = format!("unix:{}", sock.display());
    let mount = Proc::start(&[
        "mount",
        "--peer",
        &w.addr(),
        "--name",
        "big.img",
        "--nbd-listen",
        &listen,
        "--identity",
        w.path("owner-id").to_str().unwrap(),
        "--trust",
        &w.replica_fp,
    ]);
    mount.wait_for("mounted lazily", Duration::from_secs(30));
    let uri = format!("nbd+unix:///big.img?socket={}", sock.display());
    let off = format!("{}", (192u64 << 20) - (64 << 10));
    run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            &uri,
            "-c",
            &format!("read -P 0x5a {off} 64k"),
        ],
    );
    let early = mount.all_with("every chunk is here").is_empty();
    same_image(&file, &uri);
    // Writes to a mount are refused: this peer does not own the region.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", "write -P 1 0 4k"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    if !early {
        // Correctness still held; only the race this test hopes to catch was lost (a very fast
        // pull). protocol/tests/converge.rs asserts the overtaking deterministically.
        eprintln!("note: the background pull finished before the first read");
    }
    drop(server);
}

// ---- malformed traffic against an in-process server ----

struct Local {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    addr: String,
    original: Vec<u8>,
    _rt: tokio::runtime::Runtime,
}

fn local_server() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.img");
    random_file(&file, 1 << 20);
    let original = std::fs::read(&file).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let geom = SourceFile::open(&file, 16).unwrap().geometry();
    let marks = Marks::new(geom);
    let export = Arc::new(FileExport::open(&file, marks, false).unwrap());
    let server = rt
        .block_on(NbdServer::bind(&Listen::Tcp("127.0.0.1:0".into())))
        .unwrap();
    let addr = server.uri_base.trim_start_matches("nbd://").to_owned();
    rt.spawn(server.serve("x".into(), export));
    Local {
        _dir: dir,
        file,
        addr,
        original,
        _rt: rt,
    }
}

/// A raw client that has done the fixed-newstyle greeting.
fn greet(addr: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 18];
    s.read_exact(&mut b).unwrap();
    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), NBDMAGIC);
    assert_eq!(u64::from_be_bytes(b[8..16].try_into().unwrap()), IHAVEOPT);
    s.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())
        .unwrap();
    s
}

fn option(s: &mut std::net::TcpStream, opt: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (option, type, data).
fn option_reply(s: &mut std::net::TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        d,
    )
}

/// Greets and enters transmission with EXPORT_NAME "x"; returns the stream.
fn transmission(addr: &str) -> std::net::TcpStream {
    let mut s = greet(addr);
    option(&mut s, OPT_EXPORT_NAME, b"x");
    let mut b = [0u8; 10];
    s.read_exact(&mut b).unwrap();
    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), 1 << 20);
    s
}

fn request(s: &mut std::net::TcpStream, command: u16, offset: u64, len: u32) {
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&command.to_be_bytes());
    m.extend_from_slice(&7u64.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    s.write_all(&m).unwrap();
}

fn reply_error(s: &mut std::net::TcpStream) -> u32 {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        u32::from_be_bytes(r[..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    assert_eq!(u64::from_be_bytes(r[8..].try_into().unwrap()), 7);
    u32::from_be_bytes(r[4..8].try_into().unwrap())
}

#[test]
fn malformed_handshakes_get_the_specified_answer() {
    let l = local_server();
    // Unknown option: ERR_UNSUP, and negotiation goes on.
    let mut s = greet(&l.addr);
    option(&mut s, 0x4242, b"");
    assert_eq!(option_reply(&mut s).1, REP_ERR_UNSUP);
    // GO for an unknown export: ERR_UNKNOWN.
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"nop");
    go.extend_from_slice(&0u16.to_be_bytes());
    option(&mut s, OPT_GO, &go);
    assert_eq!(option_reply(&mut s).1, REP_ERR_UNKNOWN);
    // A malformed GO (truncated): ERR_INVALID.
    option(&mut s, OPT_GO, &[0, 0, 0, 9, b'x']);
    assert_eq!(option_reply(&mut s).1, REP_ERR_INVALID);
    // LIST names our export, then ACK.
    option(&mut s, OPT_LIST, b"");
    let (_, t, d) = option_reply(&mut s);
    assert_eq!((t, &d[4..]), (REP_SERVER, &b"x"[..]));
    assert_eq!(option_reply(&mut s).1, REP_ACK);
    // An oversized option is skipped and refused, without reading it into memory.
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_INFO.to_be_bytes());
    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    s.write_all(&m).unwrap();
    s.write_all(&vec![0u8; 1 << 20]).unwrap();
    assert_eq!(option_reply(&mut s).1, REP_ERR_TOO_BIG);
    // ABORT is acknowledged and closes.
    option(&mut s, OPT_ABORT, b"");
    assert_eq!(option_reply(&mut s).1, REP_ACK);
    assert!(closed(&mut s));
    // Bad option magic: disconnect.
    let mut s = greet(&l.addr);
    s.write_all(&[0u8; 16]).unwrap();
    assert!(closed(&mut s));
    // Unknown client flags: disconnect.
    let mut s = std::net::TcpStream::connect(&l.addr).unwrap();
    let mut b = [0u8; 18];
    s.read_exact(&mut b).unwrap();
    s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // EXPORT_NAME of an unknown export: disconnect (the only refusal proto.md allows).
    let mut s = greet(&l.addr);
    option(&mut s, OPT_EXPORT_NAME, b"nope");
    assert!(closed(&mut s));
    // The server still serves well-behaved clients, and nothing changed.
    let mut s = transmission(&l.addr);
    request(&mut s, CMD_READ, 0, 4096);
    assert_eq!(reply_error(&mut s), 0);
    assert_eq!(std::fs::read(&l.file).unwrap(), l.original);
}

#[test]
fn malformed_requests_get_the_specified_errors_and_change_nothing() {
    let l = local_server();
    let mut s = transmission(&l.addr);
    // Read past the end: EINVAL. Write past the end: ENOSPC (its payload is consumed).
    request(&mut s, CMD_READ, (1 << 20) - 100, 4096);
    assert_eq!(reply_error(&mut s), EINVAL);
    request(&mut s, CMD_WRITE, (1 << 20) - 100, 200);
    s.write_all(&[0xee; 200]).unwrap();
    assert_eq!(reply_error(&mut s), ENOSPC);
    // Offsets that overflow u64 when the length is added.
    request(&mut s, CMD_WRITE_ZEROES, u64::MAX - 10, 4096);
    assert_eq!(reply_error(&mut s), ENOSPC);
    // Oversized read and write: EINVAL; the write's payload is skipped, not buffered.
    request(&mut s, CMD_READ, 0, MAX_REQUEST_LEN + 1);
    assert_eq!(reply_error(&mut s), EINVAL);
    request(&mut s, CMD_WRITE, 0, MAX_REQUEST_LEN + 1);
    s.write_all(&vec![0xee; MAX_REQUEST_LEN as usize + 1])
        .unwrap();
    assert_eq!(reply_error(&mut s), EINVAL);
    // Unknown command: EINVAL.
    request(&mut s, 77, 0, 0);
    assert_eq!(reply_error(&mut s), EINVAL);
    // The stream is still in step: a normal read works.
    request(&mut s, CMD_READ, 4096, 16);
    assert_eq!(reply_error(&mut s), 0);
    let mut d = [0u8; 16];
    s.read_exact(&mut d).unwrap();
    assert_eq!(&d, &l.original[4096..4112]);
    // Bad request magic: disconnect.
    s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut s));
    // A truncated request, then a client that disconnects in the middle of a write.
    let mut s = transmission(&l.addr);
    s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(s);
    let mut s = transmission(&l.addr);
    request(&mut s, CMD_WRITE, 0, 65536);
    s.write_all(&[0xee; 1000]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    // Nothing outside (or inside) the export changed, and other clients are served.
    assert_eq!(std::fs::read(&l.file).unwrap(), l.original);
    let mut s = transmission(&l.addr);
    request(&mut s, CMD_FLUSH, 0, 0);
    assert_eq!(reply_error(&mut s), 0);
}
