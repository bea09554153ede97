//! CNI error results the daemon builds itself, and what every request ends
//! with.
//!
//! A runtime reads a failed plugin's stdout as a CNI error JSON
//! (`{"cniVersion","code","msg","details"}`). When the delegate plugin
//! printed one, the daemon passes it through untouched; when it did not,
//! or never ran, the daemon writes one in the same shape so that the shim
//! can print it as it is.

use serde_json::json;

/// The spec's code for a netconf that does not decode.
pub const DECODING_FAILURE: u32 = 6;
/// The spec's code for invalid environment variables.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// The spec's code for an invalid network configuration.
pub const INVALID_NETWORK_CONFIG: u32 = 7;
/// The spec's code for a transient failure: the runtime may retry.
pub const TRY_AGAIN_LATER: u32 = 11;
/// The spec's code for a plugin that cannot serve requests now (STATUS).
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// The code for failures the spec has no code for (plugin-specific range).
pub const GENERIC_FAILURE: u32 = 999;

/// The CNI version written into errors when the netconf names none usable.
pub const FALLBACK_CNI_VERSION: &str = "0.4.0";

/// How much of a plugin's stderr goes into an error's `details`.
pub const MAX_DETAILS_BYTES: usize = 4 * 1024;

/// A CNI error the daemon writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's error code.
    pub code: u32,
    /// A short lowercase sentence saying what failed.
    pub msg: String,
    /// Longer text for an operator, such as the plugin's stderr; may be
    /// empty, and is then left out of the JSON.
    pub details: String,
}

impl CniError {
    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`, cut to [`MAX_DETAILS_BYTES`].
    pub fn with_details(mut self, details: &[u8]) -> CniError {
        self.details = bounded_text(details, MAX_DETAILS_BYTES);
        self
    }

    /// The error as a CNI error JSON, for a runtime that asked for
    /// `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Vec<u8> {
        let mut value = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            value["details"] = json!(self.details);
        }
        // Serializing a JSON value into a Vec cannot fail.
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// What a request ended with: the body the client gets, and the code its
/// log line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success: the delegate plugin's stdout (empty for most DELs).
    Success(Vec<u8>),
    /// Failure: a CNI error JSON, from the plugin or built by the daemon.
    Failure {
        /// The error's `code`, for the log.
        code: u64,
        /// The CNI error JSON sent to the client.
        json: Vec<u8>,
    },
}

impl Outcome {
    /// A failure the daemon describes itself.
    pub fn failure(error: &CniError, cni_version: &str) -> Outcome {
        Outcome::Failure {
            code: u64::from(error.code),
            json: error.to_json(cni_version),
        }
    }
}

/// Text for an error message out of bytes a plugin wrote: lossy UTF-8,
/// trimmed, and cut on a character boundary to at most `max` bytes.
pub fn bounded_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_in_the_spec_shape() {
        let bare = CniError::new(TRY_AGAIN_LATER, "queue full");
        assert_eq!(
            String::from_utf8(bare.to_json("1.0.0")).unwrap(),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"queue full"}"#
        );
        let detailed = CniError::new(GENERIC_FAILURE, "failed").with_details(b"  oops\n");
        assert_eq!(
            String::from_utf8(detailed.to_json("0.4.0")).unwrap(),
            r#"{"cniVersion":"0.4.0","code":999,"details":"oops","msg":"failed"}"#
        );
    }

    #[test]
    fn bounded_text_cuts_on_a_character_boundary() {
        let cases: [(&[u8], usize, &str); 4] = [
            (b"short", 10, "short"),
            (b"  padded \n", 10, "padded"),
            ("ééé".as_bytes(), 3, "é..."),
            (b"\xffbad", 10, "\u{fffd}bad"),
        ];
        for (input, max, want) in cases {
            assert_eq!(bounded_text(input, max), want, "input {input:?} max {max}");
        }
    }
}
