//! What `peer compare` measured, as a table on stdout and as a Markdown report with SVG plots
//! (plotters), ending with a recommendation per use case. Rule: every verdict is computed from
//! the figures of this run by the stated rule; none is written in advance.

use super::writer::Pattern;
use anyhow::{Context, Result};
use memsync_peer::roles::owner::AckedRound;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The report's file name in the output directory.
pub const REPORT: &str = "report.md";

/// Everything one run measured.
#[derive(Default)]
pub struct Run {
    pub command: String,
    pub sizes: Vec<u64>,
    pub rates: Vec<u64>,
    pub time: Duration,
    pub interval: Duration,
    pub chunk_size: u64,
    /// Each detector measured, and how its writer wrote.
    pub supported: Vec<(&'static str, &'static str)>,
    /// Each detector not measured, and why.
    pub unsupported: Vec<(&'static str, String)>,
    pub idle: Vec<Idle>,
    pub cells: Vec<Cell>,
    pub verified: Vec<Verified>,
    /// Detector, size and error of each measurement that failed.
    pub failed: Vec<(&'static str, u64, String)>,
}

/// A detector on an idle region: CPU seconds per second.
pub struct Idle {
    pub detector: &'static str,
    pub size: u64,
    pub owner_cpu: f64,
    pub replica_cpu: f64,
    pub wire: u64,
}

/// A detector under one write workload.
pub struct Cell {
    pub detector: &'static str,
    pub size: u64,
    pub pattern: Pattern,
    /// Bytes per second written.
    pub rate: u64,
    /// CPU seconds per second of the owner (detection and sending; nbd counts nbdfuse too),
    /// without the writer's own.
    pub owner_cpu: f64,
    pub replica_cpu: f64,
    pub writes: u64,
    /// Mean time of one write, and of the same write into untracked memory.
    pub write_ns: f64,
    pub base_ns: f64,
    /// Bytes of chunks sent, and bytes the writer wrote.
    pub wire: u64,
    pub changed: u64,
    /// Bytes per second the writer reached: below `rate` where each write takes longer than
    /// the rate allows.
    pub written: f64,
    pub lag: Lag,
}

impl Cell {
    pub fn slowdown(&self) -> f64 {
        self.write_ns / self.base_ns.max(1.0)
    }

    pub fn wire_ratio(&self) -> f64 {
        self.wire as f64 / self.changed.max(1) as f64
    }

    /// What tracking costs per second: the owner's CPU plus the writer's extra time per write
    /// over untracked memory, times its writes per second.
    pub fn overhead(&self, time: Duration) -> f64 {
        let per_sec = self.writes as f64 / time.as_secs_f64();
        self.owner_cpu + per_sec * (self.write_ns - self.base_ns).max(0.0) / 1e9
    }
}

/// Change → ACK: from the end of each write to the ACK of the first round whose detection began
/// after it (the round that must carry it; a round detected just before may have carried it
/// already, so this errs long, never short). A write that no round detected after its end
/// followed was carried by the last round if that round's detection began after the write did
/// (a mark is made before the writer's call returns, and its ACK may even come first); the
/// final byte-for-byte check of the replica backs that.
pub struct Lag {
    pub p50: Duration,
    pub p99: Duration,
    pub unacked: u64,
}

impl Lag {
    /// `writes`: when each write began and ended; `log`: the acknowledged rounds, in order.
    pub fn of(writes: impl Iterator<Item = (Instant, Instant)>, log: &[AckedRound]) -> Lag {
        let mut lags = Vec::new();
        let mut unacked = 0;
        for (began, ended) in writes {
            let i = log.partition_point(|r| r.detected < ended);
            let acked = match log.get(i) {
                Some(r) => Some(r.acked),
                None => (log.last())
                    .filter(|r| r.detected >= began || r.acked >= ended)
                    .map(|r| r.acked),
            };
            match acked {
                Some(a) => lags.push(a.saturating_duration_since(ended)),
                None => unacked += 1,
            }
        }
        lags.sort_unstable();
        let at = |q: usize| {
            lags.get((lags.len() * q / 100).min(lags.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Lag {
            p50: at(50),
            p99: at(99),
            unacked,
        }
    }
}

/// The final byte-for-byte check of one detector's replica.
pub struct Verified {
    pub detector: &'static str,
    pub size: u64,
    /// The first page that differs.
    pub differs: Option<u64>,
}

fn size_name(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

fn workload(c: &Cell) -> String {
    format!("{}, {} MiB/s", c.pattern.name(), c.rate >> 20)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// A table as aligned text (`md` false) or as Markdown.
fn table(head: &[&str], rows: &[Vec<String>], md: bool) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<0$}", w[i]))
            .collect();
        match md {
            true => format!("| {} |\n", padded.join(" | ")),
            false => format!("{}\n", padded.join("  ").trim_end()),
        }
    };
    let mut out = line(head.to_vec());
    if md {
        out += &line(w.iter().map(|_| "---").collect());
    }
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

const IDLE_HEAD: [&str; 5] = [
    "detector",
    "region",
    "owner CPU (ms/s)",
    "replica CPU (ms/s)",
    "bytes sent",
];
const CELL_HEAD: [&str; 12] = [
    "detector",
    "region",
    "workload",
    "written (MiB/s)",
    "owner CPU (ms/s)",
    "replica CPU (ms/s)",
    "µs per write",
    "writer slowdown (× untracked memory)",
    "wire / changed bytes",
    "change → ACK p50 (ms)",
    "p99 (ms)",
    "overhead (ms/s)",
];

fn idle_rows(run: &Run) -> Vec<Vec<String>> {
    (run.idle.iter())
        .map(|i| {
            vec![
                i.detector.into(),
                size_name(i.size),
                format!("{:.2}", i.owner_cpu * 1e3),
                format!("{:.2}", i.replica_cpu * 1e3),
                i.wire.to_string(),
            ]
        })
        .collect()
}

fn cell_rows(run: &Run) -> Vec<Vec<String>> {
    (run.cells.iter())
        .map(|c| {
            vec![
                c.detector.into(),
                size_name(c.size),
                workload(c),
                format!("{:.1}", c.written / (1 << 20) as f64),
                format!("{:.1}", c.owner_cpu * 1e3),
                format!("{:.1}", c.replica_cpu * 1e3),
                format!("{:.2}", c.write_ns / 1e3),
                format!("{:.1}", c.slowdown()),
                format!("{:.2}", c.wire_ratio()),
                ms(c.lag.p50),
                ms(c.lag.p99),
                format!("{:.1}", c.overhead(run.time) * 1e3),
            ]
        })
        .collect()
}

/// What stdout shows: both tables and the recommendations.
pub fn text(run: &Run) -> String {
    let mut out = String::new();
    out += "Idle:\n";
    out += &table(&IDLE_HEAD, &idle_rows(run), false);
    out += "\nUnder writes:\n";
    out += &table(&CELL_HEAD, &cell_rows(run), false);
    for (d, why) in &run.unsupported {
        let _ = writeln!(out, "not measured: {d}: {why}");
    }
    for (d, size, e) in &run.failed {
        let _ = writeln!(out, "failed: {d} at {}: {e}", size_name(*size));
    }
    out += "\nRecommendations:\n";
    for r in recommend(run) {
        let _ = writeln!(out, "- {}", r.replace("**", ""));
    }
    out
}

/// Writes `report.md` and its plots into `dir`.
pub fn write(run: &Run, dir: &Path) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Change detectors compared on this machine\n");
    let _ = writeln!(md, "Made by `{}`.\n", run.command);
    let _ = writeln!(
        md,
        "Machine: {}. Regions of {}, written at {} for {:.1} s per workload in 4 KiB pages; \
         detector interval {} ms, {} chunks. The replica is a `peer serve` process on loopback \
         QUIC; the owner and the writer run in this process.\n",
        machine(),
        join(run.sizes.iter().map(|&s| size_name(s))),
        join(run.rates.iter().map(|r| format!("{} MiB/s", r >> 20))),
        run.time.as_secs_f64(),
        run.interval.as_millis(),
        size_name(run.chunk_size),
    );
    md += "| detector | its writer |\n| --- | --- |\n";
    for (d, how) in &run.supported {
        let _ = writeln!(md, "| {d} | {how} |");
    }
    for (d, why) in &run.unsupported {
        let _ = writeln!(md, "| {d} | not measured: {why} |");
    }
    md += "\n## Recommendations\n\n";
    for r in recommend(run) {
        let _ = writeln!(md, "- {r}");
    }
    md += "\nEach verdict takes the detectors that serve the use case, at the largest region and \
           the highest rate measured, averages the named figure over the named patterns, and \
           picks the lowest; detectors within 10% of it are named beside it. Overhead is the \
           owner's CPU per second plus the writer's extra time per write (over untracked memory) \
           times its writes per second.\n";
    md += "\n## Idle\n\n";
    md += &table(&IDLE_HEAD, &idle_rows(run), true);
    md += "\n## Under writes\n\n";
    md += &table(&CELL_HEAD, &cell_rows(run), true);
    md += "\nOwner CPU is this process's CPU time less the writer thread's (for nbd, plus \
           nbdfuse's, the bridge its writes cross); change → ACK runs from the end of a write \
           to the ACK of the first round whose detection began after it.\n";
    md += "\n## Replicas\n\n";
    for v in &run.verified {
        let _ = match v.differs {
            None => writeln!(
                md,
                "- {} ({}): byte-identical to the region after every workload",
                v.detector,
                size_name(v.size)
            ),
            Some(at) => writeln!(
                md,
                "- {} ({}): **differs** from the region at byte {at}",
                v.detector,
                size_name(v.size)
            ),
        };
    }
    for (d, size, e) in &run.failed {
        let _ = writeln!(md, "- {d} ({}): **failed**: {e}", size_name(*size));
    }
    md += "\n## Plots\n\n";
    for (file, title) in plots(run, dir)? {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    let path = dir.join(REPORT);
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let uname = rustix::system::uname();
    format!(
        "Linux {}, {cores} cores of {cpu}",
        uname.release().to_string_lossy()
    )
}

#[derive(Clone, Copy)]
enum Figure {
    Overhead,
    Slowdown,
    P99,
    Wire,
}

impl Figure {
    fn of(self, c: &Cell, time: Duration) -> f64 {
        match self {
            Figure::Overhead => c.overhead(time) * 1e3,
            Figure::Slowdown => c.slowdown(),
            Figure::P99 => c.lag.p99.as_secs_f64() * 1e3,
            Figure::Wire => c.wire_ratio(),
        }
    }

    fn short(self, v: f64) -> String {
        match self {
            Figure::Overhead => format!("{v:.1} ms/s"),
            Figure::Slowdown => format!("{v:.1}×"),
            Figure::P99 => format!("{v:.1} ms"),
            Figure::Wire => format!("{v:.2}"),
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Figure::Overhead => format!("{v:.1} ms/s of overhead"),
            Figure::Slowdown => format!("{v:.1}× the time of a write to untracked memory"),
            Figure::P99 => format!("a change → ACK p99 of {v:.1} ms"),
            Figure::Wire => format!("{v:.2} bytes sent per byte changed"),
        }
    }
}

/// The recommendation per use case, from the figures.
pub fn recommend(run: &Run) -> Vec<String> {
    use Pattern::*;
    const MEMORY: &[&str] = &["hash", "uffd"];
    const FILES: &[&str] = &["inotify", "fuse", "nbd"];
    const MOUNTS: &[&str] = &["fuse", "nbd"];
    const ANY: &[&str] = &["hash", "uffd", "inotify", "fuse", "nbd"];
    let cases: [(&str, &[&str], &[Pattern], Figure); 5] = [
        (
            "Memory written in place (a VM's RAM, a simulation, a cache)",
            MEMORY,
            &[Random, Hotset],
            Figure::Overhead,
        ),
        (
            "A file written with write(2) (a database's data file, a log)",
            FILES,
            &[Random, Sequential],
            Figure::Overhead,
        ),
        (
            "An unmodified application writing through a mount (memsync's FUSE file against \
             its NBD export through nbdfuse)",
            MOUNTS,
            &[Random, Sequential, Hotset],
            Figure::Slowdown,
        ),
        (
            "Failover that loses the least (the shortest lag from a write to the replica's ACK)",
            ANY,
            &[Random],
            Figure::P99,
        ),
        (
            "A thin link (a WAN): the fewest bytes on the wire",
            ANY,
            &[Random, Hotset],
            Figure::Wire,
        ),
    ];
    let size = run.sizes.iter().copied().max().unwrap_or(0);
    let rate = run.rates.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for (title, candidates, patterns, figure) in cases {
        let mut scored: Vec<(&str, f64)> = Vec::new();
        let mut short = Vec::new();
        for &d in candidates {
            let cells: Vec<&Cell> = (run.cells.iter())
                .filter(|c| c.detector == d && c.size == size && c.rate == rate)
                .filter(|c| patterns.contains(&c.pattern))
                .collect();
            if cells.is_empty() {
                continue;
            }
            let n = cells.len() as f64;
            scored.push((
                d,
                cells.iter().map(|c| figure.of(c, run.time)).sum::<f64>() / n,
            ));
            let written = cells.iter().map(|c| c.written).sum::<f64>() / n;
            if written < 0.9 * rate as f64 {
                short.push(format!("{d} wrote {:.1} MiB/s", written / (1 << 20) as f64));
            }
        }
        let at = format!(
            "{} at {} MiB/s, {}",
            join(patterns.iter().map(|p| p.name().to_owned())),
            rate >> 20,
            size_name(size)
        );
        let mut line = verdict(title, &scored, figure, &at, candidates);
        if !short.is_empty() {
            let _ = write!(
                line,
                " Short of {} MiB/s, each write taking too long, so that their figures are for a \
                 lighter load: {}.",
                rate >> 20,
                short.join(", ")
            );
        }
        out.push(line);
    }
    // Idle cost: every detector, largest region.
    let idle: Vec<(&str, f64)> = (run.idle.iter())
        .filter(|i| i.size == size)
        .map(|i| (i.detector, i.owner_cpu * 1e3))
        .collect();
    out.push(idle_verdict(&idle, size));
    out
}

fn ranked<'a>(scored: &[(&'a str, f64)]) -> Vec<(&'a str, f64)> {
    let mut s = scored.to_vec();
    s.sort_by(|a, b| a.1.total_cmp(&b.1));
    s
}

fn verdict(
    title: &str,
    scored: &[(&str, f64)],
    figure: Figure,
    at: &str,
    candidates: &[&str],
) -> String {
    let s = ranked(scored);
    let missing: Vec<&str> = (candidates.iter())
        .filter(|d| !scored.iter().any(|(s, _)| s == *d))
        .copied()
        .collect();
    let not_here = match missing.is_empty() {
        true => String::new(),
        false => format!(" ({} not measured here)", missing.join(", ")),
    };
    let Some(&(best, v)) = s.first() else {
        return format!(
            "**{title}**: none of {} was measured here.",
            candidates.join(", ")
        );
    };
    let close: Vec<&str> = (s[1..].iter())
        .filter(|(_, w)| *w <= v * 1.1 + 1e-9)
        .map(|(d, _)| *d)
        .collect();
    let others = join(
        s[1..]
            .iter()
            .map(|(d, w)| format!("{d} {}", figure.short(*w))),
    );
    let pick = match close.is_empty() {
        true => format!("**{best}**"),
        false => format!("**{best}** (or {}, within 10%)", close.join(", ")),
    };
    match others.is_empty() {
        true => format!(
            "**{title}**: {pick}, with {} ({at}){not_here}.",
            figure.show(v)
        ),
        false => format!(
            "**{title}**: {pick}, with {}; against {others} ({at}){not_here}.",
            figure.show(v)
        ),
    }
}

fn idle_verdict(idle: &[(&str, f64)], size: u64) -> String {
    let s = ranked(idle);
    let title = "A region idle most of the time (a standby copy, a cold cache)";
    let Some(&(best, v)) = s.first() else {
        return format!("**{title}**: no detector was measured here.");
    };
    let others = join(s[1..].iter().map(|(d, w)| format!("{d} {w:.2} ms/s")));
    format!(
        "**{title}**: **{best}**, with {v:.2} ms of CPU per second while nothing changes; \
         against {others} (idle, {}).",
        size_name(size)
    )
}

/// Draws the plots into `dir`: (file name, title) of each.
fn plots(run: &Run, dir: &Path) -> Result<Vec<(String, String)>> {
    let detectors: Vec<&str> = run.supported.iter().map(|(d, _)| *d).collect();
    let multi_size = run.sizes.len() > 1;
    let label = |c: &Cell| match multi_size {
        true => format!("{} · {}", workload(c), size_name(c.size)),
        false => workload(c),
    };
    let mut groups: Vec<String> = Vec::new();
    for c in &run.cells {
        if !groups.contains(&label(c)) {
            groups.push(label(c));
        }
    }
    let series = |f: &dyn Fn(&Cell) -> f64| -> Vec<(&str, Vec<Option<f64>>)> {
        (detectors.iter())
            .map(|&d| {
                let vals = (groups.iter())
                    .map(|g| {
                        (run.cells.iter())
                            .find(|c| c.detector == d && label(c) == *g)
                            .map(f)
                    })
                    .collect();
                (d, vals)
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut plot = |file: &str, title: &str, axis: &str, s: Vec<(&str, Vec<Option<f64>>)>, log| {
        bars(&dir.join(file), title, axis, &groups, &s, log)
            .with_context(|| format!("drawing {file}"))?;
        out.push((file.to_owned(), title.to_owned()));
        anyhow::Ok(())
    };
    plot(
        "cpu.svg",
        "Owner CPU under writes",
        "ms of CPU per second",
        series(&|c| c.owner_cpu * 1e3),
        false,
    )?;
    plot(
        "lag.svg",
        "Change → ACK, p99",
        "ms (log scale)",
        series(&|c| c.lag.p99.as_secs_f64() * 1e3),
        true,
    )?;
    plot(
        "slowdown.svg",
        "Writer slowdown against untracked memory",
        "× (log scale)",
        series(&|c| c.slowdown()),
        true,
    )?;
    plot(
        "wire.svg",
        "Bytes sent per byte changed",
        "ratio",
        series(&|c| c.wire_ratio()),
        false,
    )?;
    Ok(out)
}

/// A grouped bar chart: one group per workload, one bar per detector; `log` draws log10 of the
/// values on a linear axis labelled with the values.
fn bars(
    path: &Path,
    title: &str,
    axis: &str,
    groups: &[String],
    series: &[(&str, Vec<Option<f64>>)],
    log: bool,
) -> Result<()> {
    use plotters::prelude::*;
    let map = |v: f64| if log { v.max(1e-3).log10() } else { v };
    let values = series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| {
        (lo.min(map(v)), hi.max(map(v)))
    });
    let (lo, hi) = match (log, lo <= hi) {
        (_, false) => (0.0, 1.0),
        // Headroom above the highest bar for the legend.
        (true, true) => (lo.floor().min(0.0), (hi + 0.8).max(lo.floor() + 1.0)),
        (false, true) => (0.0, (hi * 1.5).max(1e-6)),
    };
    let width = (groups.len() * 150 + 180).max(640) as u32;
    let root = SVGBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, lo..hi)?;
    let fmt = |v: &f64| {
        let v = if log { 10f64.powf(*v) } else { *v };
        match v.abs() {
            a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
            a if a >= 1.0 => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&fmt)
        .y_desc(axis)
        .draw()?;
    let w = 0.8 / series.len().max(1) as f64;
    for (k, (name, vals)) in series.iter().enumerate() {
        let colour = Palette99::pick(k).mix(0.9);
        let rects = vals.iter().enumerate().filter_map(|(i, v)| {
            let x0 = i as f64 + 0.1 + k as f64 * w;
            v.map(|v| Rectangle::new([(x0, lo), (x0 + w * 0.9, map(v))], colour.filled()))
        });
        chart
            .draw_series(rects)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    let style = TextStyle::from(("sans-serif", 12).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ),
    );
    for (i, g) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, lo));
        root.draw(&Text::new(g.clone(), (x, y + 8), style.clone()))?;
    }
    root.present()?;
    Ok(())
}
