//! Who may own and who may mount each region a `peer serve` holds (spec §10, Authorization):
//! rules by name or name prefix, and each region's owner and ownership epoch (spec §8.8),
//! remembered in `DIR/.memsync/owners` across restarts. At epoch 1 a region sticks to its first
//! owner (another peer is refused with FORBIDDEN, naming it); only a newer epoch, minted by a
//! handoff or a promotion elsewhere, moves it, and every older epoch is fenced (FENCED). Without
//! rules of a kind, every trusted peer passes that kind's rules (trust is the grant). A region
//! handed over to this peer (spec §8.6) is recorded as `self`: an older epoch's OPEN is refused
//! with HANDED_OVER, which tells a former owner whose HANDOFF_ACK was lost that the handoff
//! completed. A region promoted here (`peer promote`, its owner lost) is recorded as
//! `promoted:FP`: the lost owner FP is fenced, and told what happened and how to rejoin. One
//! process holds a directory's policy at a time (an exclusive flock(2) of `DIR/.memsync/lock`), so
//! an offline promotion never races a running serve's own record; a `peer sync` of a region owned
//! here reads its epoch from the file without the lock ([`owned_at`]).

use crate::net::identity::{Fingerprint, IdentityError};
use memsync_protocol::epoch::{self, Admission, Holder, Record, Refusal};
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
    /// Reported as "{path}, line {line}: expected NAME OWNER [EPOCH [from:FP]]".
    #[error("{path}, line {line}: expected NAME OWNER [EPOCH [from:FP]]")]
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
    /// Reported as "{path} is a replica of peer {owner} (epoch {epoch}, recorded in {record}): this peer does not own it; `peer promote` makes it the owner if that peer is lost".
    #[error("{path} is a replica of peer {owner} (epoch {epoch}, recorded in {record}): this peer does not own it; `peer promote` makes it the owner if that peer is lost")]
    NotOwned {
        /// The region file.
        path: PathBuf,
        /// Its recorded owner.
        owner: Fingerprint,
        /// The owner's epoch.
        epoch: u64,
        /// The owners file.
        record: PathBuf,
    },
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
    /// The peer each region owned here since a handoff came from: it may ask for the region
    /// again (MOUNT, as its follower) whatever the mount rules say. Locked after `owners`.
    handed_from: Mutex<HandedFrom>,
    /// `DIR/.memsync/owners`.
    file: PathBuf,
    /// `DIR/.memsync/lock`, flocked for as long as this policy lives.
    _lock: std::fs::File,
}

/// Who owns a region this peer holds, at which epoch.
type Owner = Record<Fingerprint>;

/// The peer each region owned here since a handoff was handed over from.
type HandedFrom = BTreeMap<String, Fingerprint>;

/// A line of the owners file after its name: `OWNER [EPOCH]`, where OWNER is a fingerprint,
/// `self` or `promoted:FP`, and EPOCH is 1 when absent (files written before epochs).
fn parse_owner(owner: &str, epoch: Option<&str>) -> Option<Owner> {
    let fp = |s| Fingerprint::parse(s).ok();
    let holder = match (owner, owner.strip_prefix(PROMOTED)) {
        (HERE, _) => Holder::Here,
        (_, Some(lost)) => Holder::Promoted { lost: fp(lost)? },
        (peer, None) => Holder::Peer(fp(peer)?),
    };
    let epoch = match epoch {
        None => epoch::FIRST,
        Some(e) => e.parse().ok().filter(|e| *e >= epoch::FIRST)?,
    };
    Some(Record { holder, epoch })
}

fn show_owner(o: &Owner) -> String {
    let holder = match o.holder {
        Holder::Peer(fp) => fp.to_string(),
        Holder::Here => HERE.to_owned(),
        Holder::Promoted { lost } => format!("{PROMOTED}{lost}"),
    };
    format!("{holder} {}", o.epoch)
}

