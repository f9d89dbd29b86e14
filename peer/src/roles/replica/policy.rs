//! Who may own and who may mount each region a `peer serve` holds (spec §10, Authorization):
//! rules by name or name prefix, and each region's owner, remembered in `DIR/.memsync/owners`
//! across restarts. An OPEN never moves a region to another peer; a refusal is FORBIDDEN and names
//! the refused fingerprint. Without rules of a kind, every trusted peer passes that kind's rules
//! (trust is the grant), and ownership still sticks to the first owner. A region handed over to
//! this peer (spec §8.6) is recorded as `self`: no peer's OPEN writes it again, and the refusal is
//! HANDED_OVER, which tells a former owner whose HANDOFF_ACK was lost that the handoff completed.
//! A region promoted here (`peer promote`, its owner lost) is recorded as `promoted:FP`: the lost
//! owner FP is fenced, and its OPEN is refused with what happened and how to rejoin. One process
//! holds a directory's policy at a time (an exclusive flock(2) of `DIR/.memsync/lock`), so an
//! offline promotion never races a running serve's own record.

use crate::net::identity::{Fingerprint, IdentityError};
use memsync_protocol::wire::{ErrorCode, WireError};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `PATTERN=FP`: regions named PATTERN (a name, `prefix*`, or `*`) for the peer FP (or `*`, any
/// trusted peer).
#[derive(Clone, Debug)]
pub struct Rule {
    /// The name, or with `prefix` the start of it.
    name: String,
    prefix: bool,
    /// `None`: any trusted peer.
    who: Option<Fingerprint>,
}

/// Why a rule or the owners file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reported as "rule {0:?}: expected PATTERN=FINGERPRINT (PATTERN a region name, prefix* or *; FINGERPRINT 64 hex digits or *)".
    #[error("rule {0:?}: expected PATTERN=FINGERPRINT (PATTERN a region name, prefix* or *; FINGERPRINT 64 hex digits or *)")]
    BadRule(String),
    /// Reported as "rule {rule:?}: {source}".
    #[error("rule {rule:?}: {source}")]
    BadRuleFingerprint {
        /// The rule as written.
        rule: String,
        /// What failed underneath.
        source: IdentityError,
    },
    /// Reported as "{path}, line {line}: expected NAME FINGERPRINT".
    #[error("{path}, line {line}: expected NAME FINGERPRINT")]
    BadOwnerLine {
        /// The file or directory concerned.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
    },
    /// Reported as "another process (a running peer serve?) holds {dir}; stop it first".
    #[error("another process (a running peer serve?) holds {dir}; stop it first")]
    Busy {
        /// The replica directory.
        dir: PathBuf,
    },
    /// The promotion was refused, for this reason.
    #[error("{0}")]
    Promote(String),
    /// Reported as "{path}: {source}".
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed underneath.
        source: std::io::Error,
    },
}

impl std::str::FromStr for Rule {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let (pattern, fp) = s
            .split_once('=')
            .ok_or_else(|| PolicyError::BadRule(s.to_owned()))?;
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        if (name.is_empty() && !prefix) || name.contains('*') {
            return Err(PolicyError::BadRule(s.to_owned()));
        }
        let who =
            match fp {
                "*" => None,
                fp => Some(Fingerprint::parse(fp).map_err(|source| {
                    PolicyError::BadRuleFingerprint {
                        rule: s.to_owned(),
                        source,
                    }
                })?),
            };
        Ok(Rule {
            name: name.to_owned(),
            prefix,
            who,
        })
    }
}

impl Rule {
    fn grants(&self, name: &str, who: &Fingerprint) -> bool {
        let named = match self.prefix {
            true => name.starts_with(&self.name),
            false => name == self.name,
        };
        named && self.who.is_none_or(|w| w == *who)
    }
}

/// A serve's rules and the owners it remembers.
#[derive(Debug)]
pub struct Policy {
    owner_rules: Vec<Rule>,
    mount_rules: Vec<Rule>,
    owners: Mutex<BTreeMap<String, Owner>>,
    /// `DIR/.memsync/owners`.
    file: PathBuf,
    /// `DIR/.memsync/lock`, flocked for as long as this policy lives.
    _lock: std::fs::File,
}

/// Who owns a region this peer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The peer streaming it here.
    Peer(Fingerprint),
    /// This peer, since a handoff.
    Here,
    /// This peer, promoted by an operator after the owner it names was lost; that owner is fenced.
    Promoted(Fingerprint),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Peer(fp) => write!(f, "{fp}"),
            Owner::Here => f.write_str(HERE),
            Owner::Promoted(fp) => write!(f, "{PROMOTED}{fp}"),
        }
    }
}

