//! The CNI side of the protocol: commands, the request as it travels, and its
//! decoding into a [`PodRequest`].
//!
//! Decoding is a pure function over the body bytes so that it can be fuzzed
//! and tested without a socket. Its steps and their error texts follow the
//! Go server's, in the Go server's order, because shims and operators match
//! on them; where the Go server was wrong (it never failed on a missing pod
//! name) this one is right. Plugin-level commands (STATUS, GC, VERSION)
//! name no pod, so only `CNI_COMMAND` is required of them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::base64;

mod env;

pub use env::Env;
use env::EnvSeed;

/// The socket path the Go server and its plugin agreed on.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/openshift-sdn/cni-server.sock";

/// A CNI command, as found in `CNI_COMMAND`.
///
/// Strings that are not a known command are kept as given in
/// [`Command::Other`]: the server does not judge them, the handler does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Create the pod's interface.
    Add,
    /// Tear the pod's interface down; must succeed when repeated.
    Del,
    /// Verify that the pod's interface is as ADD left it.
    Check,
    /// Report the supported spec versions (the shim answers this itself).
    Version,
    /// Garbage-collect resources of containers that no longer exist.
    Gc,
    /// Report whether the plugin is ready for ADDs.
    Status,
    /// The Go server's own command: re-apply the pod's network policy.
    Update,
    /// Any other string, passed on unchanged.
    Other(String),
}

impl Command {
    /// Reads a `CNI_COMMAND` value. Matching is exact, as in the CNI spec.
    pub fn parse(value: &str) -> Command {
        match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "UPDATE" => Command::Update,
            other => Command::Other(other.to_owned()),
        }
    }

    /// Whether the command is about the plugin rather than one pod: STATUS,
    /// GC and VERSION carry no container ID, netns or pod names.
    pub fn is_plugin_level(&self) -> bool {
        matches!(self, Command::Status | Command::Gc | Command::Version)
    }

    /// The command as it appears in `CNI_COMMAND`.
    pub fn as_str(&self) -> &str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Update => "UPDATE",
            Command::Other(other) => other,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request body a shim sends: its environment and its stdin.
///
/// On the wire this is `{"env": {...}, "config": "<base64>"}`; both keys may
/// be absent, unknown keys are ignored, a repeated key is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniRequest {
    /// The shim's whole process environment, `CNI_*` variables included.
    pub env: Env,
    /// The netconf bytes the runtime wrote to the shim's stdin.
    pub config: Vec<u8>,
}

impl CniRequest {
    /// Parses a request body. Errors are serde_json's, which say where.
    pub fn from_json(body: &[u8]) -> Result<CniRequest, serde_json::Error> {
        // The body's length bounds the environment's text: one allocation.
        let visitor = RequestVisitor {
            env_capacity: body.len(),
        };
        // Checking UTF-8 once for the whole body is cheaper than serde_json
        // checking every string, and one reader keeps one copy of the parser
        // in the binary.
        let text = std::str::from_utf8(body).map_err(|e| {
            let at = e.valid_up_to();
            de::Error::custom(format_args!("invalid UTF-8 in the body at byte {at}"))
        })?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let request = de::Deserializer::deserialize_map(&mut deserializer, visitor)?;
        deserializer.end()?;
        Ok(request)
    }

    /// Serializes the request as a shim sends it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.config.len() * 4 / 3 + self.env.len() * 48);
        out.extend_from_slice(b"{\"env\":");
        // Serializing a map of strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.env);
        out.extend_from_slice(b",\"config\":\"");
        out.extend_from_slice(base64::encode(&self.config).as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }
}

impl<'de> serde::Deserialize<'de> for CniRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor { env_capacity: 0 })
    }
}

