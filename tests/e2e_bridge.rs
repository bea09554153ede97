//! End to end with real plugins: the shim, exec'd the way a runtime execs
//! a CNI plugin, talks to `cniserverd`, which runs Debian's (or upstream's)
//! `bridge` plugin with `host-local` IPAM into network namespaces the test
//! creates.
//!
//! Needs root, `ip` (iproute2) and containernetworking-plugins; without the
//! plugins it fails and says so rather than pass without testing anything.
//!
//! Each test builds a lab of its own: a "host" network namespace in which
//! the daemon runs (so the bridge, its gateway address, the host ends of
//! the veths and the forwarding sysctl the bridge plugin sets all stay
//! inside it), pod namespaces, and a temp folder for the socket and the
//! IPAM data. Dropping the lab deletes all of it, also when a test fails.
//! No traffic is sent.

mod daemon_support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use daemon_support::{Daemon, DAEMON};
use serde_json::{json, Value};

/// Where the plugins may be installed: Debian's package, then upstream's.
const PLUGIN_FOLDERS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// Fails the test unless it can run for real.
fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bridge end-to-end test needs root: it creates network namespaces"
    );
    for plugin in ["bridge", "host-local"] {
        let found = PLUGIN_FOLDERS
            .iter()
            .any(|folder| Path::new(folder).join(plugin).is_file());
        assert!(
            found,
            "the CNI plugin {plugin:?} is in neither {PLUGIN_FOLDERS:?}: install \
             containernetworking-plugins (apt-get install -y containernetworking-plugins)"
        );
    }
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|output| output.status.success()),
        "`ip` does not run: install iproute2"
    );
}