/// How the owners file names this peer.
const HERE: &str = "self";
/// How the owners file names this peer after a promotion, before the fenced owner's fingerprint.
const PROMOTED: &str = "promoted:";
/// Before the fingerprint of the peer a region owned here was handed over from.
const FROM: &str = "from:";

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
        let (owners, handed_from) = read_owners(&file)?;
        Ok(Policy {
            owner_rules,
            mount_rules,
            owners: Mutex::new(owners),
            handed_from: Mutex::new(handed_from),
            file,
            _lock: lock,
        })
    }

    /// Whether `who` may own `name` at epoch `epoch` (its OPEN; spec §8.8), `me` being this
    /// peer: `Ok(true)` for a new owner or epoch, which [`Policy::claim`] records once every
    /// older stream of the region has ended, `Ok(false)` for the recorded owner and epoch.
    pub fn admits(
        &self,
        name: &str,
        me: &Fingerprint,
        who: &Fingerprint,
        epoch: u64,
    ) -> Result<bool, WireError> {
        let owners = self.owners.lock().expect("owners lock");
        self.admission(&owners, name, me, who, epoch)
            .map(|a| a.is_some())
    }

    /// Lets `who` own `name` at epoch `epoch` (its OPEN), recording it as the owner if it is new.
    pub fn claim(
        &self,
        name: &str,
        me: &Fingerprint,
        who: &Fingerprint,
        epoch: u64,
    ) -> Result<(), WireError> {
        let mut owners = self.owners.lock().expect("owners lock");
        match self.admission(&owners, name, me, who, epoch)? {
            Some(record) => self
                .record(&mut owners, name, record, None)
                .map_err(remembering),
            None => Ok(()),
        }
    }

    /// What [`epoch::admit`] and the owner rules make of an OPEN: the record to keep, if new.
    fn admission(
        &self,
        owners: &BTreeMap<String, Owner>,
        name: &str,
        me: &Fingerprint,
        who: &Fingerprint,
        epoch: u64,
    ) -> Result<Option<Owner>, WireError> {
        let record = owners.get(name);
        let refused = |code, reason| Err(WireError::new(code, reason));
        match epoch::admit(record, *me, *who, epoch) {
            Admission::Same => Ok(None),
            Admission::Adopt(r) if granted(&self.owner_rules, name, who) => Ok(Some(r)),
            Admission::Adopt(_) => refused(
                ErrorCode::Forbidden,
                format!("peer {who} may not own region {name} here (no --allow-owner rule grants it)"),
            ),
            Admission::Refuse(code, Refusal::Taken { owner }) => refused(
                code,
                format!(
                    "region {name} is owned by peer {owner}, not {who}: ownership moves only by handoff or promotion"
                ),
            ),
            Admission::Refuse(code, Refusal::Fenced { holder, epoch: now }) => refused(
                code,
                match holder {
                    Holder::Promoted { lost } if lost == *who => format!(
                        "region {name} was promoted to owner on this peer after peer {who} was \
                         declared lost (peer promote): peer {who} is fenced, and what it wrote \
                         after this peer's last acknowledged generation is not here. To rejoin as \
                         a replica of this peer, run `peer serve` there and `peer sync --region \
                         DIR/{name}` to it here: the chunks its copy holds that differ are replaced"
                    ),
                    Holder::Here | Holder::Promoted { .. } => format!(
                        "region {name} is owned by this peer now (epoch {now}, after a handoff \
                         or promotion); peer {who} (epoch {epoch}) may not write it"
                    ),
                    Holder::Peer(owner) => format!(
                        "region {name} is owned by peer {owner} at epoch {now}, after a handoff \
                         or promotion: peer {who}, at epoch {epoch}, is fenced and may not write \
                         it. To rejoin, make it a replica of the new owner (`peer serve` there, \
                         `peer sync` from the owner)"
                    ),
                },
            ),
        }
    }

    /// `who`, the owner of `name` at epoch `epoch`, offers it in a handoff: true if this peer may
    /// take it. Only the recorded owner at its recorded epoch can hand a region over.
    pub fn may_take_over(&self, name: &str, who: &Fingerprint, epoch: u64) -> bool {
        self.owners.lock().expect("owners lock").get(name)
            == Some(&Record {
                holder: Holder::Peer(*who),
                epoch,
            })
    }

    /// This peer owns `name` from now on, at the epoch after `epoch`: it accepted a handoff of
    /// the stream of that epoch from `from`, which may ask for the region again.
    pub fn became_owner(
        &self,
        name: &str,
        epoch: u64,
        from: &Fingerprint,
    ) -> Result<(), WireError> {
        let record = epoch::handed_over(epoch).ok_or_else(|| {
            WireError::new(
                ErrorCode::ProtocolViolation,
                "no ownership epoch after this one",
            )
        })?;
        let mut owners = self.owners.lock().expect("owners lock");
        self.record(&mut owners, name, record, Some(*from))
            .map_err(remembering)
    }

    /// Makes this peer the owner of `name`, whose recorded owner was lost (an operator's decision,
    /// spec §8.6), at the next epoch: that owner is fenced from now on. Returns it and the epoch.
    pub fn promote(&self, name: &str) -> Result<(Fingerprint, u64), PolicyError> {
        let mut owners = self.owners.lock().expect("owners lock");
        let record = match owners.get(name) {
            Some(r) => epoch::promoted(r).ok_or_else(|| {
                PolicyError::Promote(format!("region {name} is owned by this peer already"))
            })?,
            None => {
                return Err(PolicyError::Promote(format!(
                    "no owner of region {name} is recorded in {}: this peer never replicated it",
                    self.file.display()
                )))
            }
        };
        self.record(&mut owners, name, record, None)?;
        let Holder::Promoted { lost } = record.holder else {
            unreachable!("a promotion records a promoted holder")
        };
        Ok((lost, record.epoch))
    }

    /// Records `owner` of `name`, handed over `from` that peer if given, and writes the file, or
    /// leaves both as they were.
    fn record(
        &self,
        owners: &mut BTreeMap<String, Owner>,
        name: &str,
        owner: Owner,
        from: Option<Fingerprint>,
    ) -> Result<(), PolicyError> {
        let mut handed_from = self.handed_from.lock().expect("owners lock");
        let before = owners.insert(name.to_owned(), owner);
        let from_before = match from {
            Some(f) => handed_from.insert(name.to_owned(), f),
            None => handed_from.remove(name),
        };
        self.save(owners, &handed_from).inspect_err(|_| {
            match before {
                Some(b) => owners.insert(name.to_owned(), b),
                None => owners.remove(name),
            };
            match from_before {
                Some(f) => handed_from.insert(name.to_owned(), f),
                None => handed_from.remove(name),
            };
        })
    }

    /// The regions this peer owns since a handoff to it, with the epoch they were handed over
    /// at (the one before the epoch owned here).
    pub fn handed_here(&self) -> Vec<(String, u64)> {
        let owners = self.owners.lock().expect("owners lock");
        owners
            .iter()
            .filter(|(_, r)| r.holder == Holder::Here)
            .map(|(n, r)| (n.clone(), r.epoch.saturating_sub(1)))
            .collect()
    }

    /// The epoch this peer owns `name` at since a handoff to it, if it does.
    pub fn owned_here(&self, name: &str) -> Option<u64> {
        let owners = self.owners.lock().expect("owners lock");
        owners
            .get(name)
            .filter(|r| r.holder == Holder::Here)
            .map(|r| r.epoch)
    }

    /// This peer, the owner of `name` at `epoch`, handed it to `to` (which acknowledged): `to`
    /// owns it at the next epoch, and this peer's OPENs of older epochs are fenced.
    pub fn handed_away(&self, name: &str, to: &Fingerprint, epoch: u64) -> Result<(), WireError> {
        let epoch = epoch.checked_add(1).ok_or_else(|| {
            WireError::new(
                ErrorCode::ProtocolViolation,
                "no ownership epoch after this one",
            )
        })?;
        let record = Record {
            holder: Holder::Peer(*to),
            epoch,
        };
        let mut owners = self.owners.lock().expect("owners lock");
        self.record(&mut owners, name, record, None)
            .map_err(remembering)
    }

    /// Lets `who` mount `name`: its owner, the peer it was handed here from (its follower), or a
    /// peer the mount rules grant it to.
    pub fn may_mount(&self, name: &str, who: &Fingerprint) -> Result<(), WireError> {
        let owner = self
            .owners
            .lock()
            .expect("owners lock")
            .get(name)
            .map(|r| r.holder);
        let from = self
            .handed_from
            .lock()
            .expect("owners lock")
            .get(name)
            .copied();
        if owner == Some(Holder::Peer(*who))
            || (owner == Some(Holder::Here) && from == Some(*who))
            || granted(&self.mount_rules, name, who)
        {
            return Ok(());
        }
        Err(forbidden(format!(
            "peer {who} may not mount region {name} here (no --allow-mount rule grants it)"
        )))
    }

    /// Writes the owners file anew: a temporary file, synced, renamed over the old one.
    fn save(
        &self,
        owners: &BTreeMap<String, Owner>,
        handed_from: &HandedFrom,
    ) -> Result<(), PolicyError> {
        let dir = self
            .file
            .parent()
            .expect("the owners file is in a directory");
        let tmp = dir.join(format!("{OWNERS_FILE}.tmp"));
        let mut text = String::from(
            "# region owner epoch [from:FP] (owner: a fingerprint; self after a handoff, from peer FP, which may mount it; promoted:FP after a promotion, FP fenced; epoch: grows at every handoff and promotion, older ones are fenced; remove a line to let another peer own the region)\n",
        );
        for (name, owner) in owners {
            let from = handed_from.get(name).map(|f| format!(" {FROM}{f}"));
            text.push_str(&format!(
                "{name} {}{}\n",
                show_owner(owner),
                from.unwrap_or_default()
            ));
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

/// The owners file at `file` (nothing if there is none): each region's owner, and the peer each
/// region owned here was handed over from.
fn read_owners(file: &Path) -> Result<(BTreeMap<String, Owner>, HandedFrom), PolicyError> {
    let (mut owners, mut handed_from) = (BTreeMap::new(), BTreeMap::new());
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((owners, handed_from)),
        Err(source) => return Err(io(file)(source)),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || PolicyError::BadOwnerLine {
            path: file.to_owned(),
            line: i + 1,
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(owner), epoch, from, None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(bad());
        };
        let owner = parse_owner(owner, epoch).ok_or_else(bad)?;
        if let Some(from) = from {
            let from = from
                .strip_prefix(FROM)
                .and_then(|f| Fingerprint::parse(f).ok());
            match (owner.holder, from) {
                (Holder::Here, Some(f)) => handed_from.insert(name.to_owned(), f),
                _ => return Err(bad()),
            };
        }
        owners.insert(name.to_owned(), owner);
    }
    Ok((owners, handed_from))
}

/// Records that this peer owns region `name` (in file `path`) at `epoch`, taken back in a
/// handoff, in the records beside the file (`DIR/.memsync/owners`), where [`owned_at`] finds it
/// after a restart: the peer that handed it back fences its own older epoch from then on.
/// Refused while another process (a `peer serve` of that directory) holds them.
pub fn record_owned_here(path: &Path, name: &str, epoch: u64) -> Result<(), PolicyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let p = Policy::load(dir, Vec::new(), Vec::new())?;
    let mut owners = p.owners.lock().expect("owners lock");
    let record = Record {
        holder: Holder::Here,
        epoch,
    };
    p.record(&mut owners, name, record, None)
}