struct RequestVisitor {
    env_capacity: usize,
}

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = CniRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CNI request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CniRequest, A::Error> {
        let mut env = None;
        let mut config = None;
        while let Some(key) = map.next_key::<KeyName<'de>>()? {
            match key.0.as_ref() {
                "env" => {
                    if env.is_some() {
                        return Err(de::Error::duplicate_field("env"));
                    }
                    let seed = EnvSeed {
                        capacity: self.env_capacity,
                    };
                    env = Some(map.next_value_seed(seed)?);
                }
                "config" => {
                    if config.is_some() {
                        return Err(de::Error::duplicate_field("config"));
                    }
                    config = Some(map.next_value::<Config>()?.0);
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(CniRequest {
            env: env.flatten().unwrap_or_default(),
            config: config.flatten().unwrap_or_default(),
        })
    }
}

/// A key or string that borrows from the body when it holds no escapes.
struct KeyName<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyName(v.to_owned().into()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `config`: a base64 string, or null for no config.
struct Config(Option<Vec<u8>>);

impl<'de> serde::Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ConfigVisitor;
        impl<'de> Visitor<'de> for ConfigVisitor {
            type Value = Config;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_unit<E>(self) -> Result<Config, E> {
                Ok(Config(None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Config, E> {
                base64::decode(v.as_bytes())
                    .map(|bytes| Config(Some(bytes)))
                    .map_err(|_| E::custom("config is not valid base64"))
            }
        }
        deserializer.deserialize_any(ConfigVisitor)
    }
}

/// A pod operation, decoded from a [`CniRequest`] and handed to the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    /// The CNI command.
    pub command: Command,
    /// The Kubernetes namespace of the pod (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// The sandbox (infrastructure container) ID (`CNI_CONTAINERID`).
    pub sandbox_id: String,
    /// The path of the pod's network namespace (`CNI_NETNS`).
    pub netns: String,
    /// The interface to create inside the namespace (`CNI_IFNAME`, default `eth0`).
    pub ifname: String,
    /// `CNI_ARGS`, parsed; a key given twice keeps its last value.
    pub cni_args: BTreeMap<String, String>,
    /// The shim's whole environment. It may hold secrets: never log values.
    pub env: Env,
    /// The netconf bytes, as the runtime gave them to the shim.
    pub config: Vec<u8>,
}

/// Why a request body did not decode into a [`PodRequest`].
///
/// `Display` gives the Go server's exact texts; no variant carries a value
/// from the environment except the offending `CNI_ARGS` piece, which the
/// protocol echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not a well-formed request object.
    Json(String),
    /// `CNI_COMMAND` is absent.
    MissingCommand,
    /// `CNI_CONTAINERID` is absent.
    MissingContainerId,
    /// `CNI_NETNS` is absent.
    MissingNetns,
    /// `CNI_ARGS` is absent.
    MissingArgs,
    /// A `CNI_ARGS` piece is not exactly `key=value`.
    InvalidArg(String),
    /// `CNI_ARGS` lacks `K8S_POD_NAMESPACE`.
    MissingPodNamespace,
    /// `CNI_ARGS` lacks `K8S_POD_NAME`.
    MissingPodName,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(reason) => write!(f, "JSON unmarshal error: {reason}"),
            DecodeError::MissingCommand => f.write_str("unexpected or missing CNI_COMMAND"),
            DecodeError::MissingContainerId => f.write_str("missing CNI_CONTAINERID"),
            DecodeError::MissingNetns => f.write_str("missing CNI_NETNS"),
            DecodeError::MissingArgs => f.write_str("missing CNI_ARGS"),
            DecodeError::InvalidArg(piece) => write!(f, "invalid CNI_ARG '{piece}'"),
            DecodeError::MissingPodNamespace => f.write_str("missing K8S_POD_NAMESPACE"),
            DecodeError::MissingPodName => f.write_str("missing K8S_POD_NAME"),
        }
    }
}

