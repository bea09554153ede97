//! The protocol's reference handler: fixed answers that need no network.
//!
//! The shared protocol cases, the benchmarks and the embedding example all
//! answer this way, so a server built on this crate can be compared byte
//! for byte with the Go original and other implementations.

use crate::cni::{Command, PodRequest};
use crate::server::PodResult;

/// Answers a pod request as the reference handler does: ADD gets a fixed
/// result naming the request's netns, DEL, CHECK and UPDATE an empty
/// success, anything else an error.
pub fn answer(request: &PodRequest) -> PodResult {
    match request.command {
        Command::Add => Ok(add_result(&request.netns)),
        Command::Del | Command::Check | Command::Update => Ok(Vec::new()),
        ref other => Err(format!("unhandled CNI command {other}").into()),
    }
}

/// The fixed ADD result, with `netns` JSON-escaped into it.
pub fn add_result(netns: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(192 + netns.len());
    out.extend_from_slice(br#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"#);
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, netns);
    out.extend_from_slice(
        br#"}],"ips":[{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1","interface":0}]}"#,
    );
    out
}
