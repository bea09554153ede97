//! Request body decoding: any bytes a peer sends as a body.
//!
//! Decoding must never panic, and what it accepts must survive a trip back
//! to the wire: a shim that re-sends a decoded request gets the same pod
//! request. The config travels as base64, so base64 is checked both ways on
//! the same bytes.

#![no_main]

use std::collections::BTreeMap;

use cniserver::{base64, decode_body, CniRequest, DecodeError};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

fuzz_target!(|data: &[u8]| {
    check_base64(data);
    check_request(data);
});

/// Encoding any bytes and decoding the text gives the bytes back; any text
/// that decodes re-encodes to text that decodes to the same bytes.
fn check_base64(data: &[u8]) {
    let encoded = base64::encode(data);
    assert_eq!(encoded.len(), data.len().div_ceil(3) * 4, "input {data:?}");
    assert_eq!(
        base64::decode(encoded.as_bytes()).as_deref(),
        Ok(data),
        "input {data:?}, encoded {encoded:?}"
    );

    if let Ok(decoded) = base64::decode(data) {
        let again = base64::encode(&decoded);
        assert_eq!(
            base64::decode(again.as_bytes()).as_ref(),
            Ok(&decoded),
            "text {data:?} decoded to {decoded:?}, re-encoded as {again:?}"
        );
        // Four symbols carry at most three bytes; line breaks carry none.
        let symbols = data.iter().filter(|&&b| b != b'\r' && b != b'\n').count();
        assert!(decoded.len() <= symbols / 4 * 3, "text {data:?}");
    }
}

/// The body decodes the same after being re-encoded as a shim would.
fn check_request(data: &[u8]) {
    let parsed = CniRequest::from_json(data);
    let decoded = decode_body(data);

    // JSON errors come first and only from the JSON step.
    assert_eq!(
        parsed.is_err(),
        matches!(decoded, Err(DecodeError::Json(_))),
        "body {data:?}: parse {parsed:?}, decode {decoded:?}"
    );

    if let Ok(request) = &parsed {
        check_against_serde(data, request);

        let wire = request.to_json();
        let reparsed = CniRequest::from_json(&wire);
        assert_eq!(
            reparsed.as_ref().ok(),
            Some(request),
            "body {data:?} re-encoded as {:?}: {reparsed:?}",
            String::from_utf8_lossy(&wire)
        );
        // The pod checks see the same environment either way.
        assert_eq!(decode_body(&wire), decoded, "body {data:?}");
    }

    match &decoded {
        Ok(pod) => {
            let request = CniRequest {
                env: pod.env.clone(),
                config: pod.config.clone(),
            };
            let wire = request.to_json();
            assert_eq!(
                decode_body(&wire).as_ref(),
                Ok(pod),
                "body {data:?} re-encoded as {:?}",
                String::from_utf8_lossy(&wire)
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "body {data:?}"),
    }
}

/// The two fields as serde's derived code reads them: unknown keys are
/// skipped, a name given twice keeps its last value.
#[derive(Deserialize)]
struct PlainBody {
    env: Option<BTreeMap<String, String>>,
    config: Option<String>,
}

/// A body that parses holds what serde's derived reading finds in it: the
/// env's variables, each found by name, and the config's bytes.
fn check_against_serde(data: &[u8], request: &CniRequest) {
    let plain: PlainBody = serde_json::from_slice(data).expect("a body that parses is JSON");

    let env = plain.env.unwrap_or_default();
    assert!(request.env == env, "body {data:?}: env differs");
    for (name, value) in &env {
        assert_eq!(request.env.get(name), Some(value.as_str()), "body {data:?}");
    }

    let config = plain.config.map_or_else(Vec::new, |text| {
        base64::decode(text.as_bytes()).expect("config is base64")
    });
    assert_eq!(request.config, config, "body {data:?}");
}
