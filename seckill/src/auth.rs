//! Buyer tokens: who may buy, and whose order it is.
//!
//! With `buyer_keys` set, purchases and order calls carry
//! `Authorization: Bearer <token>`, where a token is
//! `base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))`
//! (no padding) and the payload is JSON
//! `{"sub": user_id, "exp": unix_s, "sale"?: sale_id, "nbf"?: unix_s}`.
//! Any listed key verifies (rotation: add the new key, issue with it, drop
//! the old one later); tokens are issued with the first.
//!
//! PERFORMANCE-CRITICAL PATH: [`BuyerKeys::verify`] runs on every purchase,
//! sold-out ones included. It allocates nothing: the payload and the
//! signature are decoded into stack buffers and the claims borrow from
//! them; each key is keyed once at start and its HMAC state cloned per
//! check; the signature is compared in constant time (`verify_slice`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted (the header value after `Bearer `).
pub const MAX_TOKEN_LEN: usize = 1024;
/// Longest decoded payload: a base64 payload of up to `MAX_TOKEN_LEN`
/// characters decodes to at most three quarters of that.
const MAX_PAYLOAD_LEN: usize = MAX_TOKEN_LEN / 4 * 3;
/// Shortest key accepted: 16 bytes (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// Longest user id (`sub`) and sale id (`sale`) a token may carry.
const MAX_ID_LEN: usize = 64;

/// Why a token was refused. Every kind answers 401 `unauthorized`; the
/// kind is only for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
}

impl TokenError {
    /// The message answered with 401.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Missing => "a buyer token is required (Authorization: Bearer <token>)",
            TokenError::Malformed => "malformed buyer token",
            TokenError::BadSignature => "buyer token signature does not verify",
            TokenError::Expired => "buyer token has expired",
            TokenError::NotYetValid => "buyer token is not valid yet",
        }
    }
}

/// What a verified token says. Borrows from the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The buyer.
    pub sub: &'a str,
    /// The sale this token is a ticket for, if any.
    pub sale: Option<&'a str>,
    pub exp: u64,
    pub nbf: Option<u64>,
}

/// The decoded payload of one token: a stack buffer the claims borrow.
pub struct PayloadBuf([u8; MAX_PAYLOAD_LEN]);

impl Default for PayloadBuf {
    fn default() -> Self {
        PayloadBuf([0; MAX_PAYLOAD_LEN])
    }
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    sub: &'a str,
    exp: u64,
    #[serde(default, borrow)]
    sale: Option<&'a str>,
    #[serde(default)]
    nbf: Option<u64>,
}

/// The keys buyer tokens are verified with; empty means verification is
/// off (trusted mode: the body's `user_id` is believed).
#[derive(Clone, Default, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct BuyerKeys {
    /// One HMAC state per key, already keyed: a check clones it.
    macs: Vec<HmacSha256>,
}

impl std::fmt::Debug for BuyerKeys {
    // Keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BuyerKeys({} keys)", self.macs.len())
    }
}

impl TryFrom<Vec<String>> for BuyerKeys {
    type Error = String;

    fn try_from(keys: Vec<String>) -> Result<Self, String> {
        BuyerKeys::new(&keys)
    }
}

impl BuyerKeys {
    /// Keys from their text (each used as bytes); each at least
    /// [`MIN_KEY_LEN`] bytes of visible ASCII without commas.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, String> {
        let mut macs = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.as_ref();
            if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(format!(
                    "each buyer key must be at least {MIN_KEY_LEN} visible ASCII characters without commas"
                ));
            }
            macs.push(HmacSha256::new_from_slice(key.as_bytes()).map_err(|e| e.to_string())?);
        }
        Ok(BuyerKeys { macs })
    }

    /// Keys from `SECKILL_BUYER_KEYS` (comma-separated).
    pub fn parse_list(list: &str) -> Result<Self, String> {
        let keys: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        BuyerKeys::new(&keys)
    }

    /// Whether buyer verification is on.
    pub fn is_on(&self) -> bool {
        !self.macs.is_empty()
    }

    /// Verifies the `Authorization` header value `header` at `now` (Unix
    /// seconds) with every key, decoding the payload into `buf`.
    pub fn verify<'b>(
        &self,
        header: Option<&[u8]>,
        now: u64,
        buf: &'b mut PayloadBuf,
    ) -> Result<Claims<'b>, TokenError> {
        let token = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
            .ok_or(TokenError::Missing)?;
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let dot = token
            .iter()
            .position(|&b| b == b'.')
            .ok_or(TokenError::Malformed)?;
        let (payload_b64, sig_b64) = (&token[..dot], &token[dot + 1..]);
        // 32 bytes of signature are 43 characters; decode_slice wants room
        // for its estimate (33).
        let mut sig = [0u8; 36];
        let sig_len = URL_SAFE_NO_PAD
            .decode_slice(sig_b64, &mut sig)
            .map_err(|_| TokenError::Malformed)?;
        if sig_len != 32 {
            return Err(TokenError::Malformed);
        }
        let signed = self.macs.iter().any(|mac| {
            let mut mac = mac.clone();
            mac.update(payload_b64);
            mac.verify_slice(&sig[..32]).is_ok()
        });
        if !signed {
            return Err(TokenError::BadSignature);
        }
        let len = URL_SAFE_NO_PAD
            .decode_slice(payload_b64, &mut buf.0)
            .map_err(|_| TokenError::Malformed)?;
        let payload: Payload<'b> =
            serde_json::from_slice(&buf.0[..len]).map_err(|_| TokenError::Malformed)?;
        if !valid_id(payload.sub) || payload.sale.is_some_and(|s| !valid_id(s)) {
            return Err(TokenError::Malformed);
        }
        if now >= payload.exp {
            return Err(TokenError::Expired);
        }
        if payload.nbf.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::NotYetValid);
        }
        Ok(Claims {
            sub: payload.sub,
            sale: payload.sale,
            exp: payload.exp,
            nbf: payload.nbf,
        })
    }

    /// Issues a token with the first key (`seckill token`, tests). `None`
    /// when verification is off.
    pub fn mint(&self, claims: &Claims<'_>) -> Option<String> {
        let mac = self.macs.first()?;
        Some(mint_with(mac.clone(), claims))
    }
}

