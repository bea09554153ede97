//! What the daemon hands to shims and plugins besides the answers: the
//! settings file `config.json` beside its socket, and the `--mtu` that
//! goes both there and into each delegate plugin's netconf.

mod daemon_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use daemon_support::{
    get, netconf, pod_env, post, Daemon, Fixture, DAEMON, NO_SECRET, PATIENCE, RECORDER,
};
use serde_json::{json, Value};

#[test]
fn settings_appear_only_once_the_socket_takes_connections() {
    let fixture = Fixture::new("settings-order");

    // Each round starts a daemon and watches for the file from the first
    // moment: whenever it is there, a connection must be taken and
    // answered. Several rounds give a late listen more chances to show.
    for round in 0..5 {
        let _ = fs::remove_file(fixture.settings());
        let daemon = Daemon::spawn(Daemon::command(&fixture, &["--mtu", "1450"]));

        let deadline = Instant::now() + PATIENCE;
        while !fixture.settings().exists() {
            assert!(
                Instant::now() < deadline,
                "round {round}: no config.json\n{}",
                daemon.log()
            );
            std::thread::yield_now();
        }
        if let Err(e) = UnixStream::connect(fixture.socket()) {
            panic!("round {round}: config.json exists but the socket refuses: {e}");
        }
        assert_eq!(get(&fixture.socket(), "/healthz").status, 200);

        let mode = fs::metadata(fixture.settings())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o444,
            "round {round}: mode {:o}",
            mode & 0o777
        );
        let published: Value = serde_json::from_slice(&fs::read(fixture.settings()).unwrap())
            .unwrap_or_else(|e| panic!("round {round}: config.json is not JSON: {e}"));
        assert_eq!(
            published,
            json!({"server": "cniserverd", "version": env!("CARGO_PKG_VERSION"), "mtu": 1450}),
            "round {round}"
        );
        // Only the file itself is left: the temporary one was renamed.
        let names: Vec<String> = fs::read_dir(fixture.socket().parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|name| name == "cni.sock" || name == "config.json"),
            "round {round}: files beside the socket: {names:?}"
        );

        let (status, log) = daemon.stop();
        assert!(status.success(), "round {round}: exit {status}\n{log}");
    }
}

#[test]
fn the_mtu_reaches_plugins_whose_netconf_has_none() {
    let fixture = Fixture::new("settings-mtu");
    fixture.plugin("recorder", RECORDER);
    let daemon = Daemon::start(&fixture, &["--mtu=9000"]);
    let socket = fixture.socket();

    // (container, the netconf's own mtu, the mtu the plugin must see)
    let cases = [
        ("no-mtu", None, json!(9000)),
        ("own-mtu", Some(json!(1400)), json!(1400)),
        // Whatever the netconf says is the plugin's to judge.
        ("odd-mtu", Some(json!("jumbo")), json!("jumbo")),
    ];
    for (container, own, want) in cases {
        let mut config = netconf("recorder");
        if let Some(own) = own {
            config["mtu"] = own;
        }
        let answer = post(&socket, pod_env("ADD", container, "p", NO_SECRET), &config);
        assert_eq!(answer.status, 200, "{container}: {answer:?}");

        let mut expected = config.clone();
        expected["type"] = json!("recorder");
        expected["mtu"] = want;
        assert_eq!(
            fixture.recorded_stdin(container),
            expected,
            "{container}: the plugin's stdin"
        );
    }

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
}

#[test]
fn without_mtu_neither_the_settings_nor_the_netconf_get_one() {
    let fixture = Fixture::new("settings-none");
    fixture.plugin("recorder", RECORDER);
    let daemon = Daemon::start(&fixture, &[]);

    let published: Value = serde_json::from_slice(&fs::read(fixture.settings()).unwrap()).unwrap();
    assert_eq!(
        published,
        json!({"server": "cniserverd", "version": env!("CARGO_PKG_VERSION")})
    );
    let answer = post(
        &fixture.socket(),
        pod_env("ADD", "plain", "p", NO_SECRET),
        &netconf("recorder"),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let stdin = fixture.recorded_stdin("plain");
    assert_eq!(stdin.get("mtu"), None, "the plugin's stdin: {stdin}");

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
}

#[test]
fn mtu_out_of_range_is_a_usage_error() {
    for value in ["0", "67", "65536", "-1", "1500.5", ""] {
        let output = std::process::Command::new(DAEMON)
            .arg(format!("--mtu={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--mtu={value}: {stderr}");
        assert!(stderr.contains("--mtu"), "--mtu={value}: {stderr}");
    }
}