impl std::str::FromStr for Owner {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let fp = |s| Fingerprint::parse(s).map_err(|_| ());
        match (s, s.strip_prefix(PROMOTED)) {
            (HERE, _) => Ok(Owner::Here),
            (_, Some(lost)) => Ok(Owner::Promoted(fp(lost)?)),
            (peer, None) => Ok(Owner::Peer(fp(peer)?)),
        }
    }
}

/// How the owners file names this peer.
const HERE: &str = "self";
/// How the owners file names this peer after a promotion, before the fenced owner's fingerprint.
const PROMOTED: &str = "promoted:";

const STATE_DIR: &str = ".memsync";
const OWNERS_FILE: &str = "owners";
const LOCK_FILE: &str = "lock";

impl Policy {
    /// The policy of replica directory `dir`, with its remembered owners.
    pub fn load(
        dir: &Path,
        owner_rules: Vec<Rule>,
        mount_rules: Vec<Rule>,
    ) -> Result<Self, PolicyError> {
        let state = dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io(&state))?;
        let lock_path = state.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| match e {
                rustix::io::Errno::WOULDBLOCK => PolicyError::Busy {
                    dir: dir.to_owned(),
                },
                e => PolicyError::Io {
                    path: lock_path.clone(),
                    source: e.into(),
                },
            },
        )?;
        let file = state.join(OWNERS_FILE);
        let mut owners = BTreeMap::new();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    let bad = || PolicyError::BadOwnerLine {
                        path: file.clone(),
                        line: i + 1,
                    };
                    let mut words = line.split_whitespace();
                    let (Some(name), Some(fp), None) = (words.next(), words.next(), words.next())
                    else {
                        return Err(bad());
                    };
                    owners.insert(name.to_owned(), fp.parse().map_err(|()| bad())?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(PolicyError::Io { path: file, source }),
        }
        Ok(Policy {
            owner_rules,
            mount_rules,
            owners: Mutex::new(owners),
            file,
            _lock: lock,
        })
    }

    /// Lets `who` own `name` (its OPEN), remembering it as the owner if the region had none.
    pub fn claim(&self, name: &str, who: &Fingerprint) -> Result<(), WireError> {
        let mut owners = self.owners.lock().expect("owners lock");
        match owners.get(name) {
            Some(Owner::Peer(owner)) if owner == who => return Ok(()),
            Some(Owner::Peer(owner)) => {
                return Err(forbidden(format!(
                    "region {name} is owned by peer {owner}, not {who}: ownership moves only by handoff or promotion"
                )))
            }
            // The lost owner, back: fenced.
            Some(Owner::Promoted(lost)) if lost == who => {
                return Err(WireError::new(
                    ErrorCode::HandedOver,
                    format!(
                        "region {name} was promoted to owner on this peer after peer {who} was \
                         declared lost (peer promote): peer {who} is fenced, and what it wrote \
                         after this peer's last acknowledged generation is not here. To rejoin as \
                         a replica of this peer, run `peer serve` there and `peer sync --region \
                         DIR/{name}` to it here: the chunks its copy holds that differ are replaced"
                    ),
                ))
            }
            // The answer that settles a probe (spec §8.6).
            Some(Owner::Here | Owner::Promoted(_)) => {
                return Err(WireError::new(
                    ErrorCode::HandedOver,
                    format!(
                        "region {name} was handed over to this peer, which owns it now; peer {who} may not write it"
                    ),
                ))
            }
            None => {}
        }
        if !granted(&self.owner_rules, name, who) {
            return Err(forbidden(format!(
                "peer {who} may not own region {name} here (no --allow-owner rule grants it)"
            )));
        }
        self.record(&mut owners, name, Owner::Peer(*who))
            .map_err(remembering)
    }

    /// `who`, the owner of `name`, offers it in a handoff: true if this peer may take it. Only the
    /// recorded owner can hand a region over, and the owner rules must grant it nothing more.
    pub fn may_take_over(&self, name: &str, who: &Fingerprint) -> bool {
        self.owners.lock().expect("owners lock").get(name) == Some(&Owner::Peer(*who))
    }

    /// This peer owns `name` from now on (it accepted a handoff).
    pub fn became_owner(&self, name: &str) -> Result<(), WireError> {
        let mut owners = self.owners.lock().expect("owners lock");
        self.record(&mut owners, name, Owner::Here)
            .map_err(remembering)
    }

    /// Makes this peer the owner of `name`, whose recorded owner was lost (an operator's decision,
    /// spec §8.6): that owner is fenced from now on. Returns it.
    pub fn promote(&self, name: &str) -> Result<Fingerprint, PolicyError> {
        let mut owners = self.owners.lock().expect("owners lock");
        let lost = match owners.get(name) {
            Some(Owner::Peer(fp)) => *fp,
            Some(Owner::Here | Owner::Promoted(_)) => {
                return Err(PolicyError::Promote(format!(
                    "region {name} is owned by this peer already"
                )))
            }
            None => {
                return Err(PolicyError::Promote(format!(
                    "no owner of region {name} is recorded in {}: this peer never replicated it",
                    self.file.display()
                )))
            }
        };
        self.record(&mut owners, name, Owner::Promoted(lost))?;
        Ok(lost)
    }

    /// Records `owner` of `name` and writes the file, or leaves both as they were.
    fn record(
        &self,
        owners: &mut BTreeMap<String, Owner>,
        name: &str,
        owner: Owner,
    ) -> Result<(), PolicyError> {
        let before = owners.insert(name.to_owned(), owner);
        self.save(owners).inspect_err(|_| {
            match before {
                Some(b) => owners.insert(name.to_owned(), b),
                None => owners.remove(name),
            };
        })
    }

    /// Lets `who` mount `name`: its owner, or a peer the mount rules grant it to.
    pub fn may_mount(&self, name: &str, who: &Fingerprint) -> Result<(), WireError> {
        let owner = self.owners.lock().expect("owners lock").get(name).copied();
        if owner == Some(Owner::Peer(*who)) || granted(&self.mount_rules, name, who) {
            return Ok(());
        }
        Err(forbidden(format!(
            "peer {who} may not mount region {name} here (no --allow-mount rule grants it)"
        )))
    }

    /// Writes the owners file anew: a temporary file, synced, renamed over the old one.
    fn save(&self, owners: &BTreeMap<String, Owner>) -> Result<(), PolicyError> {
        let dir = self
            .file
            .parent()
            .expect("the owners file is in a directory");
        let tmp = dir.join(format!("{OWNERS_FILE}.tmp"));
        let mut text = String::from(
            "# region owner (a fingerprint; self after a handoff; promoted:FP after a promotion, FP fenced; remove a line to let another peer own it)\n",
        );
        for (name, fp) in owners {
            text.push_str(&format!("{name} {fp}\n"));
        }
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.file).map_err(io(&self.file))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    }
}

