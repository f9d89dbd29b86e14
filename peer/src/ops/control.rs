//! The control socket of a running `serve`, `sync`, `migrate` or `mount`, and the HTTP endpoint
//! of `--metrics`. The socket is a Unix stream socket in [`dir`] named `COMMAND-PID.sock`; a
//! client writes one line, `status`, and reads one line of JSON ([`ProcessStatus`]). It is
//! removed when the process ends; one left by a killed process is found stale by `peer status`.
//! The metrics endpoint answers `GET /metrics` (any path, in fact) with OpenMetrics text; it is
//! written here rather than with an HTTP framework because it serves one document to GET
//! requests and nothing else.

use super::metrics::{self, RegionStatus};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
}

impl ControlSocket {
    /// Listens at `path`, or at `dir()/COMMAND-PID.sock`, answering for `command`.
    pub fn bind(command: &str, path: Option<PathBuf>) -> io::Result<Self> {
        let path = match path {
            Some(p) => p,
            None => {
                let d = dir();
                std::fs::create_dir_all(&d)?;
                // Status is this user's business: the directory is theirs alone.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
                d.join(format!("{command}-{}.sock", std::process::id()))
            }
        };
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let command = command.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let command = command.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &command).await {
                        debug!("control socket client: {e}");
                    }
                });
            }
        });
        Ok(ControlSocket { path, task })
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
    // One short request line; anything longer is not a request of ours.
    BufReader::new(r.take(256)).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&ProcessStatus {
            pid: std::process::id(),
            command: command.to_owned(),
            regions: metrics::snapshot(),
        })
        .map_err(io::Error::other)?,
        other => format!(
            "{{\"error\":{}}}",
            serde_json::Value::from(format!("unknown request {other:?}"))
        ),
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
            Err(e) => {
                debug!("{}: {e}", p.display());
                Answer::Stale(p)
            }
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
                continue;
            };
            tokio::spawn(async move {
                // Read the request head (bounded), whatever it asks: one document is served.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
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
