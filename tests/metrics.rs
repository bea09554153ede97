//! `GET /metrics` of the real daemon, read by a real Prometheus parser:
//! the Python `prometheus_client` package's, run as `python3 -c` with the
//! scrape on stdin. Each test sends a known mix of requests, then checks
//! that every count in the scrape is exactly what was sent, and that
//! nothing else was counted.
//!
//! CI installs the parser (`.ci/run`); without it these tests fail and say
//! how to install it.

mod daemon_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use daemon_support::{
    exchange, get, netconf, pod_env, post, post_in_background, post_request, wait_for, Daemon,
    Fixture, FAILS, GATE, NO_SECRET, OK,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The parser

/// Turns a scrape into samples with the Python client's parser, printed
/// as JSON: one object per sample, with its family's name and type.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "type": family.type,
                        "name": sample.name, "labels": sample.labels,
                        "value": sample.value})
json.dump(samples, sys.stdout)
"#;

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family_type: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape as the parser read it.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The samples called `name`, by their labels (as `k=v,k=v`).
    fn series(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .map(|sample| {
                let labels: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                (labels.join(","), sample.value)
            })
            .collect()
    }

    /// The one sample called `name` without labels.
    fn value(&self, name: &str) -> f64 {
        match self.series(name).get("") {
            Some(value) => *value,
            None => panic!("no sample {name} in the scrape:\n{}", self.text),
        }
    }

    /// The type of the family `name` belongs to.
    fn family_type(&self, name: &str) -> &str {
        self.samples
            .iter()
            .find(|sample| sample.name == name)
            .map(|sample| sample.family_type.as_str())
            .unwrap_or_else(|| panic!("no sample {name} in the scrape:\n{}", self.text))
    }

    /// Fails unless the samples called `name` are exactly `want`.
    fn assert_series(&self, name: &str, want: &[(&str, f64)]) {
        let want: BTreeMap<String, f64> = want.iter().map(|(l, v)| (l.to_string(), *v)).collect();
        assert_eq!(
            self.series(name),
            want,
            "samples of {name}; the scrape:\n{}",
            self.text
        );
    }
}

/// Checks that the parser is installed, failing the test with what to do
/// when it is not.
fn require_parser() {
    let check = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    match check {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "these tests read /metrics with the Python prometheus_client parser, which is \
             missing: pip install prometheus-client\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!(
            "these tests need python3 with the prometheus_client package \
             (pip install prometheus-client): cannot run python3: {e}"
        ),
    }
}