/// No rules of a kind: every trusted peer passes.
fn granted(rules: &[Rule], name: &str, who: &Fingerprint) -> bool {
    rules.is_empty() || rules.iter().any(|r| r.grants(name, who))
}

/// `PolicyError::Io` for an I/O failure at `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError {
    let path = path.to_owned();
    move |source| PolicyError::Io { path, source }
}

/// The peer's answer when the owners file could not be written.
fn remembering(e: PolicyError) -> WireError {
    WireError::new(ErrorCode::LocalIo, format!("remembering the owner: {e}"))
}

fn forbidden(reason: String) -> WireError {
    WireError::new(ErrorCode::Forbidden, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::parse(&format!("{b:02x}").repeat(32)).unwrap()
    }

    #[test]
    fn owners_stick_across_restarts_and_rules_restrict() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (fp(1), fp(2), fp(3));
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        p.claim("x", &a).unwrap();
        p.claim("x", &a).unwrap();
        let e = p.claim("x", &b).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.reason.contains(&b.to_string()) && e.reason.contains(&a.to_string()));
        // Restarted: still a's. One policy holds the directory at a time.
        assert!(matches!(
            Policy::load(dir.path(), vec![], vec![]),
            Err(PolicyError::Busy { .. })
        ));
        drop(p);
        let rules = vec![format!("vm-*={b}").parse().unwrap()];
        let mounts = vec![format!("vm-1={c}").parse().unwrap()];
        let p = Policy::load(dir.path(), rules, mounts).unwrap();
        assert_eq!(p.claim("x", &b).unwrap_err().code, ErrorCode::Forbidden);
        p.claim("x", &a).unwrap();
        assert_eq!(p.claim("y", &a).unwrap_err().code, ErrorCode::Forbidden);
        p.claim("vm-1", &b).unwrap();
        p.may_mount("vm-1", &b).unwrap();
        p.may_mount("vm-1", &c).unwrap();
        assert_eq!(
            p.may_mount("vm-1", &a).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(p.may_mount("x", &c).unwrap_err().code, ErrorCode::Forbidden);
        for bad in ["x", "=*", "a*b=*", "x=nothex"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_promoted_region_fences_its_lost_owner_and_stays_here() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (fp(1), fp(2));
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        assert!(matches!(p.promote("x"), Err(PolicyError::Promote(_))));
        p.claim("x", &a).unwrap();
        assert_eq!(p.promote("x").unwrap(), a);
        assert!(matches!(p.promote("x"), Err(PolicyError::Promote(_))));
        drop(p);
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        let e = p.claim("x", &a).unwrap_err();
        assert_eq!(e.code, ErrorCode::HandedOver);
        assert!(
            e.reason.contains("fenced") && e.reason.contains("rejoin"),
            "{e}"
        );
        let e = p.claim("x", &b).unwrap_err();
        assert_eq!(e.code, ErrorCode::HandedOver);
        assert!(!e.reason.contains("fenced"), "{e}");
        assert!(!p.may_take_over("x", &a));
    }
}
