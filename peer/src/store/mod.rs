//! Regions in an S3-compatible object store (spec/STORAGE.md): content-addressed chunk objects
//! shared by every region under one root, a manifest per generation, and epoch claims that fence
//! a second writer. [`RegionStore`] is the one door to the store (through the `object_store`
//! crate); [`upload`] keeps a region's latest generation there; mounts read it back
//! ([`crate::roles::mount::RemoteRegion::from_store`]). Every object is checked on read: a wrong
//! or missing one is an error, never wrong bytes.

pub mod cache;
pub mod format;
mod profile;
pub mod upload;

use bytes::Bytes;
use cache::ChunkCache;
use format::{ChunkName, Keys, Manifest, Writer, ZERO};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or the store's configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// The store answered with an error.
    #[error("{what}: {reason}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's answer, in a line.
        reason: String,
    },
    /// Another writer owns the region (or took it over from this one).
    #[error("{0}")]
    Owned(String),
    /// An object is not what its name or its manifest says.
    #[error("{0}")]
    Corrupt(String),
    /// Nothing to read.
    #[error("{0}")]
    NotFound(String),
}

/// `s3://BUCKET/[ROOT/]NAME[@GENERATION]`: region NAME under ROOT (chunks are shared by every
/// region of a root), optionally one generation of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The root inside it, without slashes at either end (may be empty).
    pub root: String,
    /// The region's name.
    pub name: String,
    /// A generation, for readers.
    pub generation: Option<u64>,
}

impl StoreUrl {
    /// Parses an `s3://` URL.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let bad = |why: &str| StoreError::Config(format!("{url}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3://BUCKET/[ROOT/]NAME URL"))?;
        let (rest, generation) = match rest.rsplit_once('@') {
            Some((r, g)) => (
                r,
                Some(
                    g.parse()
                        .map_err(|_| bad("the part after @ is not a generation number"))?,
                ),
            ),
            None => (rest, None),
        };
        let (bucket, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no region name after the bucket"))?;
        let path = path.trim_end_matches('/');
        let (root, name) = path.rsplit_once('/').unwrap_or(("", path));
        if bucket.is_empty() || name.is_empty() {
            return Err(bad("no bucket or no region name"));
        }
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("empty, `.` or `..` path segments"));
        }
        memsync_protocol::wire::check_name(name).map_err(|e| bad(&e.to_string()))?;
        Ok(StoreUrl {
            bucket: bucket.to_owned(),
            root: root.to_owned(),
            name: name.to_owned(),
            generation,
        })
    }

    /// Parses `s3://BUCKET[/ROOT]`: a root of regions (its name is empty), such as the one
    /// `peer serve --to` keeps every replica under.
    pub fn parse_root(url: &str) -> Result<StoreUrl, StoreError> {
        if url.contains('@') {
            return Err(StoreError::Config(format!(
                "{url}: a root of regions has no @GENERATION"
            )));
        }
        let mut root = StoreUrl::parse(&format!("{}/root", url.trim_end_matches('/')))?;
        root.name.clear();
        Ok(root)
    }

    /// The URL without a generation.
    pub fn region(&self) -> String {
        match self.root.is_empty() {
            true => format!("s3://{}/{}", self.bucket, self.name),
            false => format!("s3://{}/{}/{}", self.bucket, self.root, self.name),
        }
    }
}

/// One generation as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The epoch it was written at.
    pub epoch: u64,
    /// Its number.
    pub generation: u64,
    /// Its manifest's key.
    pub key: String,
    /// When the store received it.
    pub stored_at: chrono::DateTime<chrono::Utc>,
}

/// An epoch claimed by this process: it may write manifests at it until another claim fences
/// it.
#[derive(Clone, Copy, Debug)]
pub struct Claim {
    /// The epoch.
    pub epoch: u64,
    /// This process.
    pub writer: Writer,
}

/// A region in an object store.
pub struct RegionStore {
    store: Arc<dyn ObjectStore>,
    keys: Keys,
    url: StoreUrl,
    /// Where chunks read are kept, and looked for before a GET.
    cache: Option<Arc<ChunkCache>>,
}

