//! Request ids: every purchase and order call has one, the client's
//! `X-Request-Id` when it is valid, else one made on the core; the
//! client's W3C `traceparent` is passed on when it is well formed. Both
//! are answered (`x-request-id`), logged, and carried in the order event.
//!
//! PERFORMANCE-CRITICAL PATH: a [`RequestId`] is made for every purchase,
//! the sold-out ones too. It lives on the stack (no allocation); a
//! generated one is the core's counter, no lock and no shared write.

use std::io::Write;

/// Longest request id accepted from a client, and longest made.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// One request's id: 1 to 64 token characters (RFC 9110 `tchar`:
/// letters, digits and ``!#$%&'*+-.^_`|~``), safe in a header, a log
/// line and a JSON string without escaping.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_REQUEST_ID_LEN],
    len: u8,
}

impl RequestId {
    /// The client's id, if valid: anything else (empty, longer than 64,
    /// spaces, quotes, control or non-ASCII bytes) is replaced, never
    /// echoed.
    pub fn from_client(value: &[u8]) -> Option<Self> {
        if value.is_empty() || value.len() > MAX_REQUEST_ID_LEN || !value.iter().all(is_tchar) {
            return None;
        }
        let mut buf = [0; MAX_REQUEST_ID_LEN];
        buf[..value.len()].copy_from_slice(value);
        Some(RequestId {
            buf,
            len: value.len() as u8,
        })
    }

    /// A made id: `{node}-{core}-{seq as 16 hex digits}`. A core's `seq`
    /// starts at its start time in milliseconds times 2^16 and counts up,
    /// so ids do not repeat across restarts of a node.
    pub fn generated(node: u32, core: usize, seq: u64) -> Self {
        let mut buf = [0; MAX_REQUEST_ID_LEN];
        let mut rest = &mut buf[..];
        // At most 10 + 1 + 20 + 1 + 16 bytes: it always fits.
        let _ = write!(rest, "{node}-{core}-{seq:016x}");
        let len = (MAX_REQUEST_ID_LEN - rest.len()) as u8;
        RequestId { buf, len }
    }

    pub fn as_str(&self) -> &str {
        // Token characters are ASCII.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ids of one request: its [`RequestId`] and the client's
/// `traceparent`, when valid.
#[derive(Clone, Copy, Debug)]
pub struct Trace<'a> {
    pub id: RequestId,
    pub traceparent: Option<&'a str>,
}

impl Trace<'_> {
    pub fn request_id(&self) -> &str {
        self.id.as_str()
    }
}

/// Whether answers to `path` carry a request id: purchases and the order
/// calls (get, pay, cancel).
pub fn is_traced(path: &str) -> bool {
    path.starts_with("/orders/") || (path.starts_with("/sales/") && path.ends_with("/purchase"))
}

/// The client's `traceparent`, if it has the W3C format of version 00:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower case,
/// ids not all zeros. Anything else is dropped, not passed on.
pub fn valid_traceparent(value: &[u8]) -> Option<&str> {
    let hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !hex(trace_id) || !hex(parent_id) || !hex(flags) || zero(trace_id) || zero(parent_id) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

fn is_tchar(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_token_characters_up_to_64() {
        assert_eq!(
            RequestId::from_client(b"abc-1.2_x").unwrap().as_str(),
            "abc-1.2_x"
        );
        let longest = [b'a'; 64];
        assert_eq!(RequestId::from_client(&longest).unwrap().as_str().len(), 64);
        for bad in [
            &b""[..],
            &[b'a'; 65],
            b"has space",
            b"quote\"d",
            b"new\nline",
            b"caf\xc3\xa9",
            b"a,b",
        ] {
            assert!(RequestId::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_fit_and_differ() {
        let a = RequestId::generated(u32::MAX, 255, u64::MAX);
        assert_eq!(a.as_str(), format!("{}-255-ffffffffffffffff", u32::MAX));
        let (b, c) = (RequestId::generated(1, 0, 7), RequestId::generated(1, 0, 8));
        assert_eq!(b.as_str(), "1-0-0000000000000007");
        assert_ne!(b.as_str(), c.as_str());
        assert!(RequestId::from_client(a.as_str().as_bytes()).is_some());
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(good).is_some());
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-xyz-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(valid_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn only_purchases_and_order_calls_are_traced() {
        assert!(is_traced("/sales/s1/purchase"));
        assert!(is_traced("/orders/1-abc"));
        assert!(is_traced("/orders/1-abc/pay"));
        assert!(!is_traced("/sales/s1"));
        assert!(!is_traced("/healthz"));
        assert!(!is_traced("/admin/sales/s1"));
    }
}
