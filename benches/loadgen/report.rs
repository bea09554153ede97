//! The suite's tables, in markdown, and the targets checked
//! against them.
//!
//! Sizes are in KB and MB of 1,000 bytes, as the targets state them; memory
//! is in KiB and MiB, as `/proc` counts it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::exec;
use crate::suite::{LoadSample, ServerResults, SuiteConfig, SuiteResults};

/// The name of the `/bin/true` row of the exec timing.
pub const SPAWN_FLOOR: &str = "/bin/true (process start alone)";

/// The peers the targets name, as the script names them (their folder
/// names in `shared/peers/`).
const FLOOR: &str = "rust-mio-floor";
const HYPER: &str = "rust-hyper";
const GO: &str = "go-nethttp";
const ONESHOT: &str = "rust-oneshot-client";

/// Renders every table.
pub fn render(config: &SuiteConfig, results: &SuiteResults) -> String {
    let mut out = String::new();
    load_table(&mut out, config, results);
    ratio_table(&mut out, results);
    idle_table(&mut out, results);
    exec_table(&mut out, results);
    target_table(&mut out, config, results);
    rounds_table(&mut out, results);
    if !results.notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for note in &results.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

fn load_table(out: &mut String, config: &SuiteConfig, results: &SuiteResults) {
    let _ = writeln!(
        out,
        "### Load: one connection per request\n\n\
         Closed loop, {} client threads, ADD body of {} bytes, {} round(s) of {:.1} s \
         (after {:.1} s of warm-up), interleaved; medians of the rounds. \
         CPU is the server's user + system time (`/proc/PID/stat`) over the \
         measured load, per request. RSS idle is read before the first request \
         of a fresh server; \"anon\" is its `RssAnon`, without the pages of \
         the binary and shared libraries. RSS peak is `VmHWM` after the load.\n",
        config.threads,
        results.body_bytes,
        config.rounds,
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64(),
    );
    out.push_str(
        "| server | req/s | p50 µs | p99 µs | max µs | CPU µs/req | RSS idle | of it anon \
         | RSS peak | stripped size | errors | keep-alive |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for server in &results.servers {
        let median_of = |f: fn(&LoadSample) -> f64| median(server.rounds.iter().map(f).collect());
        let errors: u64 = server.rounds.iter().map(|s| s.errors).sum();
        let keep_alive = match server.rounds.iter().find_map(|s| s.keep_alive_reused) {
            Some(0) => "closes after each answer",
            Some(_) => "reuses connections",
            None => "not probed",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {:.0} KiB | {} | {} | {} | {} |",
            server.binary.name,
            thousands(median_of(|s| s.requests_per_second)),
            median_of(|s| s.p50_us),
            median_of(|s| s.p99_us),
            median_of(|s| s.max_us),
            median_of(|s| s.cpu_us_per_request),
            mib(median_of(|s| s.rss_idle_kib as f64)),
            median_of(|s| s.anon_idle_kib as f64),
            mib(median_of(|s| s.rss_peak_kib as f64)),
            server.binary.size().map_or("?".into(), size),
            errors,
            keep_alive,
        );
    }
}

fn ratio_table(out: &mut String, results: &SuiteResults) {
    out.push_str(
        "\n### Ratios, ours / peer\n\n\
         Each ratio is taken within a round, then the median of the rounds. \
         Below 1 is better for latency, CPU, memory and size; above 1 for req/s.\n\n\
         | ours / peer | req/s | p50 | p99 | CPU/req | RSS idle | anon idle | RSS peak | size |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for ours in results.servers.iter().filter(|s| s.ours) {
        for peer in results.servers.iter().filter(|s| !s.ours) {
            let ratio = |f: fn(&LoadSample) -> f64| format!("{:.2}x", round_ratio(ours, peer, f));
            let size_ratio = match (ours.binary.size(), peer.binary.size()) {
                (Some(a), Some(b)) if b > 0 => format!("{:.2}x", a as f64 / b as f64),
                _ => "?".into(),
            };
            let _ = writeln!(
                out,
                "| {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ours.binary.name,
                peer.binary.name,
                ratio(|s| s.requests_per_second),
                ratio(|s| s.p50_us),
                ratio(|s| s.p99_us),
                ratio(|s| s.cpu_us_per_request),
                ratio(|s| s.rss_idle_kib as f64),
                ratio(|s| s.anon_idle_kib as f64),
                ratio(|s| s.rss_peak_kib as f64),
                size_ratio,
            );
        }
    }
}

fn idle_table(out: &mut String, results: &SuiteResults) {
    let Some(counts) = results
        .servers
        .first()
        .map(|s| s.idle.iter().map(|(n, _)| *n).collect::<Vec<_>>())
    else {
        return;
    };
    if counts.is_empty() {
        return;
    }
    out.push_str(
        "\n### Idle connections\n\n\
         Connections opened and held, nothing sent. RSS growth over the idle \
         server per connection; then a fresh request timed (connect to close, \
         median of 5) while they are held; RSS once they are closed again.\n\n| server | RSS idle |",
    );
    for n in &counts {
        let _ = write!(
            out,
            " {}: KiB/conn | {}: fresh ms |",
            thousands(*n as f64),
            thousands(*n as f64)
        );
    }
    out.push_str(" RSS held, then closed (largest count) | held for |\n|---|--:|");
    for _ in &counts {
        out.push_str("--:|--:|");
    }
    out.push_str("--:|--:|\n");

    for server in &results.servers {
        let first_idle = server.idle.first().map_or(0, |(_, r)| r.rss_before_kib);
        let _ = write!(
            out,
            "| {} | {} |",
            server.binary.name,
            mib(first_idle as f64)
        );
        for (_, report) in &server.idle {
            let fresh = report
                .fresh_median()
                .map_or("failed".into(), |d| format!("{:.2}", ms(d)));
            let _ = write!(
                out,
                " {:.2} | {} |",
                report.bytes_per_connection() / 1024.0,
                fresh
            );
        }
        match server.idle.last() {
            Some((_, last)) => {
                let _ = writeln!(
                    out,
                    " {} → {} | {:.1} s |",
                    mib(last.rss_held_kib as f64),
                    mib(last.rss_after_kib as f64),
                    last.held_for.as_secs_f64()
                );
            }
            None => out.push_str(" | |\n"),
        }
    }
}

fn exec_table(out: &mut String, results: &SuiteResults) {
    if results.clients.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Shim exec-to-answer\n\n\
         One ADD against {}, from exec to exit. hyperfine -N times \
         `sh -c 'exec CLIENT < netconf'`, and the median of `sh -c true` in the \
         same round is subtracted (its row shows it as measured); medians of \
         the rounds.\n\n\
         | client | exec-to-answer ms | ratio to {ONESHOT} | stripped size |\n|---|--:|--:|--:|",
        results.exec_server
    );
    let timings = match &results.exec {
        Ok(timings) => timings,
        Err(why) => {
            let _ = writeln!(out, "| (not measured: {why}) | | | |");
            return;
        }
    };
    let oneshot = timings.iter().find(|t| t.name == ONESHOT);
    for timing in timings {
        let ratio = match oneshot {
            _ if timing.name == exec::SHELL_BASELINE => "subtracted".into(),
            Some(base) => format!(
                "{:.2}x",
                exec_ratio(&timing.round_medians, &base.round_medians)
            ),
            None => "?".into(),
        };
        let size_text = results
            .clients
            .iter()
            .find(|c| c.name == timing.name)
            .and_then(|c| c.size())
            .map_or("".into(), size);
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {} |",
            timing.name,
            ms(median_duration(&timing.round_medians)),
            ratio,
            size_text
        );
    }
    for (name, why) in &results.exec_skipped {
        let _ = writeln!(out, "| {name} | not measured: {why} | | |");
    }
}

