//! A real S3-compatible cluster for the object-store tests and benches: three Garage nodes on
//! loopback with replication factor 3, a bucket and a key made with Garage's own CLI. `test.sh`
//! installs `garage`; the cluster lives in a temporary directory and dies with the value.
//! Self-contained, so that `benches/benches/store.rs` includes it too.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "memsync";

pub struct Garage {
    pub dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    configs: Vec<PathBuf>,
    s3_ports: Vec<u16>,
    pub key_id: String,
    pub secret: String,
}

fn garage(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .map_err(|e| format!("garage is not installed here ({e}); `bash test.sh` installs it"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!(
            "garage {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{text}"))
        .trim()
}

impl Garage {
    /// Starts the cluster and returns once the bucket and key exist. A cluster that does not
    /// come together (a node exits, or does not answer for 30 s: a port picked free was taken
    /// before the node bound it) is stopped and started again on other ports, twice at most.
    pub fn start() -> Garage {
        let mut failed = Vec::new();
        while failed.len() < 3 {
            match Self::try_start() {
                Ok(g) => return g,
                Err(e) => {
                    eprintln!("garage: the cluster did not start ({e}); again on other ports");
                    failed.push(e);
                }
            }
        }
        panic!("garage: the cluster did not start:\n{}", failed.join("\n"));
    }

    fn try_start() -> Result<Garage, String> {
        let dir = tempfile::tempdir().unwrap();
        let secret: [u8; 32] = rand::random();
        let mut g = Garage {
            dir,
            nodes: Vec::new(),
            configs: Vec::new(),
            s3_ports: Vec::new(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..3 {
            let (s3, rpc) = (free_tcp_port(), free_tcp_port());
            let node = g.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node).unwrap();
            let config = node.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{n}/meta\"\ndata_dir = \"{n}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    n = node.display(),
                    secret = hex::encode(secret),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(node.join("log")).unwrap();
            let child = Command::new("garage")
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("garage is not installed here; `bash test.sh` installs it");
            g.nodes.push(Some(child));
            g.configs.push(config);
            g.s3_ports.push(s3);
        }
        let first = g.configs[0].clone();
        let mut ids = Vec::new();
        for c in g.configs.clone() {
            let id = g.retry("node id", || garage(&c, &["node", "id", "-q"]))?;
            ids.push(id.trim().to_owned());
        }
        for id in &ids[1..] {
            g.retry("node connect", || garage(&first, &["node", "connect", id]))?;
        }
        for id in &ids {
            let short = &id[..16];
            g.retry("layout assign", || {
                garage(
                    &first,
                    &["layout", "assign", "-z", "dc1", "-c", "1G", short],
                )
            })?;
        }
        g.retry("layout apply", || {
            garage(&first, &["layout", "apply", "--version", "1"])
        })?;
        g.retry("bucket create", || {
            garage(&first, &["bucket", "create", BUCKET])
        })?;
        let key = g.retry("key create", || {
            garage(&first, &["key", "create", "memsync-test"])
        })?;
        g.key_id = field(&key, "Key ID:").to_owned();
        g.secret = field(&key, "Secret key:").to_owned();
        g.retry("bucket allow", || {
            garage(
                &first,
                &[
                    "bucket",
                    "allow",
                    "--read",
                    "--write",
                    "--owner",
                    BUCKET,
                    "--key",
                    "memsync-test",
                ],
            )
        })?;
        Ok(g)
    }

    /// Retries `f` for up to 30 s (the nodes take a moment to listen, connect and agree), and
    /// gives up at once when a node exited.
    fn retry(
        &mut self,
        what: &str,
        mut f: impl FnMut() -> Result<String, String>,
    ) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = match f() {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = node.as_mut().map(Child::try_wait) {
                    let log = std::fs::read_to_string(self.configs[i].with_file_name("log"));
                    let log = log.unwrap_or_default();
                    return Err(format!("{what}: node {i} exited ({status}): {log}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: {e}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.s3_ports[i])
    }

    /// The environment a `peer` process needs to reach the cluster through node 0.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "garage".into()),
            ("AWS_ENDPOINT", self.endpoint(0)),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A client of the bucket, for tests that look at or spoil objects themselves.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_endpoint(self.endpoint(0))
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .unwrap()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The config file of node `i`, for Garage's CLI.
    pub fn config(&self, i: usize) -> &Path {
        &self.configs[i]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