/// Runs `ip` and returns its stdout; fails the test if it fails.
fn ip(args: &[&str]) -> String {
    let output = ip_output(args);
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ip_output(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

// ---------------------------------------------------------------------------
// The lab

/// One test's namespaces, bridge, daemon and folder, all removed on drop.
struct Lab {
    /// The network's name (netconf `name`) and the prefix of every
    /// namespace this lab makes.
    name: String,
    /// The namespace the daemon, and so the bridge, live in.
    host_ns: String,
    bridge: String,
    subnet_prefix: String,
    dir: PathBuf,
    pods: Vec<String>,
    daemon: Option<Daemon>,
}

impl Lab {
    fn new() -> Lab {
        require_environment();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("cnis-e2e-{pid}-{n}");

        let mut lab = Lab {
            host_ns: format!("{name}-host"),
            bridge: format!("cnisbr{}x{n}", pid % 100_000),
            subnet_prefix: unused_subnet_prefix(pid as usize + n),
            dir: std::env::temp_dir().join(&name),
            name,
            pods: Vec::new(),
            daemon: None,
        };
        let _ = fs::remove_dir_all(&lab.dir);
        fs::create_dir_all(lab.ipam_dir()).unwrap();
        ip(&["netns", "add", &lab.host_ns]);
        ip(&["-n", &lab.host_ns, "link", "set", "lo", "up"]);
        lab.start_daemon();
        lab
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock").join("cni.sock")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The host-local lease file for an address.
    fn lease(&self, address: &str) -> PathBuf {
        self.ipam_dir().join(&self.name).join(address)
    }

    /// Starts the daemon inside the lab's host namespace, on its default
    /// plugin path, which covers both install locations.
    fn start_daemon(&mut self) {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host_ns])
            .arg(DAEMON)
            .arg("--socket")
            .arg(self.socket())
            .args(["--log-level", "debug"])
            .env_remove("CNI_PATH")
            .env_remove("RUST_LOG");
        let daemon = Daemon::spawn(command);
        daemon.wait_for_log("listening on");
        self.daemon = Some(daemon);
    }

    /// Stops the daemon with SIGTERM and checks that it exits cleanly.
    fn stop_daemon(&mut self) {
        let daemon = self.daemon.take().expect("a running daemon");
        let (status, log) = daemon.stop();
        assert!(status.success(), "daemon exit {status}\n{log}");
        assert!(!self.socket().exists(), "the daemon left its socket");
    }

    /// The daemon's stderr so far.
    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Makes a pod network namespace; returns its name.
    fn add_pod(&mut self) -> String {
        let pod = format!("{}-pod{}", self.name, self.pods.len());
        ip(&["netns", "add", &pod]);
        self.pods.push(pod.clone());
        pod
    }

    fn netconf(&self) -> Value {
        json!({
            "cniVersion": "0.4.0",
            "name": self.name,
            "type": "cniserver-shim",
            "socket": self.socket(),
            "delegateType": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": format!("{}.0/24", self.subnet_prefix),
                "dataDir": self.ipam_dir(),
            },
        })
    }

    /// The veths on the host side of the lab.
    fn host_veths(&self) -> String {
        ip(&["-n", &self.host_ns, "-o", "link", "show", "type", "veth"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The daemon goes first: it runs in the host namespace removed below.
        drop(self.daemon.take());
        // A pod namespace takes its end of the veth with it, and the host
        // namespace the bridge and the other ends.
        for pod in self.pods.iter().chain([&self.host_ns]) {
            let _ = ip_output(&["netns", "del", pod]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A `10.251.X` prefix whose /24 no route on this host overlaps. The
/// lab's addresses only ever live in its own namespaces; this keeps them
/// from even looking like the host's.
fn unused_subnet_prefix(seed: usize) -> String {
    let routes = ip(&["-4", "route", "show", "table", "all"]);
    let taken: Vec<(u32, u32)> = routes
        .lines()
        .filter_map(|line| line.split_whitespace().find_map(parse_cidr))
        .collect();
    (0..250)
        .map(|i| (seed + i) % 250 + 1)
        .find(|x| {
            let ours = (u32::from_be_bytes([10, 251, *x as u8, 0]), 24);
            !taken.iter().any(|theirs| overlap(ours, *theirs))
        })
        .map(|x| format!("10.251.{x}"))
        .expect("a free 10.251.X.0/24")
}

/// Reads `a.b.c.d/len` or `a.b.c.d` (a /32) into an address and length.
fn parse_cidr(text: &str) -> Option<(u32, u32)> {
    let (address, len) = text.split_once('/').unwrap_or((text, "32"));
    let address: std::net::Ipv4Addr = address.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|len| *len <= 32)?;
    Some((u32::from(address), len))
}

fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

// ---------------------------------------------------------------------------
// The runtime's side

/// What the shim printed and how it exited.
#[derive(Debug)]
struct PluginRun {
    exit: Option<i32>,
    stdout: String,
    stderr: String,
}

impl PluginRun {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("shim stdout is not JSON ({e}): {self:?}"))
    }

    fn assert_success(&self, what: &str) {
        assert_eq!(
            self.exit,
            Some(0),
            "{what} failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
    }

    /// The first IPv4 address of an ADD result, without its prefix length.
    fn address(&self) -> String {
        let result = self.json();
        let cidr = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in the result: {result}"));
        cidr.split('/').next().unwrap().to_owned()
    }
}

/// Execs the shim as a runtime execs a CNI plugin.
fn run_shim(command: &str, container: &str, pod_ns: &str, netconf: &Value) -> PluginRun {
    let pod_name = pod_ns.rsplit('-').next().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cniserver-shim"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={pod_name}"),
        )
        // The runtime's plugin path: the daemon must not use it.
        .env("CNI_PATH", "/nonexistent/runtime/cni/bin")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec cniserver-shim");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(netconf).unwrap())
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    PluginRun {
        exit: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The netconf a runtime sends after ADD: with the ADD's result as
/// `prevResult`, which CHECK requires.
fn with_prev_result(netconf: &Value, add: &PluginRun) -> Value {
    let mut netconf = netconf.clone();
    netconf["prevResult"] = add.json();
    netconf
}

/// The IPv4 addresses `ip` shows on a pod's eth0.
fn pod_addresses(pod_ns: &str) -> String {
    ip(&["-n", pod_ns, "-4", "-o", "addr", "show", "dev", "eth0"])
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn add_check_del_with_the_real_bridge_plugin() {
    let mut lab = Lab::new();
    let pod = lab.add_pod();
    let netconf = lab.netconf();
    let container = format!("{}-c0", lab.name);

    let add = run_shim("ADD", &container, &pod, &netconf);
    add.assert_success("ADD");
    let address = add.address();
    assert!(
        address.starts_with(&format!("{}.", lab.subnet_prefix)),
        "address {address} is outside the lab's subnet"
    );
    let shown = pod_addresses(&pod);
    assert!(
        shown.contains(&format!("inet {address}/24")),
        "eth0 in {pod} does not show {address}: {shown}"
    );
    let gateway = format!("inet {}.1/24", lab.subnet_prefix);
    let bridge = ip(&[
        "-n",
        &lab.host_ns,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        &lab.bridge,
    ]);
    assert!(
        bridge.contains(&gateway),
        "bridge lacks the gateway: {bridge}"
    );
    assert!(lab.lease(&address).exists(), "no lease file for {address}");
    eprintln!("ADD gave {address}; eth0 shows: {}", shown.trim());

    let later = with_prev_result(&netconf, &add);
    run_shim("CHECK", &container, &pod, &later).assert_success("CHECK");

    run_shim("DEL", &container, &pod, &later).assert_success("DEL");
    assert!(
        !lab.lease(&address).exists(),
        "the lease for {address} is left"
    );
    let gone = ip_output(&["-n", &pod, "link", "show", "eth0"]);
    assert!(!gone.status.success(), "eth0 is left in {pod}");
    assert_eq!(lab.host_veths().trim(), "", "host veths left");

    run_shim("DEL", &container, &pod, &later).assert_success("second DEL");

    let log = lab.daemon_log();
    for command in ["ADD", "CHECK", "DEL"] {
        let line = format!("request command={command} container={container}");
        assert!(log.contains(&line), "no {command} line in the log:\n{log}");
    }
    assert!(
        !log.contains("outcome=error"),
        "an error in the log:\n{log}"
    );
}

#[test]
fn twenty_parallel_adds_get_twenty_distinct_addresses() {
    let mut lab = Lab::new();
    let pods: Vec<String> = (0..20).map(|_| lab.add_pod()).collect();
    let netconf = lab.netconf();

    let runs: Vec<(String, String, PluginRun)> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let container = format!("{}-c{i}", lab.name);
                let netconf = &netconf;
                scope.spawn(move || {
                    let add = run_shim("ADD", &container, pod, netconf);
                    (pod.clone(), container, add)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut addresses = BTreeSet::new();
    for (pod, _, add) in &runs {
        add.assert_success(&format!("ADD in {pod}"));
        let address = add.address();
        let shown = pod_addresses(pod);
        assert!(
            shown.contains(&format!("inet {address}/24")),
            "eth0 in {pod} does not show {address}: {shown}"
        );
        addresses.insert(address);
    }
    eprintln!("20 parallel ADDs gave: {addresses:?}");
    assert_eq!(addresses.len(), 20, "addresses were shared: {addresses:?}");

    for (pod, container, add) in &runs {
        let later = with_prev_result(&netconf, add);
        run_shim("DEL", container, pod, &later).assert_success(&format!("DEL in {pod}"));
    }
    for address in &addresses {
        assert!(
            !lab.lease(address).exists(),
            "the lease for {address} is left"
        );
    }
    assert_eq!(lab.host_veths().trim(), "", "host veths left");
}

#[test]
fn add_with_the_daemon_stopped_fails_with_try_again_and_allocates_nothing() {
    let mut lab = Lab::new();
    let pod = lab.add_pod();
    lab.stop_daemon();

    let add = run_shim("ADD", &format!("{}-c0", lab.name), &pod, &lab.netconf());
    assert_eq!(add.exit, Some(1), "{add:?}");
    let error = add.json();
    assert_eq!(error["code"], 11, "{add:?}");
    assert!(error["msg"].is_string(), "{add:?}");
    eprintln!("ADD with the daemon stopped: {}", add.stdout);

    let leases = lab.ipam_dir().join(&lab.name);
    let leased: Vec<String> = fs::read_dir(&leases)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(leased.is_empty(), "IPAM state was written: {leased:?}");
    assert_eq!(lab.host_veths().trim(), "", "a veth was made");
    let eth0 = ip_output(&["-n", &pod, "link", "show", "eth0"]);
    assert!(!eth0.status.success(), "eth0 was made in {pod}");
}