/// Whether the `Authorization` value `header` is `Bearer <expected>`,
/// compared in constant time.
pub fn bearer_is(header: Option<&[u8]>, expected: &str) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let (token, expected) = (token.trim_ascii(), expected.as_bytes());
    token.len() == expected.len()
        && token
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl From<TokenError> for crate::error::ApiError {
    fn from(e: TokenError) -> Self {
        crate::error::ApiError::Unauthenticated(e.message())
    }
}

/// Issues a token signed with `key` (raw bytes), for tools and tests.
pub fn mint(key: &[u8], claims: &Claims<'_>) -> String {
    let mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mint_with(mac, claims)
}

fn mint_with(mut mac: HmacSha256, claims: &Claims<'_>) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        sale: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<u64>,
    }
    let json = serde_json::to_vec(&Out {
        sub: claims.sub,
        exp: claims.exp,
        sale: claims.sale,
        nbf: claims.nbf,
    })
    .expect("strings and numbers serialise");
    let payload = URL_SAFE_NO_PAD.encode(json);
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// A user or sale id as the API accepts it: 1 to 64 bytes, no control
/// characters.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "first-key-0123456789abcdef";
    const K2: &str = "second-key-0123456789abcdef";

    fn claims(sub: &str) -> Claims<'_> {
        Claims {
            sub,
            sale: None,
            exp: 2_000,
            nbf: None,
        }
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn verifies_with_any_listed_key() {
        let keys = BuyerKeys::new(&[K1, K2]).unwrap();
        let mut buf = PayloadBuf::default();
        for key in [K1, K2] {
            let token = mint(key.as_bytes(), &claims("alice"));
            let got = keys.verify(Some(&bearer(&token)), 1_000, &mut buf).unwrap();
            assert_eq!(got.sub, "alice");
        }
        let issued = keys.mint(&claims("bob")).unwrap();
        assert_eq!(issued, mint(K1.as_bytes(), &claims("bob")));
    }

    #[test]
    fn refuses_every_bad_token() {
        let keys = BuyerKeys::new(&[K1]).unwrap();
        let mut buf = PayloadBuf::default();
        let mut check = |header: Option<&[u8]>, now: u64| keys.verify(header, now, &mut buf).err();
        let good = mint(K1.as_bytes(), &claims("alice"));
        assert_eq!(check(None, 1_000), Some(TokenError::Missing));
        assert_eq!(check(Some(b"Basic abc"), 1_000), Some(TokenError::Missing));
        assert_eq!(check(Some(&bearer("")), 1_000), Some(TokenError::Missing));
        assert_eq!(
            check(Some(&bearer("nodot")), 1_000),
            Some(TokenError::Malformed)
        );
        let forged = mint(b"an-unknown-key-0123456789", &claims("alice"));
        assert_eq!(
            check(Some(&bearer(&forged)), 1_000),
            Some(TokenError::BadSignature)
        );
        // The payload changed after signing.
        let (_, sig) = good.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":2000}"#);
        assert_eq!(
            check(Some(&bearer(&format!("{other}.{sig}"))), 1_000),
            Some(TokenError::BadSignature)
        );
        assert_eq!(
            check(Some(&bearer(&good)), 2_000),
            Some(TokenError::Expired)
        );
        let later = Claims {
            nbf: Some(1_500),
            ..claims("alice")
        };
        let later = mint(K1.as_bytes(), &later);
        assert_eq!(
            check(Some(&bearer(&later)), 1_000),
            Some(TokenError::NotYetValid)
        );
        assert!(check(Some(&bearer(&later)), 1_500).is_none());
        // Signed, but not the payload of a token.
        let mut mac = HmacSha256::new_from_slice(K1.as_bytes()).unwrap();
        let junk = URL_SAFE_NO_PAD.encode(br#"{"sub":"","exp":2000}"#);
        mac.update(junk.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            check(Some(&bearer(&format!("{junk}.{sig}"))), 1_000),
            Some(TokenError::Malformed)
        );
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            check(Some(&bearer(&long)), 1_000),
            Some(TokenError::Malformed)
        );
    }

    #[test]
    fn carries_the_ticket() {
        let keys = BuyerKeys::new(&[K1]).unwrap();
        let mut buf = PayloadBuf::default();
        let token = keys
            .mint(&Claims {
                sale: Some("phone"),
                ..claims("alice")
            })
            .unwrap();
        let got = keys.verify(Some(&bearer(&token)), 1_000, &mut buf).unwrap();
        assert_eq!(got.sale, Some("phone"));
    }

    #[test]
    fn keys_are_checked() {
        assert!(BuyerKeys::new(&["short"]).is_err());
        assert!(BuyerKeys::parse_list("0123456789abcdef,0123456789abcdeg")
            .unwrap()
            .is_on());
        assert!(!BuyerKeys::parse_list("").unwrap().is_on());
        assert_eq!(
            format!("{:?}", BuyerKeys::new(&[K1]).unwrap()),
            "BuyerKeys(1 keys)"
        );
    }
}
