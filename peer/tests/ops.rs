//! What a running peer tells its operator: `peer status` (table and JSON) read from the control
//! sockets of a real serve and sync, before and after a kill -9 of the sync, and the metrics
//! endpoint scraped by a real HTTP client (python's urllib) and parsed.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn status(ctl: &std::path::Path, json: bool) -> (String, String) {
    let mut c = Command::new(BIN);
    c.arg("status").env("MEMSYNC_CONTROL_DIR", ctl);
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The regions `peer status --json` reports for the process running `command`.
fn regions_of(all: &Value, command: &str) -> Vec<Value> {
    all.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["command"] == command)
        .flat_map(|p| p["regions"].as_array().unwrap().clone())
        .collect()
}

/// Scrapes `http://addr/metrics` and returns the value of the sample `series` (name and labels).
fn scrape(addr: &str) -> String {
    let code = format!(
        "import urllib.request; r = urllib.request.urlopen('http://{addr}/metrics'); \
         assert r.status == 200, r.status; \
         assert r.headers['Content-Type'].startswith('application/openmetrics-text'); \
         print(r.read().decode())"
    );
    python(&code)
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn status_and_metrics_of_a_running_sync_and_after_its_kill() {
    let w = World::new();
    let ctl = w.path("ctl");
    let (m_serve, m_sync) = (
        format!("127.0.0.1:{}", free_tcp_port()),
        format!("127.0.0.1:{}", free_tcp_port()),
    );
    std::env::set_var("MEMSYNC_CONTROL_DIR", &ctl);
    let _serve = w.serve_with(&["--metrics", &m_serve]);
    let file = w.random_file("data", 4 << 20);
    let mut sync = w.sync(&file, &["--metrics", &m_sync, "--interval", "100"]);
    sync.wait_for("acknowledged", Duration::from_secs(30));

    let (out, _) = status(&ctl, true);
    let all: Value = serde_json::from_str(&out).unwrap();
    let owner = regions_of(&all, "sync");
    assert_eq!(owner.len(), 1, "{out}");
    assert_eq!(owner[0]["region"], "data");
    assert_eq!(owner[0]["role"], "owner");
    assert_eq!(owner[0]["state"], "streaming", "{out}");
    assert!(owner[0]["acked"].as_u64().unwrap() >= 1);
    assert!(owner[0]["bytes_sent"].as_u64().unwrap() >= 4 << 20);
    assert!(owner[0]["peer"].as_str().unwrap().contains(&w.addr()));
    let replica = regions_of(&all, "serve");
    assert_eq!(replica.len(), 1, "{out}");
    assert_eq!(replica[0]["role"], "replica");
    assert_eq!(replica[0]["state"], "receiving", "{out}");
    assert!(replica[0]["generation"].as_u64().unwrap() >= 1);
    assert!(replica[0]["bytes_received"].as_u64().unwrap() >= 4 << 20);
    assert_eq!(replica[0]["peer"], w.owner_fp.as_str());

    let (table, _) = status(&ctl, false);
    assert!(table.starts_with("PID"), "{table}");
    assert!(
        table.lines().filter(|l| l.contains(" data ")).count() == 2,
        "{table}"
    );

    // The metrics of both sides, scraped over HTTP.
    let owner_m = scrape(&m_sync);
    assert!(owner_m.trim_end().ends_with("# EOF"), "{owner_m}");
    let labels = |role: &str| format!("{{region=\"data\",role=\"{role}\"}}");
    let sent = sample(
        &owner_m,
        &format!("memsync_bytes_sent_total{}", labels("owner")),
    )
    .unwrap();
    assert!(sent >= (4 << 20) as f64, "{owner_m}");
    assert!(
        sample(
            &owner_m,
            &format!("memsync_rounds_total{}", labels("owner"))
        )
        .unwrap()
            >= 1.0
    );
    let lag_count = format!("memsync_ack_lag_seconds_count{}", labels("owner"));
    assert!(sample(&owner_m, &lag_count).unwrap() >= 1.0, "{owner_m}");
    let replica_m = scrape(&m_serve);
    let got = format!("memsync_bytes_received_total{}", labels("replica"));
    assert!(
        sample(&replica_m, &got).unwrap() >= (4 << 20) as f64,
        "{replica_m}"
    );

    // kill -9 of the sync: its socket is found stale (and removed); the replica shows the
    // stream gone once the connection times out.
    sync.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reported_stale = false;
    loop {
        let (out, err) = status(&ctl, true);
        reported_stale |= err.contains("nobody answers");
        let all: Value = serde_json::from_str(&out).unwrap();
        let gone = regions_of(&all, "sync").is_empty();
        let replica = regions_of(&all, "serve");
        if gone && replica.len() == 1 && replica[0]["state"] == "disconnected" {
            break;
        }
        assert!(Instant::now() < deadline, "{out}\n{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reported_stale,
        "the killed sync's socket was never reported stale"
    );
    let socks: Vec<_> = std::fs::read_dir(&ctl).unwrap().collect();
    assert_eq!(socks.len(), 1, "the stale socket was not removed");
}