/// One line of what the store said, for messages: the S3 error's code and message where the
/// store sent one (S3 API, "Error responses"). `object_store` keeps the HTTP status private, so
/// it is read from its message ("… status code: 403 Forbidden: <Error>…").
fn reason(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let text = first_line(e);
    let answer = text.split_once("status code: ").map(|(_, rest)| {
        let status = rest.get(..3).and_then(|s| s.parse::<u16>().ok());
        (status, s3_error(rest))
    });
    let (status, said) = match answer {
        Some((s, said)) => (s, said),
        None => (None, text),
    };
    match (e, status) {
        (E::PermissionDenied { .. } | E::Unauthenticated { .. }, _) | (_, Some(401 | 403)) => {
            format!("the store refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): {said}")
        }
        (E::NotFound { .. }, _) | (_, Some(404)) => {
            format!("not found (is the bucket there?): {said}")
        }
        _ => said,
    }
}

/// `Code: Message` of an S3 error body, or its first line.
fn s3_error(body: &str) -> String {
    let tag = |t: &str| {
        let start = body.find(&format!("<{t}>"))? + t.len() + 2;
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(&body[start..end])
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => body
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
    }
}

fn first_line(e: &dyn std::error::Error) -> String {
    // object_store's messages nest the HTTP response; its first line says what happened.
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let t = inner.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        source = inner.source();
    }
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(400)
        .collect()
}

