//! Standard base64 (RFC 4648, `+` and `/`, `=` padding), both ways.
//!
//! The request's `config` field is base64 because the Go server typed it as a
//! byte slice. Fifty lines here cost less binary than a general crate with
//! every alphabet and engine, and they are fuzzed with the rest of decoding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marks a byte that is not in the alphabet.
const INVALID: u8 = 0xff;

const fn decode_table() -> [u8; 256] {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
}

static DECODE: [u8; 256] = decode_table();

/// Encodes `input` with padding.
pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(*s & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes padded standard base64.
///
/// Like Go's `base64.StdEncoding`, which produced the Go shim's bytes, it
/// skips `\r` and `\n` anywhere and accepts non-zero bits in the last
/// symbol before padding. Anything else that is not a full padded quantum
/// is an error.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);

    // Fast path: whole quanta of four alphabet symbols, the bulk of any
    // input. Padding, line breaks and errors are left to the general loop.
    let mut clean = 0;
    for chunk in input.chunks_exact(4) {
        let values = [
            DECODE[chunk[0] as usize],
            DECODE[chunk[1] as usize],
            DECODE[chunk[2] as usize],
            DECODE[chunk[3] as usize],
        ];
        if (values[0] | values[1] | values[2] | values[3]) & 0xc0 != 0 {
            break;
        }
        let n = (u32::from(values[0]) << 18)
            | (u32::from(values[1]) << 12)
            | (u32::from(values[2]) << 6)
            | u32::from(values[3]);
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        clean += 4;
    }
    let input = &input[clean..];

    let mut quad = [0u8; 4];
    let mut filled = 0;
    let mut padding = 0;

    for (index, &byte) in input.iter().enumerate() {
        if byte == b'\r' || byte == b'\n' {
            continue;
        }
        if byte == b'=' {
            // Padding may only fill the last one or two places of a quantum.
            if filled < 2 {
                return Err(InvalidBase64);
            }
            padding += 1;
            filled += 1;
        } else {
            let value = DECODE[byte as usize];
            if value == INVALID || padding > 0 {
                return Err(InvalidBase64);
            }
            quad[filled] = value;
            filled += 1;
        }
        if filled == 4 {
            let n = (u32::from(quad[0]) << 18)
                | (u32::from(quad[1]) << 12)
                | (u32::from(quad[2]) << 6)
                | u32::from(quad[3]);
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - padding]);
            if padding > 0 {
                // Nothing but line breaks may follow the padded quantum.
                let rest = &input[index + 1..];
                if rest.iter().any(|&b| b != b'\r' && b != b'\n') {
                    return Err(InvalidBase64);
                }
                return Ok(out);
            }
            filled = 0;
            quad = [0; 4];
        }
    }

    if filled != 0 {
        return Err(InvalidBase64);
    }
    Ok(out)
}

/// The input was not padded standard base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBase64;

impl std::fmt::Display for InvalidBase64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("illegal base64 data")
    }
}

impl std::error::Error for InvalidBase64 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_up_to_nine() {
        let data: Vec<u8> = (0u8..=255).collect();
        for len in 0..10 {
            let encoded = encode(&data[..len]);
            assert_eq!(
                decode(encoded.as_bytes()).as_deref(),
                Ok(&data[..len]),
                "len {len}: {encoded}"
            );
        }
    }

    #[test]
    fn decodes_like_go_std_encoding() {
        let cases: &[(&str, Result<&[u8], InvalidBase64>)] = &[
            ("", Ok(b"")),
            ("Zg==", Ok(b"f")),
            ("Zm8=", Ok(b"fo")),
            ("Zm9v", Ok(b"foo")),
            ("Zm9v\r\nYmFy", Ok(b"foobar")),
            ("Zm8=\n", Ok(b"fo")),
            ("Zh==", Ok(b"f")),
            ("Zg", Err(InvalidBase64)),
            ("Zg=", Err(InvalidBase64)),
            ("Z===", Err(InvalidBase64)),
            ("Zg==Zg==", Err(InvalidBase64)),
            ("Zm9v!", Err(InvalidBase64)),
            ("Zm-v", Err(InvalidBase64)),
            ("Zg=a", Err(InvalidBase64)),
        ];
        for (input, want) in cases {
            let got = decode(input.as_bytes());
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "input {input:?}");
        }
    }
}