impl DecodeError {
    /// The error as a short phrase without any value from the request (the
    /// `Display` text of an invalid `CNI_ARGS` piece quotes the piece), fit
    /// for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "JSON unmarshal error",
            DecodeError::MissingCommand => "unexpected or missing CNI_COMMAND",
            DecodeError::MissingContainerId => "missing CNI_CONTAINERID",
            DecodeError::MissingNetns => "missing CNI_NETNS",
            DecodeError::MissingArgs => "missing CNI_ARGS",
            DecodeError::InvalidArg(_) => "invalid CNI_ARG",
            DecodeError::MissingPodNamespace => "missing K8S_POD_NAMESPACE",
            DecodeError::MissingPodName => "missing K8S_POD_NAME",
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a request body into a pod request, first failing step first.
pub fn decode_body(body: &[u8]) -> Result<PodRequest, DecodeError> {
    let request = CniRequest::from_json(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    PodRequest::from_cni_request(request)
}

impl PodRequest {
    /// Checks the environment of a parsed request, in the Go server's order.
    pub fn from_cni_request(request: CniRequest) -> Result<PodRequest, DecodeError> {
        let CniRequest { env, config } = request;
        let get =
            |name: &str, missing: DecodeError| env.get(name).map(str::to_owned).ok_or(missing);

        let command = Command::parse(env.get("CNI_COMMAND").ok_or(DecodeError::MissingCommand)?);
        if command.is_plugin_level() {
            return Ok(PodRequest::plugin_level(command, env, config));
        }
        let sandbox_id = get("CNI_CONTAINERID", DecodeError::MissingContainerId)?;
        let netns = get("CNI_NETNS", DecodeError::MissingNetns)?;
        let ifname = env.get("CNI_IFNAME").unwrap_or("eth0").to_owned();
        let cni_args = parse_cni_args(env.get("CNI_ARGS").ok_or(DecodeError::MissingArgs)?)?;
        let arg = |name: &str, missing: DecodeError| cni_args.get(name).cloned().ok_or(missing);
        let pod_namespace = arg("K8S_POD_NAMESPACE", DecodeError::MissingPodNamespace)?;
        let pod_name = arg("K8S_POD_NAME", DecodeError::MissingPodName)?;

        Ok(PodRequest {
            command,
            pod_namespace,
            pod_name,
            sandbox_id,
            netns,
            ifname,
            cni_args,
            env,
            config,
        })
    }
}

impl PodRequest {
    /// A plugin-level request: only the command, env and config count; the
    /// pod fields are empty.
    fn plugin_level(command: Command, env: Env, config: Vec<u8>) -> Self {
        PodRequest {
            command,
            pod_namespace: String::new(),
            pod_name: String::new(),
            sandbox_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            cni_args: BTreeMap::new(),
            env,
            config,
        }
    }

    /// Whether this is a plugin-level request (STATUS, GC, VERSION), which
    /// names no pod: see [`Command::is_plugin_level`].
    pub fn is_plugin_level(&self) -> bool {
        self.command.is_plugin_level()
    }
}

/// Parses `CNI_ARGS`: `key=value` pieces separated by `;`, each side trimmed.
///
/// Every piece must hold exactly one `=`, so an empty string, a trailing `;`
/// and a value with `=` in it are errors, as they were for the Go server.
pub fn parse_cni_args(args: &str) -> Result<BTreeMap<String, String>, DecodeError> {
    let mut parsed = BTreeMap::new();
    for piece in args.split(';') {
        let mut parts = piece.split('=');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(key), Some(value), None) => {
                parsed.insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => return Err(DecodeError::InvalidArg(piece.to_owned())),
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(env: &[(&str, &str)]) -> Vec<u8> {
        let request = CniRequest {
            env: env.iter().copied().collect(),
            config: b"{}".to_vec(),
        };
        request.to_json()
    }

    #[test]
    fn plugin_level_commands_need_no_pod() {
        for command in ["STATUS", "GC", "VERSION"] {
            let decoded = decode_body(&body(&[("CNI_COMMAND", command)]));
            let request = decoded.unwrap_or_else(|e| panic!("{command}: {e}"));
            assert!(request.is_plugin_level(), "{command}");
            assert_eq!(request.command.as_str(), command);
            assert_eq!(request.config, b"{}");
        }
    }

    #[test]
    fn pod_commands_keep_the_go_checks() {
        let decoded = decode_body(&body(&[("CNI_COMMAND", "ADD")]));
        assert_eq!(decoded, Err(DecodeError::MissingContainerId));
    }

    #[test]
    fn duplicate_keys_are_json_errors() {
        let cases: &[(&str, &str)] = &[
            ("env twice", r#"{"env":{},"env":{}}"#),
            ("config twice", r#"{"config":null,"config":null}"#),
            ("variable twice", r#"{"env":{"A":"1","A":"2"}}"#),
        ];
        for (name, input) in cases {
            let got = decode_body(input.as_bytes());
            assert!(
                matches!(&got, Err(DecodeError::Json(_))),
                "{name}: {input} gave {got:?}"
            );
        }
    }

    #[test]
    fn request_round_trips_through_json() {
        let request = CniRequest {
            env: [("CNI_COMMAND", "ADD \"quoted\"\n")].into_iter().collect(),
            config: (0u8..=255).collect(),
        };
        assert_eq!(CniRequest::from_json(&request.to_json()).unwrap(), request);
    }
}
