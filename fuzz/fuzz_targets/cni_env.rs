//! The environment checks: `PodRequest::from_cni_request` and
//! `parse_cni_args` on environments built from the input.
//!
//! The first byte says which of the `CNI_*` variables are present (with
//! plain values); the rest is text split on `\n`. Its first line is the
//! `CNI_ARGS` value, with whatever `;`, `=` and spaces it holds; each later
//! line is `NAME=VALUE` (split at the first `=`) and adds or replaces a
//! variable, so the fuzzer can also empty or reshape the standard ones.
//!
//! The results are checked against the steps of PROTOCOL.md section 3,
//! restated here in their own plain terms.

#![no_main]

use std::collections::BTreeMap;

use cniserver::cni::parse_cni_args;
use cniserver::{decode_body, CniRequest, Command, DecodeError, PodRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&present, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split('\n');
    let args = lines.next().unwrap_or_default();

    check_args(args);

    let mut env = BTreeMap::new();
    let standard = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "net1"),
        ("CNI_ARGS", args),
    ];
    for (bit, (name, value)) in standard.iter().enumerate() {
        if present & (1 << bit) != 0 {
            env.insert(name.to_string(), value.to_string());
        }
    }
    for line in lines {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        env.insert(name.to_owned(), value.to_owned());
    }

    check_env(env);
});

/// `parse_cni_args` against the rule: `;`-separated pieces, each with
/// exactly one `=`, sides trimmed, the last repeat winning; the first piece
/// that breaks the rule is the one named in the error.
fn check_args(args: &str) {
    let result = parse_cni_args(args);
    let first_bad = args
        .split(';')
        .find(|piece| piece.matches('=').count() != 1);

    match (&result, first_bad) {
        (Err(DecodeError::InvalidArg(piece)), Some(bad)) => {
            assert_eq!(piece, bad, "args {args:?}");
            assert!(args.contains(piece.as_str()), "args {args:?}");
            let text = result.as_ref().unwrap_err().to_string();
            assert_eq!(text, format!("invalid CNI_ARG '{bad}'"), "args {args:?}");
        }
        (Ok(parsed), None) => {
            let mut expected = BTreeMap::new();
            for piece in args.split(';') {
                let at = piece.find('=').expect("every piece has one '='");
                let key = piece[..at].trim();
                let value = piece[at + 1..].trim();
                expected.insert(key, value);
            }
            for (key, value) in parsed {
                assert_eq!(key.trim(), key, "args {args:?}");
                assert_eq!(value.trim(), value, "args {args:?}");
                assert!(!key.contains(';') && !key.contains('='), "args {args:?}");
                assert!(
                    !value.contains(';') && !value.contains('='),
                    "args {args:?}"
                );
                assert_eq!(
                    expected.get(key.as_str()),
                    Some(&value.as_str()),
                    "args {args:?}"
                );
            }
            assert_eq!(parsed.len(), expected.len(), "args {args:?}");
        }
        _ => panic!("args {args:?}: got {result:?}, first bad piece {first_bad:?}"),
    }
}

/// `from_cni_request` fails at the first missing step, in protocol order,
/// and otherwise copies each field from where the protocol says; the JSON
/// path from a shim's body gives the same answer.
fn check_env(env: BTreeMap<String, String>) {
    let request = CniRequest {
        env: env.clone().into(),
        config: b"{\"cniVersion\":\"0.4.0\"}".to_vec(),
    };
    let result = PodRequest::from_cni_request(request.clone());
    assert_eq!(decode_body(&request.to_json()), result, "env {env:?}");

    if let Some(args) = env.get("CNI_ARGS") {
        check_args(args);
    }
    let args = env.get("CNI_ARGS").map(|args| parse_cni_args(args));
    let command = env.get("CNI_COMMAND").map(String::as_str);

    // STATUS, GC and VERSION are about the plugin, not a pod: nothing but
    // the command is needed, and no pod field is filled in.
    if let Some(plugin_command @ ("STATUS" | "GC" | "VERSION")) = command {
        let pod = result.unwrap_or_else(|e| panic!("env {env:?}: {e:?}"));
        assert_eq!(pod.command.as_str(), plugin_command);
        assert!(pod.is_plugin_level(), "env {env:?}");
        let fields = [&pod.pod_namespace, &pod.pod_name, &pod.sandbox_id];
        assert!(fields.iter().all(|field| field.is_empty()), "env {env:?}");
        assert!(pod.netns.is_empty() && pod.ifname.is_empty(), "env {env:?}");
        assert!(pod.cni_args.is_empty(), "env {env:?}");
        assert_eq!(pod.env, env);
        return;
    }

    let expected_error = if command.is_none() {
        Some(DecodeError::MissingCommand)
    } else if !env.contains_key("CNI_CONTAINERID") {
        Some(DecodeError::MissingContainerId)
    } else if !env.contains_key("CNI_NETNS") {
        Some(DecodeError::MissingNetns)
    } else {
        match &args {
            None => Some(DecodeError::MissingArgs),
            Some(Err(error)) => Some(error.clone()),
            Some(Ok(args)) if !args.contains_key("K8S_POD_NAMESPACE") => {
                Some(DecodeError::MissingPodNamespace)
            }
            Some(Ok(args)) if !args.contains_key("K8S_POD_NAME") => {
                Some(DecodeError::MissingPodName)
            }
            Some(Ok(_)) => None,
        }
    };

    match (result, expected_error) {
        (Err(error), Some(expected)) => assert_eq!(error, expected, "env {env:?}"),
        (Ok(pod), None) => {
            let Some(Ok(args)) = args else {
                unreachable!("a decoded request has parsed CNI_ARGS")
            };
            assert_eq!(pod.command.as_str(), env["CNI_COMMAND"], "env {env:?}");
            assert_eq!(Command::parse(pod.command.as_str()), pod.command);
            assert!(!pod.is_plugin_level(), "env {env:?}");
            assert_eq!(pod.sandbox_id, env["CNI_CONTAINERID"], "env {env:?}");
            assert_eq!(pod.netns, env["CNI_NETNS"], "env {env:?}");
            let ifname = env.get("CNI_IFNAME").map_or("eth0", String::as_str);
            assert_eq!(pod.ifname, ifname, "env {env:?}");
            assert_eq!(pod.pod_namespace, args["K8S_POD_NAMESPACE"], "env {env:?}");
            assert_eq!(pod.pod_name, args["K8S_POD_NAME"], "env {env:?}");
            assert_eq!(pod.cni_args, args, "env {env:?}");
            assert_eq!(pod.env, env);
        }
        (result, expected) => panic!("env {env:?}: got {result:?}, expected error {expected:?}"),
    }
}
