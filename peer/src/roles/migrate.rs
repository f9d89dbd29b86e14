//! Live migration of a region its owner streams (spec §8.6): pre-copy rounds while the writers run,
//! until finding and sending the bytes still dirty (at the send rate measured on the last round)
//! fits the downtime target, or the rounds run out, or the dirty set stops shrinking; then the
//! writers are frozen, their last changes sent, and ownership handed to the replica. The owner
//! driver runs it ([`crate::roles::owner`]); [`Freezer`]s say how writers stop.
//!
//! Rule: after the freeze nothing at this peer writes the region again, unless the replica refused
//! the handoff; a handoff that was sent and never acknowledged leaves the writers frozen.

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How a migration decides to stop pre-copying.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// The pause the workload may see: writers are frozen once finding the bytes still dirty (the
    /// detector's last run took that long) and sending them at the measured rate would fit in
    /// this time (QEMU's `downtime-limit`, 300 ms by default there too).
    pub downtime: Duration,
    /// Pre-copy rounds at most, counting the first full one; then the writers are frozen however
    /// much is dirty.
    pub max_rounds: u32,
    /// When to hand over before the replica holds everything (spec §8.10).
    pub postcopy: Postcopy,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            downtime: Duration::from_millis(300),
            max_rounds: 30,
            postcopy: Postcopy::Never,
        }
    }
}

/// When a migration hands the region over before the replica holds every chunk (post-copy,
/// spec §8.10): the writers' pause is then the freeze and one round trip, whatever is dirty, and
/// the new owner fetches the chunks it lacks from this peer, which serves them until it holds
/// everything (QEMU's `postcopy-ram`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Postcopy {
    /// Always pre-copy: the final round is sent while the writers are frozen.
    #[default]
    Never,
    /// Post-copy when pre-copy did not converge (the downtime estimate never fit the target).
    Fallback,
    /// Post-copy at the freeze, after the pre-copy rounds.
    Always,
}

/// A migration as an operator asks for it: its options and how to freeze the writers. `peer
/// migrate` builds one from its flags, and sends one as JSON to a running `peer sync` through its
/// control socket.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateRequest {
    /// The downtime target, in milliseconds.
    pub downtime_ms: u64,
    /// Pre-copy rounds at most.
    pub max_rounds: u32,
    /// When to hand over before the replica holds everything.
    pub postcopy: Postcopy,
    /// Processes to freeze with SIGSTOP.
    pub freeze_pid: Vec<i32>,
    /// cgroup v2 directories to freeze.
    pub freeze_cgroup: Vec<PathBuf>,
    /// Shell command that stops the writers.
    pub before_freeze: Option<String>,
    /// Shell command run once the peer owns the region.
    pub after_handoff: Option<String>,
    /// Shell command run when the handoff failed and the writers may go on.
    pub on_thaw: Option<String>,
}

impl Default for MigrateRequest {
    fn default() -> Self {
        let o = MigrateOptions::default();
        MigrateRequest {
            downtime_ms: o.downtime.as_millis() as u64,
            max_rounds: o.max_rounds,
            postcopy: o.postcopy,
            freeze_pid: Vec::new(),
            freeze_cgroup: Vec::new(),
            before_freeze: None,
            after_handoff: None,
            on_thaw: None,
        }
    }
}

impl MigrateRequest {
    /// The migration it asks for, freezing the writers it names (hooks first, then processes,
    /// then cgroups). A process ID must name one process: not 0 (this process group) nor a
    /// negative one (a group, or every process).
    pub fn migration(&self) -> Result<Migration, String> {
        if let Some(p) = self.freeze_pid.iter().find(|&&p| p <= 0) {
            return Err(format!("process ID {p} names no single process to freeze"));
        }
        let mut freezers: Vec<Box<dyn Freezer>> = Vec::new();
        if self.before_freeze.is_some() || self.after_handoff.is_some() || self.on_thaw.is_some() {
            freezers.push(Box::new(HookFreezer {
                before: self.before_freeze.clone(),
                after: self.after_handoff.clone(),
                thaw: self.on_thaw.clone(),
            }));
        }
        for &pid in &self.freeze_pid {
            freezers.push(Box::new(ProcessFreezer::new(pid)));
        }
        for dir in &self.freeze_cgroup {
            freezers.push(Box::new(CgroupFreezer::new(dir.clone())));
        }
        let opts = MigrateOptions {
            downtime: Duration::from_millis(self.downtime_ms),
            max_rounds: self.max_rounds.max(1),
            postcopy: self.postcopy,
        };
        Ok(Migration::new(opts, freezers))
    }