/// How this peer owns a region file it replicates from (spec §8.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owned {
    /// The ownership epoch: the one recorded beside the file after a handoff or promotion here,
    /// else 1.
    pub epoch: u64,
    /// The owner declared lost, when this peer owns the region by a promotion.
    pub promoted_from: Option<Fingerprint>,
}

/// How this peer owns region `name` in file `path`, from the records beside it
/// (`DIR/.memsync/owners`). A region recorded there as a replica of another peer is not this
/// peer's to own. Reads the file without the directory's lock: a `peer serve` of DIR may run, and
/// it replaces the file atomically.
pub fn owned_at(path: &Path, name: &str) -> Result<Owned, PolicyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let record = dir.join(STATE_DIR).join(OWNERS_FILE);
    match read_owners(&record)?.0.get(name) {
        None => Ok(Owned {
            epoch: epoch::FIRST,
            promoted_from: None,
        }),
        Some(Record {
            holder: Holder::Peer(owner),
            epoch,
        }) => Err(PolicyError::NotOwned {
            path: path.to_owned(),
            owner: *owner,
            epoch: *epoch,
            record,
        }),
        Some(r) => Ok(Owned {
            epoch: r.epoch,
            promoted_from: match r.holder {
                Holder::Promoted { lost } => Some(lost),
                _ => None,
            },
        }),
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
        p.claim("x", &fp(9), &a, 1).unwrap();
        p.claim("x", &fp(9), &a, 1).unwrap();
        let e = p.claim("x", &fp(9), &b, 1).unwrap_err();
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
        assert_eq!(
            p.claim("x", &fp(9), &b, 1).unwrap_err().code,
            ErrorCode::Forbidden
        );
        p.claim("x", &fp(9), &a, 1).unwrap();
        assert_eq!(
            p.claim("y", &fp(9), &a, 1).unwrap_err().code,
            ErrorCode::Forbidden
        );
        p.claim("vm-1", &fp(9), &b, 1).unwrap();
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
        p.claim("x", &fp(9), &a, 1).unwrap();
        assert_eq!(p.promote("x").unwrap(), (a, 2));
        assert!(matches!(p.promote("x"), Err(PolicyError::Promote(_))));
        drop(p);
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        let e = p.claim("x", &fp(9), &a, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Fenced);
        assert!(
            e.reason.contains("fenced") && e.reason.contains("rejoin"),
            "{e}"
        );
        let e = p.claim("x", &fp(9), &b, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Fenced);
        assert!(!e.reason.contains("fenced"), "{e}");
        assert!(!p.may_take_over("x", &a, 1));
        // The region moved on from here (a peer this one synced to owns it at a newer epoch).
        p.claim("x", &fp(9), &b, 3).unwrap();
        assert!(p.may_take_over("x", &b, 3));
    }

    #[test]
    fn epochs_move_a_region_and_fence_the_older_owner_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (fp(1), fp(2));
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        p.claim("x", &fp(9), &a, 1).unwrap();
        assert!(!p.admits("x", &fp(9), &a, 1).unwrap());
        // B owns it at epoch 2 (a promotion or handoff elsewhere): it moves, A is fenced.
        assert!(p.admits("x", &fp(9), &b, 2).unwrap());
        p.claim("x", &fp(9), &b, 2).unwrap();
        drop(p);
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        let e = p.claim("x", &fp(9), &a, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Fenced);
        assert!(e.reason.contains(&b.to_string()), "{e}");
        // A handoff from B here: owned here at 3; B's own probe at 2 hears HANDED_OVER.
        assert!(p.may_take_over("x", &b, 2));
        p.became_owner("x", 2, &b).unwrap();
        assert_eq!(
            p.claim("x", &fp(9), &b, 2).unwrap_err().code,
            ErrorCode::HandedOver
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".memsync/owners"))
                .unwrap()
                .lines()
                .last(),
            Some(format!("x self 3 from:{b}").as_str())
        );
        // A sync of the region owned here runs at its epoch; a replica's region is not owned.
        let file = dir.path().join("x");
        assert_eq!(owned_at(&file, "x").unwrap().epoch, 3);
        assert_eq!(owned_at(&file, "y").unwrap().epoch, 1);
        p.claim("y", &fp(9), &a, 1).unwrap();
        assert!(matches!(
            owned_at(&dir.path().join("y"), "y"),
            Err(PolicyError::NotOwned { .. })
        ));
        // Files written before epochs: two words, epoch 1.
        drop(p);
        std::fs::write(dir.path().join(".memsync/owners"), format!("z {a}\n")).unwrap();
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        assert!(!p.admits("z", &fp(9), &a, 1).unwrap());
        drop(p);
        std::fs::write(dir.path().join(".memsync/owners"), format!("z {a} 0\n")).unwrap();
        assert!(matches!(
            Policy::load(dir.path(), vec![], vec![]),
            Err(PolicyError::BadOwnerLine { line: 1, .. })
        ));
    }

    #[test]
    fn a_region_handed_here_and_back_fences_this_peers_epoch_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (me, a) = (fp(9), fp(1));
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        p.claim("x", &me, &a, 1).unwrap();
        assert_eq!(p.owned_here("x"), None);
        // A hands it here: this peer owns it at epoch 2.
        assert!(p.may_take_over("x", &a, 1));
        p.became_owner("x", 1, &a).unwrap();
        assert_eq!(p.owned_here("x"), Some(2));
        // And back to A, at epoch 3: A's OPEN of epoch 3 is the recorded owner's, epoch 2 is fenced.
        p.handed_away("x", &a, 2).unwrap();
        drop(p);
        let p = Policy::load(dir.path(), vec![], vec![]).unwrap();
        assert_eq!(p.owned_here("x"), None);
        p.claim("x", &me, &a, 3).unwrap();
        assert_eq!(
            p.claim("x", &me, &a, 2).unwrap_err().code,
            ErrorCode::Fenced
        );
        assert!(p.may_take_over("x", &a, 3));
    }

    #[test]
    fn the_peer_a_region_was_handed_over_from_may_mount_it_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (me, a, c) = (fp(9), fp(1), fp(3));
        let rules = || vec!["other=*".parse::<Rule>().unwrap()];
        let p = Policy::load(dir.path(), vec![], rules()).unwrap();
        p.claim("x", &me, &a, 1).unwrap();
        p.became_owner("x", 1, &a).unwrap();
        drop(p);
        // Restarted: A follows the region it handed here, though no mount rule names it.
        let p = Policy::load(dir.path(), vec![], rules()).unwrap();
        p.may_mount("x", &a).unwrap();
        assert_eq!(p.may_mount("x", &c).unwrap_err().code, ErrorCode::Forbidden);
        // C owns it at a newer epoch (the region moved on): A is nobody's follower here now.
        p.claim("x", &me, &c, 3).unwrap();
        drop(p);
        let p = Policy::load(dir.path(), vec![], rules()).unwrap();
        assert_eq!(p.may_mount("x", &a).unwrap_err().code, ErrorCode::Forbidden);
        drop(p);
        // `from:` belongs to regions owned here only.
        let owners = dir.path().join(".memsync/owners");
        std::fs::write(&owners, format!("x {a} 2 from:{c}\n")).unwrap();
        assert!(matches!(
            Policy::load(dir.path(), vec![], vec![]),
            Err(PolicyError::BadOwnerLine { line: 1, .. })
        ));
    }
}