fn target_table(out: &mut String, config: &SuiteConfig, results: &SuiteResults) {
    let ours: Vec<&ServerResults> = results.servers.iter().filter(|s| s.ours).collect();
    let peer = |name: &str| results.servers.iter().find(|s| s.binary.name == name);
    let Some(release) = ours.first() else {
        return;
    };
    let mut rows: Vec<(String, Option<(String, bool)>)> = Vec::new();
    let ratio_row = |peer_name: &str, f: fn(&LoadSample) -> f64, check: &dyn Fn(f64) -> bool| {
        peer(peer_name).map(|p| {
            let r = round_ratio(release, p, f);
            (format!("{r:.2}x"), check(r))
        })
    };

    rows.push((
        format!("CPU/request ≤ 1.15x {FLOOR}'s"),
        ratio_row(FLOOR, |s| s.cpu_us_per_request, &|r| r <= 1.15),
    ));
    rows.push((
        format!("CPU/request ≤ 0.4x {GO}'s"),
        ratio_row(GO, |s| s.cpu_us_per_request, &|r| r <= 0.4),
    ));
    rows.push((
        format!("CPU/request below {HYPER}'s"),
        ratio_row(HYPER, |s| s.cpu_us_per_request, &|r| r < 1.0),
    ));
    rows.push((
        format!("req/s ≥ 2.2x {GO}'s"),
        ratio_row(GO, |s| s.requests_per_second, &|r| r >= 2.2),
    ));
    rows.push((
        format!("p99 ≤ 0.4x {GO}'s"),
        ratio_row(GO, |s| s.p99_us, &|r| r <= 0.4),
    ));
    rows.push((
        format!("{} stripped ≤ 450 KB", release.binary.name),
        release.binary.size().map(|b| (size(b), b <= 450_000)),
    ));
    if let Some(small) = ours.get(1) {
        rows.push((
            format!("{} stripped ≤ 350 KB", small.binary.name),
            small.binary.size().map(|b| (size(b), b <= 350_000)),
        ));
    }
    if let Some(shim) = &config.shim {
        rows.push((
            format!("{} stripped < 600 KB", shim.name),
            shim.size().map(|b| (size(b), b < 600_000)),
        ));
    }
    rows.push((
        format!("RSS idle ≤ 1.1x {FLOOR}'s"),
        ratio_row(FLOOR, |s| s.rss_idle_kib as f64, &|r| r <= 1.1),
    ));
    let peak = median(
        release
            .rounds
            .iter()
            .map(|s| s.rss_peak_kib as f64)
            .collect(),
    );
    rows.push((
        "RSS peak under load ≤ 2.5 MiB".into(),
        Some((mib(peak), peak <= 2.5 * 1024.0)),
    ));
    if let Some((n, report)) = release.idle.iter().max_by_key(|(n, _)| *n) {
        let per_conn = report.bytes_per_connection() / 1024.0;
        rows.push((
            format!(
                "{} idle connections: ≤ 1 KiB RSS each",
                thousands(*n as f64)
            ),
            Some((format!("{per_conn:.2} KiB"), per_conn <= 1.0)),
        ));
        rows.push((
            format!("fresh request with {} held < 1 ms", thousands(*n as f64)),
            report
                .fresh_median()
                .map(|d| (format!("{:.2} ms", ms(d)), ms(d) < 1.0)),
        ));
    }
    if let (Some(shim), Ok(timings)) = (&config.shim, &results.exec) {
        let find = |name: &str| timings.iter().find(|t| t.name == name);
        rows.push((
            format!("{} exec-to-answer ≤ 1.2x {ONESHOT}'s", shim.name),
            find(&shim.name).zip(find(ONESHOT)).map(|(a, b)| {
                let r = exec_ratio(&a.round_medians, &b.round_medians);
                (format!("{r:.2}x"), r <= 1.2)
            }),
        ));
    }

    let _ = writeln!(
        out,
        "\n### Targets ({} against the peers)\n\n| target | measured | met |\n|---|--:|---|",
        release.binary.name
    );
    for (target, measured) in rows {
        let (value, verdict) = match measured {
            Some((value, true)) => (value, "yes"),
            Some((value, false)) => (value, "**no**"),
            None => ("not measured".into(), "?"),
        };
        let _ = writeln!(out, "| {target} | {value} | {verdict} |");
    }
}

