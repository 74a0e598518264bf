//! Buyer tokens for runs against nodes with `buyer_keys` set: one token per
//! simulated buyer, minted before the load starts (`--buyer-key`), so the
//! load threads only copy a header line and never sign anything.
//!
//! A token is the node's format (`seckill::auth`): `base64url(payload) "."
//! base64url(HMAC-SHA256(key, base64url(payload)))`, payload
//! `{"sub": user, "exp": unix_s, "sale": sale}`. Each names the run's sale,
//! so it is also the ticket of a `ticket_required` sale.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::user::User;

/// Most buyers a run pre-mints tokens for: about 100 bytes each.
pub const MAX_MINTED: u64 = 2_000_000;

/// The `Authorization` header line of every buyer of a run, in one buffer.
pub struct BuyerTokens {
    /// `Authorization: Bearer <token>\r\n`, hot users first, then cold.
    lines: Vec<u8>,
    /// End of each line in `lines`.
    ends: Vec<usize>,
    hot: u64,
}

impl BuyerTokens {
    /// Tokens for `hot` hot users (`h<i>`) and `cold` cold users (`u<i>`)
    /// of `sale`, valid for `ttl_s` from `now`.
    pub fn mint(key: &[u8], sale: &str, hot: u64, cold: u64, now: u64, ttl_s: u64) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        let exp = now.saturating_add(ttl_s);
        let users = hot + cold;
        let mut lines = Vec::with_capacity(users as usize * 110);
        let mut ends = Vec::with_capacity(users as usize);
        let mut sub = String::new();
        for (prefix, n) in [('h', hot), ('u', cold)] {
            for i in 0..n {
                use std::fmt::Write as _;
                sub.clear();
                let _ = write!(sub, "{prefix}{i}");
                lines.extend_from_slice(b"Authorization: Bearer ");
                lines.extend_from_slice(token(&mac, &sub, sale, exp).as_bytes());
                lines.extend_from_slice(b"\r\n");
                ends.push(lines.len());
            }
        }
        BuyerTokens { lines, ends, hot }
    }

    /// The header line of `user`.
    pub fn header(&self, user: User) -> &[u8] {
        let i = if user.hot {
            user.index
        } else {
            self.hot + user.index
        } as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.lines[start..self.ends[i]]
    }
}

impl PartialEq for BuyerTokens {
    fn eq(&self, other: &Self) -> bool {
        self.lines == other.lines
    }
}

impl fmt::Debug for BuyerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuyerTokens({} buyers)", self.ends.len())
    }
}

/// One token for `sub`, a ticket for `sale`, signed with `key`.
pub fn mint_one(key: &[u8], sub: &str, sale: &str, exp: u64) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    token(&mac, sub, sale, exp)
}

fn token(mac: &Hmac<Sha256>, sub: &str, sale: &str, exp: u64) -> String {
    let payload = serde_json::json!({ "sub": sub, "exp": exp, "sale": sale }).to_string();
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let mut mac = mac.clone();
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_buyer_the_node_would_accept() {
        let keys = seckill::auth::BuyerKeys::new(&["bench-key-0123456789abcdef"]).unwrap();
        let tokens = BuyerTokens::mint(b"bench-key-0123456789abcdef", "s", 2, 3, 1_000, 60);
        let mut buf = seckill::auth::PayloadBuf::default();
        for (hot, index, sub) in [(true, 1, "h1"), (false, 0, "u0"), (false, 2, "u2")] {
            let line = tokens.header(User { hot, index });
            let value = line
                .strip_prefix(b"Authorization: ")
                .and_then(|l| l.strip_suffix(b"\r\n"))
                .unwrap();
            let claims = keys.verify(Some(value), 1_030, &mut buf).unwrap();
            assert_eq!((claims.sub, claims.sale), (sub, Some("s")));
        }
    }
}