    /// Whether it names any writer to freeze.
    pub fn freezes_anything(&self) -> bool {
        self.before_freeze.is_some()
            || !self.freeze_pid.is_empty()
            || !self.freeze_cgroup.is_empty()
    }
}

/// Stops the writers of a region, and lets them go on or keeps them stopped afterwards.
pub trait Freezer: Send {
    /// What is frozen, for logs and reports.
    fn describe(&self) -> String;
    /// Stops every writer; returns once none can write any more.
    fn freeze(&mut self) -> io::Result<()>;
    /// The handoff failed and this peer still owns the region: the writers may go on.
    fn thaw(&mut self) -> io::Result<()>;
    /// Ownership moved to the replica: the writers here must never write again.
    fn handed_off(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The region was handed back to this peer (it followed the new owner, spec §8.6 step 5):
    /// what [`Freezer::handed_off`] refused may write again. Processes stay stopped: their
    /// memory is not what the region holds now, and restarting the workload is the operator's.
    fn taken_back(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A process stopped with SIGSTOP (and SIGCONT on thaw); after a handoff it stays stopped, for
/// the operator (or an `--after` hook) to end.
pub struct ProcessFreezer {
    pid: i32,
}

impl ProcessFreezer {
    /// Freezes process `pid`.
    pub fn new(pid: i32) -> Self {
        ProcessFreezer { pid }
    }

    fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: kill(2) with a pid the user named; it touches no memory of ours.
        match unsafe { libc::kill(self.pid, sig) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Waits until the kernel reports the process stopped (state `T` in /proc/PID/stat), so
    /// no write of it is under way once `freeze` returns.
    fn wait_stopped(&self) -> io::Result<()> {
        let stat = format!("/proc/{}/stat", self.pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&stat)?;
            // The state follows the command name, which is in parentheses and may hold spaces.
            let state = text
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if matches!(state, Some("T" | "t")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "process {} did not stop within 5 s",
                    self.pid
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Freezer for ProcessFreezer {
    fn describe(&self) -> String {
        format!("process {}", self.pid)
    }

    fn freeze(&mut self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.wait_stopped()
    }

    fn thaw(&mut self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }
}

/// A cgroup v2 frozen through `cgroup.freeze`, as CRIU and runc do; `freeze` returns once
/// `cgroup.events` reports `frozen 1`.
pub struct CgroupFreezer {
    dir: PathBuf,
}

impl CgroupFreezer {
    /// Freezes the cgroup at `dir` (e.g. `/sys/fs/cgroup/vm1`).
    pub fn new(dir: PathBuf) -> Self {
        CgroupFreezer { dir }
    }

    fn set(&self, frozen: bool) -> io::Result<()> {
        let value = if frozen { "1" } else { "0" };
        std::fs::write(self.dir.join("cgroup.freeze"), value)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = format!("frozen {value}");
        loop {
            let events = std::fs::read_to_string(self.dir.join("cgroup.events"))?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "cgroup {} did not report {want} within 5 s",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Freezer for CgroupFreezer {
    fn describe(&self) -> String {
        format!("cgroup {}", self.dir.display())
    }

    fn freeze(&mut self) -> io::Result<()> {
        self.set(true)
    }

    fn thaw(&mut self) -> io::Result<()> {
        self.set(false)
    }
}

/// Shell commands run at the freeze (which must return only once the writers stopped), after a
/// handoff, and on thaw (drafter's agent hooks).
pub struct HookFreezer {
    /// Run at the freeze.
    pub before: Option<String>,
    /// Run once ownership moved.
    pub after: Option<String>,
    /// Run when the handoff failed and the writers may go on.
    pub thaw: Option<String>,
}

fn run_hook(what: &str, cmd: &Option<String>) -> io::Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "{what} hook `{cmd}` failed ({status})"
        )));
    }
    Ok(())
}

impl Freezer for HookFreezer {
    fn describe(&self) -> String {
        "hook commands".into()
    }

    fn freeze(&mut self) -> io::Result<()> {
        run_hook("freeze", &self.before)
    }

    fn thaw(&mut self) -> io::Result<()> {
        run_hook("thaw", &self.thaw)
    }

    fn handed_off(&mut self) -> io::Result<()> {
        run_hook("after-handoff", &self.after)
    }
}

/// An application's own callbacks as a [`Freezer`]: an application that embeds memsync pauses its
/// writer threads in `freeze` (returning once none writes) and lets them go on in `thaw`.
pub struct FnFreezer<F, T> {
    /// Stops the writers; returns once none writes.
    pub freeze: F,
    /// Lets them go on (the handoff failed).
    pub thaw: T,
}

impl<F, T> Freezer for FnFreezer<F, T>
where
    F: FnMut() -> io::Result<()> + Send,
    T: FnMut() -> io::Result<()> + Send,
{
    fn describe(&self) -> String {
        "the application's writers".into()
    }

    fn freeze(&mut self) -> io::Result<()> {
        (self.freeze)()
    }

    fn thaw(&mut self) -> io::Result<()> {
        (self.thaw)()
    }
}

/// One pre-copy round, as reported.
#[derive(Clone, Debug)]
pub struct RoundReport {
    /// The generation the round committed.
    pub generation: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Bytes of CHUNK frames sent.
    pub bytes: u64,
    /// From the detector run that found the round's changes to its acknowledgement.
    pub duration: Duration,
}

/// What a migration did.
#[derive(Clone, Debug, Default)]
pub struct MigrationReport {
    /// The pre-copy rounds, the first (the initial transfer) included.
    pub rounds: Vec<RoundReport>,
    /// Why the writers were frozen when they were.
    pub froze_because: String,
    /// Bytes dirty when the writers were frozen, as the last scan found them.
    pub dirty_at_freeze: u64,
    /// Bytes the writers dirtied per second during the last pre-copy round.
    pub dirty_rate: f64,
    /// The last round, sent while frozen.
    pub final_round: Option<RoundReport>,
    /// From the freeze until the replica acknowledged the handoff and may write.
    pub downtime: Duration,
    /// From the start of the migration to the handoff.
    pub total: Duration,
    /// The generation ownership moved at.
    pub generation: u64,
    /// Post-copy: what the new owner still lacked at the handoff and fetched from this peer.
    pub postcopy: Option<PostcopyReport>,
}

/// The post-copy phase of a migration: from the handoff until the new owner held every chunk.
#[derive(Clone, Debug, Default)]
pub struct PostcopyReport {
    /// Chunks the new owner lacked (named STALE) at the handoff.
    pub stale_chunks: u64,
    /// Bytes of CHUNK frames this peer sent it afterwards.
    pub bytes: u64,
    /// From the handoff until the new owner ended the stream, holding everything; `None` while
    /// it still fetches.
    pub duration: Option<Duration>,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let sent: u64 = self.rounds.iter().map(|r| r.bytes).sum();
        write!(
            f,
            "handed over at generation {} after {} pre-copy rounds ({:.1} MiB); froze because {}: \
             {:.1} MiB dirty, writers dirtying {:.1} MiB/s; final round {:.1} MiB; downtime {:.1} ms; \
             total {:.2} s",
            self.generation,
            self.rounds.len(),
            mib(sent),
            self.froze_because,
            mib(self.dirty_at_freeze),
            self.dirty_rate / (1 << 20) as f64,
            mib(self.final_round.as_ref().map_or(0, |r| r.bytes)),
            self.downtime.as_secs_f64() * 1e3,
            self.total.as_secs_f64()
        )?;
        if let Some(p) = &self.postcopy {
            write!(
                f,
                "; post-copy: {} stale chunks, {:.1} MiB served",
                p.stale_chunks,
                mib(p.bytes)
            )?;
            match p.duration {
                Some(d) => write!(f, " in {:.2} s", d.as_secs_f64())?,
                None => write!(f, ", unfinished")?,
            }
        }
        Ok(())
    }
}

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Rounds run while the writers write.
    PreCopy,
    /// Writers frozen; the last changes are being sent, then HANDOFF.
    Frozen,
    /// The replica owns the region.
    HandedOff,
}

/// A migration of one region, run by the owner driver that streams it.
pub struct Migration {
    opts: MigrateOptions,
    freezers: Vec<Box<dyn Freezer>>,
    phase: Phase,
    started: Instant,
    frozen_at: Option<Instant>,
    /// Bytes dirty after each round, to see whether the dirty set still shrinks.
    dirty_trend: Vec<u64>,
    /// The freeze came because the downtime estimate fit the target (pre-copy converged).
    converged: bool,
    /// When the handoff was acknowledged.
    handed_off_at: Option<Instant>,
    /// Bytes the owner had sent on the stream then.
    bytes_at_handoff: u64,
    report: Arc<Mutex<MigrationReport>>,
}

impl Migration {
    /// A migration with `opts` that stops writers with `freezers` (none: the caller's writers
    /// have stopped already, or there are none).
    pub fn new(opts: MigrateOptions, freezers: Vec<Box<dyn Freezer>>) -> Self {
        Migration {
            opts,
            freezers,
            phase: Phase::PreCopy,
            started: Instant::now(),
            frozen_at: None,
            dirty_trend: Vec::new(),
            converged: false,
            handed_off_at: None,
            bytes_at_handoff: 0,
            report: Arc::default(),
        }
    }

    /// Adds a way to freeze the writers (e.g. the NBD export the region is written through).
    pub fn freeze_also(&mut self, f: Box<dyn Freezer>) {
        self.freezers.push(f);
    }

    /// The report, filled in as the migration goes; complete once the phase is `HandedOff`.
    pub fn report(&self) -> Arc<Mutex<MigrationReport>> {
        self.report.clone()
    }

    /// Where the migration stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A pre-copy round was acknowledged.
    pub(crate) fn round_acked(&mut self, round: RoundReport) {
        let mut report = self.report.lock().expect("report lock");
        info!(
            "migration: round {} (generation {}): {} chunks, {:.1} MiB in {:.1} ms",
            report.rounds.len() + 1,
            round.generation,
            round.chunks,
            round.bytes as f64 / (1 << 20) as f64,
            round.duration.as_secs_f64() * 1e3
        );
        match self.phase {
            Phase::PreCopy => report.rounds.push(round),
            _ => report.final_round = Some(round),
        }
    }

    /// After a round, with `dirty` bytes found by the detector run that followed it, which took
    /// `found_in`: whether to freeze now, and why. The writers' pause is the run after the freeze
    /// (as long as this one: a hash scan reads the whole region) and the sending of what it finds,
    /// so both count against the target.
    pub(crate) fn should_freeze(&mut self, dirty: u64, found_in: Duration) -> Option<String> {
        self.dirty_trend.push(dirty);
        if dirty == 0 {
            self.converged = true;
            return Some("nothing was dirty".into());
        }
        let report = self.report.lock().expect("report lock");
        // No round yet (the replica held everything): send what is dirty and measure that.
        let last = report.rounds.last()?;
        let secs = last.duration.as_secs_f64().max(1e-6);
        let rate = last.bytes as f64 / secs;
        let dirty_rate = dirty as f64 / secs;
        drop(report);
        self.report.lock().expect("report lock").dirty_rate = dirty_rate;
        let estimate = found_in + Duration::from_secs_f64(dirty as f64 / rate.max(1.0));
        let rounds = self.dirty_trend.len() as u32;
        let t = &self.dirty_trend;
        let stalled = t.len() >= 4 && t[t.len() - 3..].iter().all(|&d| d >= t[t.len() - 4]);
        self.converged = estimate <= self.opts.downtime;
        if self.converged {
            Some(format!(
                "the {:.1} ms to find and send what is dirty fit the {} ms target",
                estimate.as_secs_f64() * 1e3,
                self.opts.downtime.as_millis()
            ))
        } else if rounds >= self.opts.max_rounds {
            Some(format!("{rounds} rounds were the most allowed"))
        } else if stalled {
            Some("the dirty set stopped shrinking".into())
        } else {
            None
        }
    }

    /// Whether the handoff after the freeze is to be a post-copy one.
    pub fn wants_postcopy(&self) -> bool {
        match self.opts.postcopy {
            Postcopy::Never => false,
            Postcopy::Fallback => !self.converged,
            Postcopy::Always => true,
        }
    }

    /// Freezes every writer; on a failure, thaws the ones already frozen.
    pub(crate) fn freeze(&mut self, why: String, dirty: u64) -> io::Result<()> {
        for i in 0..self.freezers.len() {
            if let Err(e) = self.freezers[i].freeze() {
                let what = self.freezers[i].describe();
                for f in self.freezers[..i].iter_mut().rev() {
                    let _ = f.thaw();
                }
                return Err(io::Error::other(format!("freezing {what}: {e}")));
            }
        }
        info!("migration: writers frozen ({why}); sending the last changes, then HANDOFF");
        self.frozen_at = Some(Instant::now());
        self.phase = Phase::Frozen;
        let mut report = self.report.lock().expect("report lock");
        report.froze_because = why;
        report.dirty_at_freeze = dirty;
        Ok(())
    }

    /// The replica acknowledged the handoff at `generation`; in a post-copy handoff it lacked
    /// `stale` chunks, which it now fetches ([`Migration::postcopy_done`] follows).
    pub(crate) fn handed_off(&mut self, generation: u64, stale: Option<u64>, bytes_sent: u64) {
        let now = Instant::now();
        self.phase = Phase::HandedOff;
        self.handed_off_at = Some(now);
        self.bytes_at_handoff = bytes_sent;
        {
            let mut report = self.report.lock().expect("report lock");
            report.generation = generation;
            report.downtime = self.frozen_at.map_or(Duration::ZERO, |t| now - t);
            report.total = now - self.started;
            report.postcopy = stale.map(|stale_chunks| PostcopyReport {
                stale_chunks,
                ..PostcopyReport::default()
            });
        }
        for f in &mut self.freezers {
            if let Err(e) = f.handed_off() {
                warn!("after the handoff, {}: {e}", f.describe());
            }
        }
    }

    /// The new owner holds every chunk after a post-copy handoff; this peer's stream had sent
    /// `bytes_sent` bytes then.
    pub(crate) fn postcopy_done(&mut self, bytes_sent: u64) {
        let now = Instant::now();
        let bytes = bytes_sent.saturating_sub(self.bytes_at_handoff);
        let mut report = self.report.lock().expect("report lock");
        report.total = now - self.started;
        let took = self.handed_off_at.map(|t| now - t);
        let p = report.postcopy.get_or_insert_with(PostcopyReport::default);
        p.bytes = bytes;
        p.duration = took;
        info!(
            "migration: post-copy done: {} stale chunks, {:.1} MiB served in {:.2} s",
            p.stale_chunks,
            bytes as f64 / (1 << 20) as f64,
            took.unwrap_or_default().as_secs_f64()
        );
    }

    /// The region was handed back to this peer, which followed its new owner.
    pub(crate) fn taken_back(&mut self) {
        for f in &mut self.freezers {
            if let Err(e) = f.taken_back() {
                warn!("taking the region back, {}: {e}", f.describe());
            }
        }
    }

    /// The replica refused the handoff: this peer still owns the region and its writers go on.
    pub(crate) fn refused(&mut self) {
        self.phase = Phase::PreCopy;
        for f in self.freezers.iter_mut().rev() {
            if let Err(e) = f.thaw() {
                warn!("thawing {}: {e}", f.describe());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration whose one round sent 64 MiB in 64 ms (1 GiB/s), with a 50 ms target.
    fn after_a_round() -> Migration {
        let opts = MigrateOptions {
            downtime: Duration::from_millis(50),
            max_rounds: 30,
            ..MigrateOptions::default()
        };
        let mut m = Migration::new(opts, Vec::new());
        m.round_acked(RoundReport {
            generation: 1,
            chunks: 1024,
            bytes: 64 << 20,
            duration: Duration::from_millis(64),
        });
        m
    }

    #[test]
    fn the_detector_run_counts_against_the_downtime_target() {
        // 10 MiB dirty is 10 ms to send: it fits after a 5 ms run, not after a 45 ms scan.
        let why = after_a_round().should_freeze(10 << 20, Duration::from_millis(5));
        assert!(why.is_some_and(|w| w.contains("15.0 ms to find and send")));
        let mut m = after_a_round();
        assert_eq!(m.should_freeze(10 << 20, Duration::from_millis(45)), None);
        // Nothing dirty freezes at once, however long the run took.
        assert!(m.should_freeze(0, Duration::from_millis(45)).is_some());
    }

    #[test]
    fn a_dirty_set_that_stops_shrinking_or_the_last_round_freezes() {
        let mut m = after_a_round();
        let scan = Duration::from_millis(45);
        for _ in 0..3 {
            assert_eq!(m.should_freeze(10 << 20, scan), None);
        }
        let why = m.should_freeze(10 << 20, scan);
        assert_eq!(why.as_deref(), Some("the dirty set stopped shrinking"));
        let mut m = after_a_round();
        m.opts.max_rounds = 2;
        assert_eq!(m.should_freeze(20 << 20, scan), None);
        let why = m.should_freeze(10 << 20, scan);
        assert_eq!(why.as_deref(), Some("2 rounds were the most allowed"));
    }

    #[test]
    fn post_copy_as_a_fallback_only_when_pre_copy_did_not_converge() {
        let scan = Duration::from_millis(5);
        let fallback = |m: &mut Migration| m.opts.postcopy = Postcopy::Fallback;
        // Converged: the last changes go before the handoff.
        let mut m = after_a_round();
        fallback(&mut m);
        assert!(m.should_freeze(10 << 20, scan).is_some());
        assert!(!m.wants_postcopy());
        // The rounds ran out with too much dirty: post-copy.
        let mut m = after_a_round();
        fallback(&mut m);
        m.opts.max_rounds = 1;
        assert!(m.should_freeze(500 << 20, scan).is_some());
        assert!(m.wants_postcopy());
        // Always and never mean it, converged or not.
        m.opts.postcopy = Postcopy::Never;
        assert!(!m.wants_postcopy());
        let mut m = after_a_round();
        m.opts.postcopy = Postcopy::Always;
        assert!(m.should_freeze(0, scan).is_some());
        assert!(m.wants_postcopy());
    }
}