impl RegionStore {
    /// The region `url` names, with credentials, region and endpoint as the AWS tools find them:
    /// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, web identity and container credentials),
    /// else the profile `AWS_PROFILE` (or `default`) of the shared credentials and config files.
    pub fn open(url: &StoreUrl) -> Result<RegionStore, StoreError> {
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !env("AWS_ACCESS_KEY_ID") {
            let profile = profile::Profile::load();
            if let Some((id, secret, token)) = profile.credentials() {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = token {
                    b = b.with_token(t);
                }
            } else if !(env("AWS_WEB_IDENTITY_TOKEN_FILE")
                || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                || env("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
            {
                return Err(StoreError::Config(format!(
                    "{}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                     give profile {:?} keys in {}",
                    url.region(),
                    profile.name,
                    profile.credentials_file.display()
                )));
            }
            if !env("AWS_REGION") && !env("AWS_DEFAULT_REGION") {
                if let Some(r) = profile.get("region") {
                    b = b.with_region(r);
                }
            }
            if !env("AWS_ENDPOINT") && !env("AWS_ENDPOINT_URL") {
                if let Some(e) = profile.get("endpoint_url") {
                    b = b.with_endpoint(e);
                }
            }
        }
        let store = b
            .build()
            .map_err(|e| StoreError::Config(format!("{}: {}", url.region(), first_line(&e))))?;
        Ok(RegionStore::with_store(Arc::new(store), url))
    }

    /// The region `url` names in `store` (any `object_store` backend).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &StoreUrl) -> RegionStore {
        RegionStore {
            store,
            keys: Keys::new(&url.root, &url.name),
            url: url.clone(),
            cache: None,
        }
    }

    /// Reads chunks through `cache`: a chunk found there (and checked) is not fetched, and one
    /// fetched is kept there.
    pub fn with_cache(mut self, cache: Arc<ChunkCache>) -> RegionStore {
        self.cache = Some(cache);
        self
    }

    /// Region `name` under the same root, through the same client.
    pub fn sibling(&self, name: &str) -> Result<RegionStore, StoreError> {
        memsync_protocol::wire::check_name(name)
            .map_err(|e| StoreError::Config(format!("{}: {e}", self.url.region())))?;
        let url = StoreUrl {
            name: name.to_owned(),
            generation: None,
            ..self.url.clone()
        };
        Ok(RegionStore::with_store(self.store.clone(), &url))
    }

    /// Fails unless the bucket exists and the credentials may list it (one request): a clear
    /// error before anything depends on the store.
    pub async fn check_access(&self) -> Result<(), StoreError> {
        let prefix = self.keys.regions();
        match self
            .store
            .list(Some(&Path::from(prefix.as_str())))
            .next()
            .await
        {
            Some(Err(e)) => Err(self.failed(format!("listing {prefix}"))(e)),
            _ => Ok(()),
        }
    }

    /// The local chunk cache, if reads go through one.
    pub fn cache(&self) -> Option<&Arc<ChunkCache>> {
        self.cache.as_ref()
    }

    /// The region's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The layout's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn failed(&self, what: impl Into<String>) -> impl FnOnce(object_store::Error) -> StoreError {
        let what = format!("{}: {}", self.url.region(), what.into());
        move |e| StoreError::Store {
            what,
            reason: reason(&e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        self.store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(self.failed(format!("listing {prefix}")))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let what = format!("reading {key}");
        let r = self.store.get(&Path::from(key)).await;
        match r {
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(format!(
                "{}: {key} is missing",
                self.url.region()
            ))),
            r => r
                .map_err(self.failed(what.clone()))?
                .bytes()
                .await
                .map_err(self.failed(what)),
        }
    }

    /// The region's claims by epoch, with when each was stored: one listing, no bodies.
    async fn claims(&self) -> Result<BTreeMap<u64, chrono::DateTime<chrono::Utc>>, StoreError> {
        Ok(self
            .list(&self.keys.claims())
            .await?
            .into_iter()
            .filter_map(|m| Some((self.keys.parse_claim(m.location.as_ref())?, m.last_modified)))
            .collect())
    }

    /// Who holds the claim of `epoch`.
    async fn holder(&self, epoch: u64) -> Result<Writer, StoreError> {
        let key = self.keys.claim(epoch);
        let body = self.get(&key).await?;
        Writer::parse_claim(&body).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
    }

    /// The newest claim and its holder.
    async fn newest_claim(&self) -> Result<Option<(u64, Writer)>, StoreError> {
        match self.claims().await?.last_key_value() {
            Some((&e, _)) => Ok(Some((e, self.holder(e).await?))),
            None => Ok(None),
        }
    }

    /// Claims the next epoch for `me`. A region whose last claim is another peer's is refused
    /// unless `take_over`; one of this peer's (a restart) is taken over, which fences any
    /// process of it still writing.
    pub async fn claim(&self, me: Writer, take_over: bool) -> Result<Claim, StoreError> {
        let epoch = match self.newest_claim().await? {
            None => 1,
            Some((e, w)) if w.fingerprint == me.fingerprint || take_over => e + 1,
            Some((e, w)) => {
                return Err(StoreError::Owned(format!(
                    "{} is owned by peer {} (epoch {e}); run with --take-over once that owner \
                     is gone",
                    self.url.region(),
                    hex::encode(w.fingerprint),
                )))
            }
        };
        let key = self.keys.claim(epoch);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = self
            .store
            .put_opts(&Path::from(key.as_str()), me.claim_body().into(), opts)
            .await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(StoreError::Owned(format!(
                    "{}: another writer claimed epoch {epoch} at the same time",
                    self.url.region()
                )))
            }
            // Stores without conditional writes: the read-back below decides.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store
                    .put(&Path::from(key.as_str()), me.claim_body().into())
                    .await
                    .map_err(self.failed(format!("writing {key}")))?;
            }
            Err(e) => return Err(self.failed(format!("writing {key}"))(e)),
        }
        let claim = Claim { epoch, writer: me };
        self.still_owned(&claim).await?;
        Ok(claim)
    }

    /// Fails unless `claim` is still the region's newest and still this process's: a store that
    /// ignores conditional writes lets a racing claim replace it, and a later epoch fences it.
    pub async fn still_owned(&self, claim: &Claim) -> Result<(), StoreError> {
        match self.newest_claim().await? {
            Some((e, w)) if e == claim.epoch && w == claim.writer => Ok(()),
            Some((e, w)) => Err(StoreError::Owned(format!(
                "{} was taken over: epoch {e} is held by peer {} (this writer held epoch {}); \
                 it stops writing",
                self.url.region(),
                hex::encode(w.fingerprint),
                claim.epoch
            ))),
            None => Err(StoreError::Owned(format!(
                "{}: the claim of epoch {} is gone",
                self.url.region(),
                claim.epoch
            ))),
        }
    }

    /// Stores a chunk's bytes under its name (a PUT of the same name writes the same bytes).
    pub async fn put_chunk(&self, name: &ChunkName, data: Bytes) -> Result<(), StoreError> {
        let key = self.keys.chunk(name);
        self.store
            .put(&Path::from(key.as_str()), PutPayload::from_bytes(data))
            .await
            .map_err(self.failed(format!("uploading {key}")))?;
        Ok(())
    }

    /// Publishes `manifest` as the region's newest generation: a PUT under its writer's key, once
    /// [`RegionStore::still_owned`] has passed for its claim (spec/STORAGE.md §6: the check may
    /// run while the generation's chunks upload).
    pub(crate) async fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = self.manifest_key(manifest.epoch, manifest.generation, &manifest.writer);
        self.store
            .put(&Path::from(key.as_str()), manifest.encode().into())
            .await
            .map_err(self.failed(format!("writing {key}")))?;
        Ok(())
    }

    fn manifest_key(&self, epoch: u64, generation: u64, w: &Writer) -> String {
        format!(
            "{}-{}",
            self.keys.manifest(epoch, generation),
            hex::encode(w.nonce)
        )
    }

    /// The region's readable generations, oldest first: those whose writer held their epoch's
    /// claim, and, of an epoch that a later one superseded, only those stored before the later
    /// claim (a fenced writer's last manifests are never read).
    pub async fn generations(&self) -> Result<Vec<Generation>, StoreError> {
        let claims = self.claims().await?;
        // Each epoch's holder, read once for the manifests of that epoch.
        let mut holders: std::collections::HashMap<u64, Writer> = Default::default();
        let mut out = Vec::new();
        for meta in self.list(&self.keys.manifests()).await? {
            let key = meta.location.as_ref();
            let Some(tail) = key.strip_prefix(&self.keys.manifests()) else {
                continue;
            };
            let Some((eg, nonce)) = tail.rsplit_once('-') else {
                continue;
            };
            let Some((epoch, generation)) = format::parse_manifest_tail(eg) else {
                continue;
            };
            if !claims.contains_key(&epoch) {
                continue;
            }
            let w = match holders.get(&epoch) {
                Some(w) => *w,
                None => *holders.entry(epoch).or_insert(self.holder(epoch).await?),
            };
            if hex::encode(w.nonce) != nonce {
                continue;
            }
            let superseded = claims.range(epoch + 1..).next().map(|(_, at)| *at);
            if superseded.is_some_and(|at| meta.last_modified > at) {
                continue;
            }
            out.push(Generation {
                epoch,
                generation,
                key: key.to_owned(),
                stored_at: meta.last_modified,
            });
        }
        out.sort_by_key(|g| (g.epoch, g.generation));
        Ok(out)
    }

    /// The highest generation number of any manifest of the region, readable or not (a writer
    /// numbers its first generation after it, so numbers are never reused).
    pub async fn highest_generation(&self) -> Result<u64, StoreError> {
        let prefix = self.keys.manifests();
        Ok(self
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|m| {
                let tail = m.location.as_ref().strip_prefix(&prefix)?;
                format::parse_manifest_tail(tail.rsplit_once('-')?.0)
            })
            .map(|(_, g)| g)
            .max()
            .unwrap_or(0))
    }

    /// The manifest of `generation` (the newest when `None`), checked whole.
    pub async fn manifest(&self, generation: Option<u64>) -> Result<Manifest, StoreError> {
        let gens = self.generations().await?;
        let g = match generation {
            None => gens.last(),
            Some(n) => gens.iter().rev().find(|g| g.generation == n),
        };
        let Some(g) = g else {
            return Err(StoreError::NotFound(match generation {
                None => format!("{} has no generation yet", self.url.region()),
                Some(n) => format!("{} has no generation {n}", self.url.region()),
            }));
        };
        let body = self.get(&g.key).await?;
        let m =
            Manifest::decode(&body).map_err(|e| StoreError::Corrupt(format!("{}: {e}", g.key)))?;
        if m.name != self.url.name || m.epoch != g.epoch || m.generation != g.generation {
            return Err(StoreError::Corrupt(format!(
                "{}: it describes {} generation {} at epoch {}",
                g.key, m.name, m.generation, m.epoch
            )));
        }
        Ok(m)
    }

    /// Chunk `index` of `manifest`: its object's bytes, checked against its name and length.
    pub async fn chunk(
        &self,
        manifest: &Manifest,
        index: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let name = &manifest.chunks[index as usize];
        if *name == ZERO {
            return Ok(None);
        }
        let len = manifest.geometry.chunk_len(index);
        if let Some(cache) = &self.cache {
            let (c, n) = (cache.clone(), *name);
            if let Ok(Some(d)) = tokio::task::spawn_blocking(move || c.get(&n, len)).await {
                return Ok(Some(Bytes::from(d)));
            }
        }
        let key = self.keys.chunk(name);
        let data = self.get(&key).await.map_err(|e| match e {
            StoreError::NotFound(m) => StoreError::Corrupt(format!(
                "chunk {index} of generation {}: {m}",
                manifest.generation
            )),
            e => e,
        })?;
        if data.len() != len || format::chunk_name(&data) != *name {
            return Err(StoreError::Corrupt(format!(
                "{}: chunk {index} of generation {}: {key} does not hold the bytes it names \
                 ({} bytes read); refusing to serve it",
                self.url.region(),
                manifest.generation,
                data.len()
            )));
        }
        if let Some(cache) = &self.cache {
            let (c, n, d) = (cache.clone(), *name, data.clone());
            // Kept before it is served: a mount that ends once its reads did leaves every chunk
            // it read in the cache (a local write, small beside the GET).
            let _ = tokio::task::spawn_blocking(move || c.put(&n, &d)).await;
        }
        Ok(Some(data))
    }

    /// Deletes every generation of the region but the newest `keep`, then every chunk object
    /// under the root that no remaining manifest of any region names. Objects younger than
    /// `grace` are kept: a writer uploads a generation's chunks before its manifest, and
    /// re-uploads (so renews) every chunk its last manifest did not name.
    pub async fn prune(
        &self,
        keep: usize,
        grace: std::time::Duration,
    ) -> Result<Pruned, StoreError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(grace)
                .map_err(|_| StoreError::Config("--grace is too long".into()))?;
        // Chunk ages first: an object renewed after this listing is kept by the check below.
        let chunks = self.list(&self.keys.chunks()).await?;
        let gens = self.generations().await?;
        let kept: HashSet<&str> = gens
            .iter()
            .rev()
            .take(keep)
            .map(|g| g.key.as_str())
            .collect();
        let mut out = Pruned::default();
        for meta in self.list(&self.keys.manifests()).await? {
            let key = meta.location.as_ref();
            let readable = gens.iter().any(|g| g.key == key);
            if kept.contains(key) || (!readable && meta.last_modified > cutoff) {
                out.manifests_kept += 1;
                continue;
            }
            self.delete(key).await?;
            out.manifests_deleted += 1;
        }
        // Claims of epochs older than every manifest left are read no more (the readability of a
        // manifest looks only at claims of its own epoch and later ones); the newest stays.
        let left = self.list(&self.keys.manifests()).await?;
        let oldest = left
            .iter()
            .filter_map(|m| {
                let tail = m.location.as_ref().strip_prefix(&self.keys.manifests())?;
                format::parse_manifest_tail(tail.rsplit_once('-')?.0)
            })
            .map(|(e, _)| e)
            .min();
        let claims = self.claims().await?;
        let newest = claims.keys().next_back().copied();
        for &e in claims.keys() {
            if oldest.is_some_and(|o| e < o) && Some(e) != newest {
                self.delete(&self.keys.claim(e)).await?;
            }
        }
        // Every manifest left under the root, of every region, names what must stay.
        let mut named: HashSet<ChunkName> = HashSet::new();
        for meta in self.list(&self.keys.regions()).await? {
            let key = meta.location.as_ref();
            if !key.contains("/generations/") {
                continue;
            }
            let m = match self.get(key).await {
                Ok(body) => Manifest::decode(&body)
                    .map_err(|e| StoreError::Corrupt(format!("{key}: {e}; nothing pruned")))?,
                // Deleted meanwhile (another prune): it names nothing any more.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            named.extend(m.chunks.iter().copied().filter(|c| *c != ZERO));
        }
        let mut doomed = Vec::new();
        for meta in chunks {
            match self.keys.parse_chunk(meta.location.as_ref()) {
                Some(name) if !named.contains(&name) && meta.last_modified <= cutoff => {
                    doomed.push(meta)
                }
                Some(_) => out.chunks_kept += 1,
                None => {}
            }
        }
        let gone: Vec<Option<u64>> = futures::stream::iter(doomed)
            .map(|meta| async move {
                let key = meta.location.as_ref();
                // Renewed since the listing: a writer uploads it again for a generation to come.
                match self.store.head(&meta.location).await {
                    Ok(now) if now.last_modified > cutoff => return Ok(None),
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(self.failed(format!("reading {key}"))(e)),
                }
                self.delete(key).await?;
                Ok(Some(meta.size))
            })
            .buffer_unordered(PARALLEL_DELETES)
            .try_collect()
            .await?;
        for g in gone {
            match g {
                Some(size) => {
                    out.chunks_deleted += 1;
                    out.bytes_deleted += size;
                }
                None => out.chunks_kept += 1,
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(format!("deleting {key}"))(e)),
        }
    }
}

/// Chunk objects a prune checks and deletes at once.
const PARALLEL_DELETES: usize = 16;

/// What a prune did.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    /// Manifests deleted.
    pub manifests_deleted: u64,
    /// Manifests kept.
    pub manifests_kept: u64,
    /// Chunk objects deleted.
    pub chunks_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Chunk objects kept.
    pub chunks_kept: u64,
}
