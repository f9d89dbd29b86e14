//! Test support shared by the end-to-end suites: real `peer` processes with collected logs, a
//! world of two identities and a replica directory, and file helpers.
#![allow(dead_code)]

pub mod garage;

use rand::RngCore;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_peer");

/// A running `peer` process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Proc {
        Self::spawn(Command::new(BIN).args(args))
    }

    /// Runs `cmd` with logs on, stdout discarded and stderr collected.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("MEMSYNC_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = lines.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  [{pid}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Writes a line to the process's stdin (spawned with a piped stdin).
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for a stderr line containing `pat`.
    pub fn wait_for(&self, pat: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(pat)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {pat:?} within {timeout:?}; got:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn all_with(&self, pat: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .cloned()
            .collect()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for exit (killing the process at the deadline) and returns its status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let stderr drain
                return s;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!("peer did not exit within {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary world: two identities, a replica directory and a free UDP port for the server.
pub struct World {
    pub dir: tempfile::TempDir,
    pub owner_fp: String,
    pub replica_fp: String,
    pub port: u16,
}

pub fn peer_id(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["id", "--identity", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl World {
    pub fn new() -> World {
        Self::new_in(&std::env::temp_dir())
    }

    /// A world whose files live under `base` (e.g. /dev/shm for memory-backed files).
    pub fn new_in(base: &Path) -> World {
        let dir = tempfile::tempdir_in(base).unwrap();
        let owner_fp = peer_id(&dir.path().join("owner-id"));
        let replica_fp = peer_id(&dir.path().join("replica-id"));
        let port = free_udp_port();
        std::fs::create_dir_all(dir.path().join("replicas")).unwrap();
        World {
            dir,
            owner_fp,
            replica_fp,
            port,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn serve(&self) -> Proc {
        self.serve_with(&[])
    }

    /// `peer serve` with `extra` arguments.
    pub fn serve_with(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["--trust", &self.owner_fp];
        args.extend_from_slice(extra);
        self.serve_as(&self.addr(), "replicas", "replica-id", &args)
    }

    /// `peer serve` on `addr` into directory `dir` of the world, with the identity in `id` and
    /// `extra` arguments (its `--trust` among them).
    pub fn serve_as(&self, addr: &str, dir: &str, id: &str, extra: &[&str]) -> Proc {
        let (dir, id) = (self.path(dir), self.path(id));
        let mut args = vec!["serve", "--listen", addr, "--dir", dir.to_str().unwrap()];
        args.extend(["--identity", id.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let p = Proc::start(&args);
        p.wait_for("serving replicas", Duration::from_secs(20));
        p
    }

    /// `peer sync` of `file` with the identity in directory `id` of the world, trusting `trust`.
    pub fn sync_as(&self, file: &Path, id: &str, trust: &str, extra: &[&str]) -> Proc {
        self.sync_to(&self.addr(), file, id, trust, extra)
    }

    /// [`World::sync_as`] to the peer at `addr`.
    pub fn sync_to(&self, addr: &str, file: &Path, id: &str, trust: &str, extra: &[&str]) -> Proc {
        let id = self.path(id);
        let mut args = vec!["sync", "--region", file.to_str().unwrap(), "--peer", addr];
        args.extend(["--identity", id.to_str().unwrap(), "--trust", trust]);
        args.extend_from_slice(extra);
        Proc::start(&args)
    }

    pub fn sync(&self, file: &Path, extra: &[&str]) -> Proc {
        let mut args = vec![
            "sync",
            "--region",
            file.to_str().unwrap(),
            "--peer",
            "PEER",
            "--identity",
            "ID",
            "--trust",
            &self.replica_fp,
        ];
        let peer = self.addr();
        let id = self.path("owner-id");
        args[4] = &peer;
        args[6] = id.to_str().unwrap();
        args.extend_from_slice(extra);
        Proc::start(&args)
    }

    /// A client endpoint with the owner identity, trusting the server.
    pub fn owner_endpoint(&self) -> memsync_peer::net::transport::PeerEndpoint {
        use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
        let id = Identity::load_or_create(&self.path("owner-id")).unwrap();
        let trust = TrustSet::new([Fingerprint::parse(&self.replica_fp).unwrap()]);
        memsync_peer::net::transport::PeerEndpoint::client_for(
            self.addr().parse().unwrap(),
            &id,
            trust,
        )
        .unwrap()
    }

    /// The `--peer/--identity/--trust` arguments of an owner process.
    pub fn owner_args(&self) -> Vec<String> {
        vec![
            "--peer".into(),
            self.addr(),
            "--identity".into(),
            self.path("owner-id").to_str().unwrap().into(),
            "--trust".into(),
            self.replica_fp.clone(),
        ]
    }

    /// A file `name` of the world holding `size` random bytes.
    pub fn random_file(&self, name: &str, size: usize) -> PathBuf {
        let path = self.path(name);
        random_file(&path, size);
        path
    }

    pub fn replica(&self, name: &str) -> PathBuf {
        self.path("replicas").join(name)
    }
}

pub fn random_file(path: &Path, size: usize) {
    let mut v = vec![0u8; size];
    rand::rng().fill_bytes(&mut v);
    std::fs::write(path, v).unwrap();
}

/// Waits until `b` has the same bytes as `a`.
pub fn wait_identical(a: &Path, b: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (x, y) = (
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap_or_default(),
        );
        if x == y {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never matched {}",
            b.display(),
            a.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `script` with python3; its stdout. Fails the test with python's stderr if it fails.
pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A UDP port free on loopback a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP port free on loopback a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True once the server closed the connection: end of stream or a reset, not our own read
/// timeout (a server that never closes fails this, it does not pass it by waiting).
pub fn closed(s: &mut std::net::TcpStream) -> bool {
    use std::io::{ErrorKind, Read};
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
        Ok(_) => false,
    }
}

/// A UDP relay between QUIC peers on loopback that can delay and cut the link: datagrams from the
/// one client to `target` and back are forwarded after each direction's delay, or dropped while
/// the link is cut (a cable pulled, not a reset: neither side is told). A datagram in flight when
/// the cut starts is lost too.
pub struct Relay {
    pub addr: String,
    state: Arc<RelayState>,
}

#[derive(Default)]
struct RelayState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    /// One-way delay in microseconds: [client → target, target → client].
    delay_us: [std::sync::atomic::AtomicU64; 2],
}

impl Relay {
    pub fn new(target: &str) -> Relay {
        use std::net::UdpSocket;
        use std::sync::atomic::Ordering::Relaxed;
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(target).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap().to_string();
        let state = Arc::new(RelayState::default());
        let client = Arc::new(Mutex::new(None));
        let (front, back) = (Arc::new(front), Arc::new(back));
        for dir in 0..2 {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let (front2, back2, client2, st) =
                (front.clone(), back.clone(), client.clone(), state.clone());
            // Receiver: stamps each datagram with its release time.
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.stop.load(Relaxed) {
                    let got = if dir == 0 {
                        front2.recv_from(&mut buf).map(|(n, from)| {
                            *client2.lock().unwrap() = Some(from);
                            n
                        })
                    } else {
                        back2.recv(&mut buf)
                    };
                    if let Ok(n) = got {
                        let delay = Duration::from_micros(st.delay_us[dir].load(Relaxed));
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
            let st = state.clone();
            let (front, back, client) = (front.clone(), back.clone(), client.clone());
            // Sender: forwards at the release time, unless the link is cut then.
            std::thread::spawn(move || {
                while let Ok((at, data)) = rx.recv() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    if st.cut.load(Relaxed) {
                        continue;
                    }
                    if dir == 0 {
                        let _ = back.send(&data);
                    } else if let Some(to) = *client.lock().unwrap() {
                        let _ = front.send_to(&data, to);
                    }
                }
            });
        }
        Relay { addr, state }
    }

    pub fn cut(&self, cut: bool) {
        self.state
            .cut
            .store(cut, std::sync::atomic::Ordering::Relaxed);
    }

    /// Delays datagrams towards the target (`to_target`) or back towards the client by `d`.
    pub fn delay(&self, to_target: bool, d: Duration) {
        let dir = if to_target { 0 } else { 1 };
        self.state.delay_us[dir].store(d.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until `path` exists.
pub fn wait_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