fn rounds_table(out: &mut String, results: &SuiteResults) {
    out.push_str(
        "\n### Every round\n\n| server | round | req/s | p99 µs | CPU µs/req | RSS peak | errors |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
    );
    for server in &results.servers {
        for (i, s) in server.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} |",
                server.binary.name,
                i + 1,
                thousands(s.requests_per_second),
                s.p99_us,
                s.cpu_us_per_request,
                mib(s.rss_peak_kib as f64),
                s.errors
            );
        }
    }
    if let Ok(timings) = &results.exec {
        out.push_str("\n| client | exec-to-answer ms, round by round |\n|---|---|\n");
        for timing in timings {
            let rounds: Vec<String> = timing
                .round_medians
                .iter()
                .map(|d| format!("{:.2}", ms(*d)))
                .collect();
            let _ = writeln!(out, "| {} | {} |", timing.name, rounds.join(", "));
        }
    }
}

/// The median of `ours / peer` over the rounds both ran.
fn round_ratio(ours: &ServerResults, peer: &ServerResults, f: fn(&LoadSample) -> f64) -> f64 {
    median(
        ours.rounds
            .iter()
            .zip(&peer.rounds)
            .map(|(a, b)| f(a) / f(b))
            .collect(),
    )
}

fn exec_ratio(ours: &[Duration], base: &[Duration]) -> f64 {
    median(
        ours.iter()
            .zip(base)
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect(),
    )
}

/// The median; the mean of the middle two for an even count.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_duration(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(values.iter().map(Duration::as_secs_f64).collect()).max(0.0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.2} MB", bytes as f64 / 1e6)
    } else {
        format!("{} KB", thousands(bytes as f64 / 1e3))
    }
}
