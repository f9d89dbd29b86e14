//! The control socket of a running `serve`, `sync`, `migrate` or `mount`, and the HTTP endpoint
//! of `--metrics`. The socket is a Unix stream socket in [`dir`] named `COMMAND-PID.sock`; a
//! client writes one request line and reads one line of JSON: `status` ([`ProcessStatus`]), or
//! `migrate NAME {request}` (a [`MigrateRequest`] for a region this process owns; answered with
//! the report once the replica owns it, or the error). A Unix socket, not a TCP port: only local
//! users the directory's permissions admit can ask, and no address must be chosen. It is removed
//! when the process ends; one left by a killed process is found stale by `peer status`.
//! The metrics endpoint answers `GET /metrics` (any path, in fact) with OpenMetrics text; it is
//! written here rather than with an HTTP framework because it serves one document to GET
//! requests and nothing else.

use super::metrics::{self, RegionStatus};
use crate::roles::migrate::MigrateRequest;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{debug, warn};

/// What a process answers `status` with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessStatus {
    /// Its process ID.
    pub pid: u32,
    /// The subcommand it runs (`serve`, `sync`, …).
    pub command: String,
    /// Its regions.
    pub regions: Vec<RegionStatus>,
}

/// Where control sockets live: `$MEMSYNC_CONTROL_DIR`, else `$XDG_RUNTIME_DIR/memsync`, else
/// `/run/memsync` for root and `/tmp/memsync-UID` for others.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEMSYNC_CONTROL_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("memsync");
    }
    let uid = rustix::process::getuid();
    if uid.is_root() {
        "/run/memsync".into()
    } else {
        format!("/tmp/memsync-{}", uid.as_raw()).into()
    }
}

/// A listening control socket; removed on drop.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    answering: Arc<AtomicUsize>,
}

impl ControlSocket {
    /// Listens at `path`, or at `dir()/COMMAND-PID.sock`, answering for `command`.
    pub fn bind(command: &str, path: Option<PathBuf>) -> io::Result<Self> {
        let path = match path {
            Some(p) => p,
            None => {
                let d = dir();
                if !d.exists() {
                    // Status is this user's business: a directory made here is theirs alone.
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&d)?;
                }
                d.join(format!("{command}-{}.sock", std::process::id()))
            }
        };
        // Only a socket nobody listens on gives way; a live one or any other file stays.
        if path.exists() {
            use std::os::unix::fs::FileTypeExt;
            let socket = std::fs::symlink_metadata(&path)?.file_type().is_socket();
            let refused = std::os::unix::net::UnixStream::connect(&path)
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !(socket && refused) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} exists and is not a stale control socket",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        let command = command.to_owned();
        let answering = Arc::new(AtomicUsize::new(0));
        let busy = answering.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: wait instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let command = command.clone();
                let busy = busy.clone();
                busy.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &command).await {
                        debug!("control socket client: {e}");
                    }
                    busy.fetch_sub(1, Relaxed);
                });
            }
        });
        Ok(ControlSocket {
            path,
            task,
            answering,
        })
    }

    /// Waits (a few seconds at most) until the answers being written are out, e.g. the report
    /// of a migration that ended this process's last region.
    pub async fn finish(self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.answering.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(stream: tokio::net::UnixStream, command: &str) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // One request line (a migrate request's JSON included); anything longer is not ours.
    let mut reader = BufReader::new(r.take(64 * 1024));
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_line(&mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request line"))??;
    let error = |e: String| serde_json::json!({ "error": e }).to_string();
    let line = line.trim();
    let reply = match line.split_once(' ').unwrap_or((line, "")) {
        ("status", "") => serde_json::to_string(&ProcessStatus {
            pid: std::process::id(),
            command: command.to_owned(),
            regions: metrics::snapshot(),
        })
        .map_err(io::Error::other)?,
        ("migrate", rest) => {
            let (name, request) = rest.split_once(' ').unwrap_or((rest, "{}"));
            match serde_json::from_str::<MigrateRequest>(request) {
                Err(e) => error(format!("a migrate request that does not parse: {e}")),
                Ok(req) => match req
                    .migration()
                    .and_then(|m| crate::roles::owner::ask_migration(name, m))
                {
                    Err(e) => error(e),
                    Ok(outcome) => match outcome.await {
                        Ok(Ok(report)) => {
                            serde_json::json!({ "report": report.to_string() }).to_string()
                        }
                        Ok(Err(e)) => error(e),
                        Err(_) => error("the region's driver ended without a report".into()),
                    },
                },
            }
        }
        (other, _) => error(format!("unknown request {other:?}")),
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// What a control socket in the directory answered.
#[derive(Debug)]
pub enum Answer {
    /// A live process.
    Live(ProcessStatus),
    /// Nobody listens: the process that made it is gone (killed; a clean exit removes it).
    Stale(PathBuf),
    /// It did not answer as asked (busy, stopped, another version, no permission).
    Failed(PathBuf, io::Error),
}

/// Asks the control socket at `path` for its status.
pub fn query(path: &Path) -> io::Result<ProcessStatus> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"status\n")?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Asks the process whose control socket is at `path` to migrate its region `name`; returns
/// the report once the replica owns the region, or the process's reason it did not.
pub fn ask_migrate(
    path: &Path,
    name: &str,
    req: &MigrateRequest,
) -> io::Result<Result<String, String>> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    let req = serde_json::to_string(req).map_err(io::Error::other)?;
    writeln!(s, "migrate {name} {req}")?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(match (v["report"].as_str(), v["error"].as_str()) {
        (Some(r), _) => Ok(r.to_owned()),
        (_, Some(e)) => Err(e.to_owned()),
        _ => Err(format!("an answer without report or error: {line}")),
    })
}

/// Asks every control socket in `dir` (or the one socket `dir` names).
pub fn query_all(dir: &Path) -> io::Result<Vec<Answer>> {
    let paths: Vec<PathBuf> = if dir.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        v.sort();
        v
    } else {
        vec![dir.to_owned()]
    };
    Ok(paths
        .into_iter()
        .map(|p| match query(&p) {
            Ok(s) => Answer::Live(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Answer::Stale(p),
            Err(e) => Answer::Failed(p, e),
        })
        .collect())
}

/// Serves the process's metrics on `addr` as OpenMetrics text until the process ends.
pub async fn serve_metrics(addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                // Read the request head (bounded), whatever it asks: one document is served.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                        Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if head.starts_with(b"GET ") {
                    ("200 OK", metrics::encode())
                } else {
                    ("405 Method Not Allowed", String::new())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; \
                     charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = stream.write_all(reply.as_bytes()).await {
                    warn!("metrics client: {e}");
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(local)
}
