//! Peer identities: a key and a self-signed certificate kept in a directory, named by the SHA-256
//! fingerprint of the certificate (spec/PROTOCOL.md §2), and the set of fingerprints a peer trusts.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an identity or a trust set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reported as "{path}: {source}".
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed underneath.
        source: std::io::Error,
    },
    /// Reported as "identity {dir}: {problem}; restore it, or move the directory away to create a new identity (and a new fingerprint)".
    #[error("identity {dir}: {problem}; restore it, or move the directory away to create a new identity (and a new fingerprint)")]
    Damaged {
        /// The identity directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Reported as "{0} is not a directory (an identity is a directory holding cert.der and key.der)".
    #[error("{0} is not a directory (an identity is a directory holding cert.der and key.der)")]
    NotADirectory(PathBuf),
    /// Reported as "trust file {path}, line {line}: {reason}".
    #[error("trust file {path}, line {line}: {reason}")]
    TrustLine {
        /// The file or directory concerned.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The reason given.
        reason: String,
    },
    /// Reported as "generating a key: {0}".
    #[error("generating a key: {0}")]
    Generate(#[from] rcgen::Error),
    /// Reported as "{0:?} is not a fingerprint: expected 64 hex digits (as printed by `peer id`)".
    #[error("{0:?} is not a fingerprint: expected 64 hex digits (as printed by `peer id`)")]
    BadFingerprint(String),
    /// Reported as "no identity directory given and neither XDG_CONFIG_HOME nor HOME is set".
    #[error("no identity directory given and neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The SHA-256 of a certificate's DER: a peer's name on the network.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate given as DER.
    pub fn of(cert: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert).into())
    }

    /// The 32 bytes of the digest.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Parses 64 hex digits; `:` separators and case are ignored.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut b = [0u8; 32];
        hex::decode_to_slice(clean.to_ascii_lowercase(), &mut b)
            .map_err(|_| IdentityError::BadFingerprint(s.to_owned()))?;
        Ok(Fingerprint(b))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// This peer's certificate and key.
pub struct Identity {
    /// The self-signed certificate (DER), presented in every handshake.
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";

impl Identity {
    /// A new identity that lives only in memory (the demo and tests use these).
    pub fn generate() -> Result<Self, IdentityError> {
        let ck = rcgen::generate_simple_self_signed(vec!["memsync".to_owned()])?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        })
    }

    /// Loads the identity in `dir`, creating it (key file mode 0600) when absent. A certificate
    /// or key that does not parse, or that do not belong together, is refused: a damaged
    /// identity never gets a fingerprint.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        if dir.exists() && !dir.is_dir() {
            return Err(IdentityError::NotADirectory(dir.to_owned()));
        }
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let damaged = |problem: String| IdentityError::Damaged {
            dir: dir.to_owned(),
            problem,
        };
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let id = Identity {
                    cert: CertificateDer::from(fs::read(&cert_path).map_err(io(&cert_path))?),
                    key: PrivatePkcs8KeyDer::from(fs::read(&key_path).map_err(io(&key_path))?),
                };
                rustls::sign::CertifiedKey::from_der(
                    vec![id.cert.clone()],
                    id.key(),
                    &rustls::crypto::ring::default_provider(),
                )
                .map_err(|e| {
                    damaged(format!(
                        "{CERT_FILE} and {KEY_FILE} are not a valid pair ({e})"
                    ))
                })?;
                return Ok(id);
            }
            (true, false) => {
                return Err(damaged(format!(
                    "{CERT_FILE} is there, {KEY_FILE} is missing"
                )))
            }
            (false, true) => {
                return Err(damaged(format!(
                    "{KEY_FILE} is there, {CERT_FILE} is missing"
                )))
            }
            (false, false) => {}
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let id = Self::generate()?;
        write_private(&key_path, id.key.secret_pkcs8_der())?;
        fs::write(&cert_path, id.cert.as_ref()).map_err(io(&cert_path))?;
        Ok(id)
    }

    /// The default directory: `$XDG_CONFIG_HOME/memsync/identity`, else
    /// `$HOME/.config/memsync/identity`.
    pub fn default_dir() -> Result<PathBuf, IdentityError> {
        let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x),
            None => PathBuf::from(std::env::var_os("HOME").ok_or(IdentityError::NoHome)?)
                .join(".config"),
        };
        Ok(base.join("memsync").join("identity"))
    }

    /// This identity's fingerprint: its name on the network.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// The private key, for TLS.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// Fingerprints this peer accepts connections from and to.
#[derive(Clone, Debug, Default)]
pub struct TrustSet(BTreeSet<Fingerprint>);

impl TrustSet {
    /// A trust set of `fps`.
    pub fn new(fps: impl IntoIterator<Item = Fingerprint>) -> Self {
        TrustSet(fps.into_iter().collect())
    }

    /// Adds the fingerprints of a trust file: one per line, `#` comments and blank lines ignored;
    /// text after the fingerprint on a line is a free-form label.
    pub fn add_file(&mut self, path: &Path) -> Result<(), IdentityError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(fp) = line.split_whitespace().next() {
                let fp = Fingerprint::parse(fp).map_err(|e| IdentityError::TrustLine {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: e.to_string(),
                })?;
                self.0.insert(fp);
            }
        }
        Ok(())
    }

    /// Trusts `fp` too.
    pub fn insert(&mut self, fp: Fingerprint) {
        self.0.insert(fp);
    }

    /// Whether `fp` is trusted.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.0.contains(fp)
    }

    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_fingerprints_parse() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let s = a.fingerprint().to_string();
        assert_eq!(
            Fingerprint::parse(&s.to_uppercase()).unwrap(),
            a.fingerprint()
        );
        assert!(Fingerprint::parse("abc").is_err());
        let trust = dir.path().join("trust");
        fs::write(&trust, format!("# peers\n{s} laptop\n\n")).unwrap();
        let mut t = TrustSet::default();
        t.add_file(&trust).unwrap();
        assert!(t.contains(&a.fingerprint()));
    }

    #[test]
    fn damaged_identities_and_bad_trust_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        Identity::load_or_create(&id).unwrap();
        let cert = fs::read(id.join(CERT_FILE)).unwrap();
        fs::write(id.join(CERT_FILE), &cert[..cert.len() / 2]).unwrap();
        let e = Identity::load_or_create(&id).err().unwrap().to_string();
        assert!(e.contains("not a valid pair"), "{e}");
        fs::remove_file(id.join(CERT_FILE)).unwrap();
        let e = Identity::load_or_create(&id).err().unwrap().to_string();
        assert!(e.contains("cert.der is missing"), "{e}");
        let file = dir.path().join("plain");
        fs::write(&file, b"").unwrap();
        let e = Identity::load_or_create(&file).err().unwrap().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let trust = dir.path().join("trust");
        fs::write(&trust, "# peers\n\nnot-a-fingerprint laptop\n").unwrap();
        let e = TrustSet::default()
            .add_file(&trust)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust file") && e.contains("line 3"), "{e}");
    }
}
