//! NextToken: an opaque, checksummed page position.
//!
//! It holds where the previous page ended (a 16-byte index suffix), the index cursor when the
//! first page was read (entries applied later are hidden, so paging is a stable snapshot while new
//! events arrive), and a fingerprint of the request's other parameters (a token reused with
//! different parameters is refused, as CloudTrail does).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const TOKEN_VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 16 + 8 + 4;

/// A decoded NextToken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub position: [u8; 16],
    pub snapshot: u64,
    pub params_hash: u32,
}

/// Why a NextToken was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not one this service issued")]
    Malformed,
    #[error("the token was issued for a request with different parameters")]
    ParamsChanged,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(BODY_LEN + 4);
        b.push(TOKEN_VERSION);
        b.extend_from_slice(&self.position);
        b.extend_from_slice(&self.snapshot.to_be_bytes());
        b.extend_from_slice(&self.params_hash.to_be_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Decodes a token and checks it belongs to a request with `params_hash`.
    pub fn decode(s: &str, params_hash: u32) -> Result<Self, TokenError> {
        let b = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| TokenError::Malformed)?;
        if b.len() != BODY_LEN + 4 || b[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let (body, crc) = b.split_at(BODY_LEN);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(TokenError::Malformed);
        }
        let position: [u8; 16] = body[1..17].try_into().map_err(|_| TokenError::Malformed)?;
        let snapshot =
            u64::from_be_bytes(body[17..25].try_into().map_err(|_| TokenError::Malformed)?);
        let hash = u32::from_be_bytes(body[25..29].try_into().map_err(|_| TokenError::Malformed)?);
        if hash != params_hash {
            return Err(TokenError::ParamsChanged);
        }
        Ok(Self {
            position,
            snapshot,
            params_hash: hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_tampering() {
        let t = PageToken {
            position: [7; 16],
            snapshot: 42,
            params_hash: 9,
        };
        let s = t.encode();
        assert_eq!(PageToken::decode(&s, 9), Ok(t));
        assert_eq!(PageToken::decode(&s, 10), Err(TokenError::ParamsChanged));
        let mut chars: Vec<char> = s.chars().collect();
        chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(PageToken::decode(&tampered, 9), Err(TokenError::Malformed));
        assert_eq!(PageToken::decode("garbage!", 9), Err(TokenError::Malformed));
        assert_eq!(PageToken::decode("", 9), Err(TokenError::Malformed));
    }
}