/// Scrapes `GET /metrics` and parses it.
fn scrape(socket: &Path) -> Scrape {
    let answer = get(socket, "/metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    parse(&answer.body)
}

fn parse(text: &str) -> Scrape {
    require_parser();
    let mut python = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused the scrape: {}\nthe scrape:\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );

    let parsed: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let samples = parsed
        .iter()
        .map(|sample| Sample {
            family_type: sample["type"].as_str().unwrap().to_owned(),
            name: sample["name"].as_str().unwrap().to_owned(),
            labels: sample["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: sample["value"].as_f64().unwrap(),
        })
        .collect();
    Scrape {
        text: text.to_owned(),
        samples,
    }
}

// ---------------------------------------------------------------------------
// Counts

#[test]
fn counts_match_the_requests_sent() {
    require_parser();
    let fixture = Fixture::new("metrics");
    fixture.plugin("ok", OK).plugin("fails", FAILS);
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();

    // The mix: 3 ADDs that succeed, 2 that fail, 1 DEL, 1 body that does
    // not decode, 1 GET of a path that does not exist.
    for container in ["m1", "m2", "m3"] {
        let answer = post(
            &socket,
            pod_env("ADD", container, "p", NO_SECRET),
            &netconf("ok"),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    for container in ["m4", "m5"] {
        let env = pod_env("ADD", container, "p", NO_SECRET);
        let answer = post(&socket, env, &netconf("fails"));
        assert_eq!(answer.json()["code"], 7, "{answer:?}");
    }
    let answer = post(
        &socket,
        pod_env("DEL", "m1", "p", NO_SECRET),
        &netconf("ok"),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = exchange(&socket, &post_request(b"{not json"));
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(get(&socket, "/nope").status, 404);

    let scrape = scrape(&socket);

    // The library's counts.
    scrape.assert_series(
        "cniserver_requests_total",
        &[
            ("command=ADD,outcome=success", 3.0),
            ("command=ADD,outcome=error", 2.0),
            ("command=DEL,outcome=success", 1.0),
            ("command=undecoded,outcome=rejected", 1.0),
        ],
    );
    assert_eq!(scrape.family_type("cniserver_requests_total"), "counter");
    scrape.assert_series(
        "cniserver_request_duration_seconds_count",
        &[("command=ADD", 5.0), ("command=DEL", 1.0)],
    );
    assert_eq!(
        scrape.family_type("cniserver_request_duration_seconds_count"),
        "histogram"
    );
    scrape.assert_series("cniserver_http_errors_total", &[("status=404", 1.0)]);
    assert_eq!(scrape.value("cniserver_requests_in_flight"), 0.0);
    // The scrape's own connection.
    assert_eq!(scrape.value("cniserver_connections_open"), 1.0);

    // The daemon's.
    scrape.assert_series(
        "cniserverd_plugin_runs_total",
        &[
            ("plugin=ok,result=success", 4.0),
            ("plugin=fails,result=error", 2.0),
        ],
    );
    scrape.assert_series(
        "cniserverd_plugin_duration_seconds_count",
        &[("plugin=ok", 4.0), ("plugin=fails", 2.0)],
    );
    assert_eq!(
        scrape.family_type("cniserverd_plugin_duration_seconds_count"),
        "histogram"
    );
    let inf_buckets: Vec<(String, f64)> = scrape
        .series("cniserverd_plugin_duration_seconds_bucket")
        .into_iter()
        .filter(|(labels, _)| labels.contains("le=+Inf"))
        .collect();
    assert_eq!(
        inf_buckets,
        [
            ("le=+Inf,plugin=fails".to_owned(), 2.0),
            ("le=+Inf,plugin=ok".to_owned(), 4.0)
        ],
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value("cniserverd_requests_queued"), 0.0);
    assert_eq!(scrape.value("cniserverd_workers_busy"), 0.0);
    assert_eq!(scrape.value("cniserverd_requests_cancelled_total"), 0.0);
    scrape.assert_series(
        "cniserverd_requests_rejected_total",
        &[
            ("reason=queue_full", 0.0),
            ("reason=shutting_down", 0.0),
            ("reason=expired", 0.0),
        ],
    );

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
}

#[test]
fn queue_gauges_cancellations_and_a_full_queue_are_counted() {
    require_parser();
    let fixture = Fixture::new("metrics-queue");
    fixture.plugin("gate", GATE);
    let daemon = Daemon::start(&fixture, &["--workers", "1", "--max-queue", "1"]);
    let socket = fixture.socket();
    let gate = || netconf("gate");

    // The one worker runs q1's ADD; q2's ADD waits behind it.
    let running = post_in_background(&socket, pod_env("ADD", "q1", "p", NO_SECRET), gate());
    wait_for("q1 to start", || fixture.gate_started("q1"));
    let queued = post_in_background(&socket, pod_env("ADD", "q2", "p", NO_SECRET), gate());
    wait_for("q2 to wait in the queue", || {
        scrape(&socket).value("cniserverd_requests_queued") == 1.0
    });
    let busy = scrape(&socket);
    assert_eq!(busy.value("cniserverd_workers_busy"), 1.0, "{}", busy.text);
    assert_eq!(busy.value("cniserverd_workers"), 1.0, "{}", busy.text);
    assert_eq!(
        busy.value("cniserver_requests_in_flight"),
        2.0,
        "{}",
        busy.text
    );

    // The queue is full: q3 is refused at once.
    let full = post(&socket, pod_env("ADD", "q3", "p", NO_SECRET), &gate());
    assert_eq!(full.json()["code"], 11, "{full:?}");
    // A DEL for q2 cancels its queued ADD, and waits in its place.
    let del = post_in_background(&socket, pod_env("DEL", "q2", "p", NO_SECRET), gate());
    let cancelled = queued.join().unwrap();
    assert_eq!(cancelled.json()["code"], 11, "{cancelled:?}");

    fixture.release("q1");
    fixture.release("q2");
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(del.join().unwrap().status, 200);

    let scrape = scrape(&socket);
    assert_eq!(scrape.value("cniserverd_requests_cancelled_total"), 1.0);
    scrape.assert_series(
        "cniserverd_requests_rejected_total",
        &[
            ("reason=queue_full", 1.0),
            ("reason=shutting_down", 0.0),
            ("reason=expired", 0.0),
        ],
    );
    assert_eq!(scrape.value("cniserverd_requests_queued"), 0.0);
    assert_eq!(scrape.value("cniserverd_workers_busy"), 0.0);
    // Only q1's ADD and q2's DEL ran.
    scrape.assert_series(
        "cniserverd_plugin_runs_total",
        &[("plugin=gate,result=success", 2.0)],
    );
    scrape.assert_series(
        "cniserver_requests_total",
        &[
            ("command=ADD,outcome=success", 1.0),
            ("command=ADD,outcome=error", 2.0),
            ("command=DEL,outcome=success", 1.0),
        ],
    );

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
}

#[test]
fn a_scrape_parses_before_any_request() {
    require_parser();
    let fixture = Fixture::new("metrics-empty");
    let daemon = Daemon::start(&fixture, &["--workers", "3"]);

    let scrape = scrape(&fixture.socket());
    assert_eq!(scrape.value("cniserverd_workers"), 3.0);
    scrape.assert_series("cniserver_requests_total", &[]);
    scrape.assert_series("cniserverd_plugin_runs_total", &[]);
    scrape.assert_series("cniserverd_plugin_duration_seconds_count", &[]);

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
}
