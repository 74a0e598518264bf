//! What the load consists of: the requests each connection sends, and the
//! buyers behind them.
//!
//! A purchase scenario models a sale's crowd:
//! - a population of cold users (`u<n>`), each of whom arrives once: user
//!   ids are handed out in order, so every cold request is a new buyer
//!   until the population wraps;
//! - a hot minority (`h<n>`) that sends `hot_share` of the requests and
//!   keeps retrying: with probability `retry` a hot request repeats the
//!   user's previous attempt with the same `Idempotency-Key` (a client
//!   retrying a timeout), otherwise it starts a new attempt with a new key;
//! - the sale-start spike is the schedule's ramp ([`crate::schedule`]) and
//!   the sale's `starts_at` (requests before it are answered 403).
//!
//! PERFORMANCE-CRITICAL PATH (of the load generator): [`RequestGen::next`]
//! runs once per request; it writes into a reused buffer and allocates
//! nothing.

use std::io::Write;
use std::sync::Arc;

use crate::tokens::BuyerTokens;
pub use crate::user::User;

/// Which requests the connections send.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// `GET <path>` (e.g. `/healthz`), the same request every time.
    Get { path: String },
    /// `POST /sales/<sale>/purchase` from a crowd of buyers.
    Purchase(PurchaseMix),
}

/// The crowd of a purchase scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct PurchaseMix {
    pub sale: String,
    /// Cold users: distinct buyers who each come once (until it wraps).
    pub users: u64,
    /// Size of the hot minority that keeps retrying (0: none).
    pub hot_users: u64,
    /// Fraction of requests sent by hot users, 0..=1.
    pub hot_share: f64,
    /// Probability that a hot request repeats the previous attempt with the
    /// same Idempotency-Key, 0..=1.
    pub retry: f64,
    /// Which requests carry an Idempotency-Key.
    pub keys: KeyMode,
    /// Units per purchase.
    pub quantity: u32,
    /// Pre-minted buyer tokens (`--buyer-key`), for nodes with buyer keys.
    pub tokens: Option<Arc<BuyerTokens>>,
}

impl Default for PurchaseMix {
    fn default() -> Self {
        PurchaseMix {
            sale: "bench".into(),
            users: 1_000_000,
            hot_users: 100,
            hot_share: 0.1,
            retry: 0.5,
            keys: KeyMode::Hot,
            quantity: 1,
            tokens: None,
        }
    }
}

/// Which purchase requests carry an `Idempotency-Key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyMode {
    /// No request has a key (the sold-out gate's fastest path).
    None,
    /// Hot users' requests have keys, so their retries are idempotent.
    Hot,
    /// Every request has a key.
    All,
}

/// What one request was, kept while it is in flight so its answer can be
/// accounted (only purchases have one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestMeta {
    pub user: User,
    /// The attempt the key names, if the request carries a key.
    pub key: Option<KeyRef>,
}

/// The parts an Idempotency-Key is made of: `<user>-t<thread>-<attempt>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub thread: u32,
    pub attempt: u32,
}

impl RequestMeta {
    /// The Idempotency-Key text, if any.
    pub fn key_text(&self) -> Option<String> {
        self.key
            .map(|k| format!("{}-t{}-{}", self.user.id(), k.thread, k.attempt))
    }
}

/// One thread's request generator (one per load thread; deterministic for
/// a given seed).
pub struct RequestGen {
    workload: Arc<Workload>,
    host: String,
    crowd: Crowd,
    body: Vec<u8>,
}

/// Who sends the next purchase, as seen from one thread.
struct Crowd {
    thread: u32,
    threads: u64,
    rng: Rng,
    /// Cold users handed out so far by this thread.
    cold_sent: u64,
    /// Per hot user: this thread's current attempt number (0: none yet).
    hot_attempts: Vec<u32>,
}

