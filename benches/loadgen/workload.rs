//! The request every measurement sends: a realistic CNI ADD.
//!
//! A runtime execs the shim with the CNI variables in an environment that
//! also holds whatever the runtime itself was started with, and the shim
//! forwards all of it. Here that is the six CNI variables plus 30 others
//! (about 1.9 KB of body with the netconf), the size the peers were
//! measured with.

/// The netconf the runtime writes to the shim's stdin.
pub const NETCONF: &str = r#"{"cniVersion":"0.4.0","name":"openshift-sdn","type":"openshift-sdn","ipam":{"type":"host-local","subnet":"10.128.0.0/23","routes":[{"dst":"0.0.0.0/0"}]}}"#;

/// The CNI netns of the pod; the ADD answer echoes it.
pub const NETNS: &str = "/var/run/netns/cni-4f1c2a7e-9b3d-4e8a-a6c5-2d7f0b1e9c38";

const CONTAINER_ID: &str = "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f";

/// The shim's environment: CNI variables first, then the runtime's own.
pub fn environment() -> Vec<(String, String)> {
    let cni_args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=bench-pod-7d9f8b6c5-x2k4p;\
         K8S_POD_INFRA_CONTAINER_ID={CONTAINER_ID};K8S_POD_UID=0c4e8a2f-6b1d-4f3e-9a7c-5d2b8e1f4a6c"
    );
    let mut env = vec![
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", CONTAINER_ID.to_owned()),
        ("CNI_NETNS", NETNS.to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/opt/cni/bin:/usr/libexec/cni".to_owned()),
        ("CNI_ARGS", cni_args),
    ];
    let runtime: [(&str, &str); 30] = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/libexec/crio",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("LOGNAME", "root"),
        ("USER", "root"),
        ("SHELL", "/bin/sh"),
        ("PWD", "/"),
        ("SHLVL", "0"),
        ("HOSTNAME", "worker-3.bench.example.internal"),
        ("INVOCATION_ID", "6a1f0c9e3b7d4e2a8c5f1b9d7e3a6c0f"),
        ("JOURNAL_STREAM", "8:31415"),
        ("SYSTEMD_EXEC_PID", "1207"),
        ("NOTIFY_SOCKET", "/run/systemd/notify"),
        ("CONTAINER_RUNTIME_ENDPOINT", "unix:///run/crio/crio.sock"),
        (
            "CRIO_CONFIG_DIR",
            "/etc/crio/crio.conf.d:/usr/share/containers/crio.conf.d",
        ),
        ("KUBERNETES_SERVICE_HOST", "172.30.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://172.30.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://172.30.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "172.30.0.1"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("NODE_NAME", "worker-3.bench.example.internal"),
        ("CLUSTER_DOMAIN", "cluster.local"),
        ("HTTP_PROXY", "http://proxy.bench.example.internal:3128"),
        (
            "NO_PROXY",
            ".cluster.local,.svc,.bench.example.internal,10.128.0.0/14,172.30.0.0/16,\
             169.254.169.254,127.0.0.1,::1,localhost",
        ),
        (
            "GODEBUG",
            "x509ignoreCN=0,madvdontneed=1,http2client=0,tlsrsakex=1",
        ),
        ("OPENSHIFT_SDN_LOG_LEVEL", "2"),
        ("TZ", "UTC"),
    ];
    env.extend(
        runtime
            .iter()
            .map(|&(name, value)| (name, value.to_owned())),
    );
    env.into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// The request body: `{"env": {...}, "config": "<base64 netconf>"}`.
pub fn body() -> Vec<u8> {
    let mut out = String::from("{\"env\":{");
    for (i, (name, value)) in environment().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push_str("},\"config\":\"");
    push_base64(&mut out, NETCONF.as_bytes());
    out.push_str("\"}");
    out.into_bytes()
}

/// The whole request as the Go plugin sent it: head and body in one piece.
pub fn request() -> Vec<u8> {
    let body = body();
    let mut out = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nUser-Agent: cniserver-loadgen\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_base64(out: &mut String, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for group in data.chunks(3) {
        let bytes = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let bits = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}
