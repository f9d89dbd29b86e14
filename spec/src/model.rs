//! An exhaustive model check of the protocol: one owner, two replicas (one lazy), connection
//! losses, owner writes racing sync rounds under both detectors, lazy fetches and an ownership
//! handoff (plain or post-copy, and a plain one back), explored with `stateright` while the real
//! [`memsync_protocol::Owner`] and [`memsync_protocol::Replica`] check every step.
//! `spec/MODEL.md` describes the model, the properties and the results.

pub mod fencing;
pub mod mirror;
pub mod real;
pub mod system;

pub use system::{Action, Config, Detector, MemsyncModel, Status, Sys, Validation, Variant};

use stateright::{Checker, HasDiscoveries, Model, Property};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A property the checker found violated, with the path that shows it.
#[derive(Debug)]
pub struct Counterexample {
    pub property: &'static str,
    /// One line per step, then the final state.
    pub trace: Vec<String>,
}

/// The outcome of one check.
#[derive(Debug)]
pub struct Report {
    pub config: Config,
    pub states: usize,
    pub generated: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    /// The longest quiescent continuation from any reachable state.
    pub quiescent_bound: u32,
    /// The events of [`system::SEEN`] the exploration saw happen, and the others.
    pub seen: Vec<&'static str>,
    pub not_seen: Vec<&'static str>,
    pub counterexamples: Vec<Counterexample>,
}

impl Report {
    pub fn counterexample(&self, property: &str) -> Option<&Counterexample> {
        self.counterexamples.iter().find(|c| c.property == property)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bounds: {}", self.config.describe())?;
        writeln!(
            f,
            "states: {} distinct ({} generated), depth {}, quiescent continuations ≤ {} steps, {:.1?}",
            self.states, self.generated, self.max_depth, self.quiescent_bound, self.elapsed
        )?;
        for s in &self.seen {
            writeln!(f, "  seen: {s}")?;
        }
        for s in &self.not_seen {
            writeln!(f, "  not seen: {s}")?;
        }
        for c in &self.counterexamples {
            writeln!(f, "counterexample to: {}", c.property)?;
            for line in &c.trace {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// A shortest path from the initial state to a state where `property` fails, found
/// breadth-first: each state with the action taken from it (`None` for the last).
fn shortest_path(
    model: &MemsyncModel,
    property: &Property<MemsyncModel>,
) -> Option<Vec<(Sys, Option<Action>)>> {
    let init = model.initial();
    let mut seen = HashSet::from([system::fingerprint(&init)]);
    let mut states: Vec<(Sys, Option<(usize, Action)>)> = vec![(init, None)];
    let mut next = 0;
    while next < states.len() {
        let s = states[next].0.clone();
        if !(property.condition)(model, &s) {
            let mut path = vec![(s, None)];
            let mut at = next;
            while let Some((parent, action)) = states[at].1.clone() {
                path.push((states[parent].0.clone(), Some(action)));
                at = parent;
            }
            path.reverse();
            return Some(path);
        }
        let mut actions = Vec::new();
        model.actions(&s, &mut actions);
        for a in actions {
            if let Some(n) = model.next_state(&s, a.clone()) {
                if seen.insert(system::fingerprint(&n)) {
                    states.push((n, Some((next, a))));
                }
            }
        }
        next += 1;
    }
    None
}

/// Runs `actions` from the initial state (each must be enabled), checking every step on the real
/// machines; returns the states passed through.
pub fn replay(mut cfg: Config, actions: &[Action]) -> Vec<Sys> {
    cfg.validation = Validation::Every;
    let model = MemsyncModel::new(cfg);
    let mut s = model.initial();
    let mut states = vec![s.clone()];
    for a in actions {
        let mut enabled = Vec::new();
        model.enabled(&s, &mut enabled);
        assert!(
            enabled.contains(a),
            "{a:?} is not enabled in {}",
            s.summary()
        );
        s = model.step(&s, a, true);
        states.push(s.clone());
    }
    states
}

/// Runs the checker on `cfg` to completion.
pub fn check(cfg: Config) -> Report {
    check_until(cfg, None)
}

/// Runs the checker on `cfg` until it finds a counterexample to `property` (or to completion).
pub fn check_until(cfg: Config, property: Option<&'static str>) -> Report {
    let start = Instant::now();
    let threads = cfg.threads;
    let model = MemsyncModel::new(cfg.clone());
    let mut builder = model.checker().threads(threads);
    if let Some(p) = property {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([p])));
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = start.elapsed();
    let model = checker.model();
    let mut counterexamples = Vec::new();
    let discoveries = checker.discoveries();
    let mut names: Vec<_> = discoveries.keys().copied().collect();
    names.sort();
    let properties = model.properties();
    for name in names {
        // stateright's discovery paths are not always the shortest: search one breadth-first.
        let property = properties
            .iter()
            .find(|p| p.name == name)
            .expect("a property");
        let path =
            shortest_path(model, property).unwrap_or_else(|| discoveries[name].clone().into_vec());
        let mut trace = Vec::new();
        for w in path.windows(2) {
            if let (before, Some(action)) = &w[0] {
                trace.push(system::describe(before, action, &w[1].0));
            }
        }
        let last = &path.last().expect("a path has a state").0;
        trace.push(format!("state: {}", last.summary()));
        if name == system::LIVENESS {
            trace.push("quiescent continuation from here:".into());
            let mut before = last.clone();
            for (a, s) in model.quiescent_counterexample(last) {
                trace.push(format!("  {}", system::describe(&before, &a, &s)));
                before = s;
            }
            trace.push(format!("  stuck in: {}", before.summary()));
        }
        counterexamples.push(Counterexample {
            property: name,
            trace,
        });
    }
    let seen_bits = model.seen.load(Ordering::Relaxed);
    let (seen, not_seen): (BTreeSet<_>, BTreeSet<_>) =
        (0..system::SEEN.len()).partition(|i| seen_bits & 1 << i != 0);
    Report {
        config: cfg,
        states: checker.unique_state_count(),
        generated: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        quiescent_bound: model.max_quiescent_steps.load(Ordering::Relaxed),
        seen: seen.into_iter().map(|i| system::SEEN[i]).collect(),
        not_seen: not_seen.into_iter().map(|i| system::SEEN[i]).collect(),
        counterexamples,
    }
}