impl RequestGen {
    /// The generator of thread `thread` of `threads`; `host` goes in the
    /// `Host` header.
    pub fn new(workload: Arc<Workload>, host: &str, thread: u32, threads: u32, seed: u64) -> Self {
        let hot = match &*workload {
            Workload::Purchase(mix) => mix.hot_users as usize,
            Workload::Get { .. } => 0,
        };
        RequestGen {
            workload,
            host: host.to_string(),
            crowd: Crowd {
                thread,
                threads: u64::from(threads.max(1)),
                rng: Rng::new(seed ^ (u64::from(thread) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                cold_sent: 0,
                hot_attempts: vec![0; hot],
            },
            body: Vec::with_capacity(128),
        }
    }

    /// Writes the next request into `out` (cleared first) and says what it is.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Option<RequestMeta> {
        out.clear();
        match &*self.workload {
            Workload::Get { path } => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
                None
            }
            Workload::Purchase(mix) => {
                let meta = self.crowd.pick(mix);
                self.body.clear();
                let _ = write!(
                    self.body,
                    "{{\"user_id\":\"{}{}\",\"quantity\":{}}}",
                    if meta.user.hot { 'h' } else { 'u' },
                    meta.user.index,
                    mix.quantity
                );
                let _ = write!(
                    out,
                    "POST /sales/{}/purchase HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    mix.sale,
                    self.host,
                    self.body.len()
                );
                if let Some(tokens) = &mix.tokens {
                    out.extend_from_slice(tokens.header(meta.user));
                }
                if let Some(k) = meta.key {
                    let _ = write!(
                        out,
                        "Idempotency-Key: {}{}-t{}-{}\r\n",
                        if meta.user.hot { 'h' } else { 'u' },
                        meta.user.index,
                        k.thread,
                        k.attempt
                    );
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
                Some(meta)
            }
        }
    }
}

impl Crowd {
    fn pick(&mut self, mix: &PurchaseMix) -> RequestMeta {
        if mix.hot_users > 0 && self.rng.unit() < mix.hot_share {
            let index = self.rng.below(mix.hot_users);
            let attempt = &mut self.hot_attempts[index as usize];
            if *attempt == 0 || self.rng.unit() >= mix.retry {
                *attempt += 1;
            }
            let key = (mix.keys != KeyMode::None).then_some(KeyRef {
                thread: self.thread,
                attempt: *attempt,
            });
            return RequestMeta {
                user: User { hot: true, index },
                key,
            };
        }
        let index = (u64::from(self.thread) + self.threads * self.cold_sent) % mix.users.max(1);
        self.cold_sent += 1;
        let key = (mix.keys == KeyMode::All).then_some(KeyRef {
            thread: self.thread,
            attempt: 1,
        });
        RequestMeta {
            user: User { hot: false, index },
            key,
        }
    }
}

/// splitmix64: small, fast, good enough to pick users.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn mix() -> PurchaseMix {
        PurchaseMix {
            sale: "s1".into(),
            users: 1000,
            hot_users: 10,
            hot_share: 0.2,
            retry: 0.5,
            keys: KeyMode::Hot,
            quantity: 1,
            tokens: None,
        }
    }

    #[test]
    fn purchase_request_is_well_formed_http() {
        let mut g = RequestGen::new(Arc::new(Workload::Purchase(mix())), "h:1", 0, 1, 7);
        let mut out = Vec::new();
        for _ in 0..200 {
            let meta = g.next(&mut out).unwrap();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&out).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(req.path, Some("/sales/s1/purchase"));
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&out[n..]).unwrap();
            assert_eq!(out.len() - n, len);
            assert_eq!(body["user_id"], meta.user.id());
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("idempotency-key"))
                .map(|h| String::from_utf8(h.value.to_vec()).unwrap());
            assert_eq!(key, meta.key_text());
            assert_eq!(key.is_some(), meta.user.hot, "keys only on hot users");
        }
    }

    #[test]
    fn purchases_carry_their_buyers_token() {
        let key = b"bench-key-0123456789abcdef";
        let mix = PurchaseMix {
            tokens: Some(Arc::new(BuyerTokens::mint(key, "s1", 10, 1000, 0, 60))),
            ..mix()
        };
        let mut g = RequestGen::new(Arc::new(Workload::Purchase(mix)), "h:1", 0, 1, 7);
        let mut out = Vec::new();
        for _ in 0..200 {
            let meta = g.next(&mut out).unwrap();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(&out).unwrap().is_complete());
            let auth = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .map(|h| h.value.strip_prefix(b"Bearer ").unwrap().to_vec())
                .unwrap();
            let token = crate::tokens::mint_one(key, &meta.user.id(), "s1", 60);
            assert_eq!(auth, token.as_bytes());
        }
    }

    #[test]
    fn cold_users_are_unique_across_threads_and_hot_users_retry() {
        let w = Arc::new(Workload::Purchase(mix()));
        let mut cold = HashSet::new();
        let mut cold_count = 0;
        let mut hot_keys = Vec::new();
        let mut out = Vec::new();
        for t in 0..2 {
            let mut g = RequestGen::new(Arc::clone(&w), "h", t, 2, 1);
            for _ in 0..400 {
                let m = g.next(&mut out).unwrap();
                if m.user.hot {
                    hot_keys.push(m.key_text().unwrap());
                } else {
                    cold_count += 1;
                    cold.insert(m.user.index);
                }
            }
        }
        assert_eq!(cold.len(), cold_count, "no cold user twice before wrapping");
        let hot = hot_keys.len() as f64 / 800.0;
        assert!((0.1..0.3).contains(&hot), "hot share {hot}");
        let distinct: HashSet<_> = hot_keys.iter().collect();
        assert!(
            distinct.len() < hot_keys.len(),
            "some hot requests are retries"
        );
    }

    #[test]
    fn get_workload_repeats_one_request() {
        let w = Arc::new(Workload::Get {
            path: "/healthz".into(),
        });
        let mut g = RequestGen::new(w, "127.0.0.1:1", 0, 1, 0);
        let mut out = Vec::new();
        assert!(g.next(&mut out).is_none());
        assert_eq!(out, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n");
    }
}
