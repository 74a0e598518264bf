//! Criterion benchmarks of the node's request parsing
//! ([`seckill::http::parse`]: `httparse` into a borrowed [`Request`], no
//! allocation), each beside the naive baseline a reviewer would ask about:
//! a hand-rolled parser that finds the end of the head, splits it on
//! `"\r\n"` and copies everything into `String`s, a `HashMap` of lowercased
//! header names and an owned body, the way a naive server does it.
//!
//! - `http/purchase`: one `POST /sales/{id}/purchase` from a mobile app:
//!   eight headers (Host, User-Agent, Accept, ..., Idempotency-Key) and the
//!   JSON body — the request a flash sale is made of.
//! - `http/healthz`: one `GET /healthz` from a load balancer's probe.
//! - `http/pipelined_16`: 16 purchases from 16 buyers back to back in one
//!   read buffer (a pipelining client), parsed one after the other as the
//!   connection loop does.
//!
//! Both parsers extract the same things (method, path without the query,
//! Content-Length framing, Connection, Idempotency-Key, Authorization,
//! Expect, body); the setup checks they agree on every sample before
//! anything is timed. Throughput is requests per second. Run:
//! `cargo bench -p bench --bench http` (add `-- --quick` for a smoke run).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::http::{parse, Method, Parsed, Request};

/// A purchase as a buyer's app sends it.
fn purchase(user: u32) -> Vec<u8> {
    let body = format!("{{\"user_id\":\"u{user}\",\"quantity\":1}}");
    format!(
        "POST /sales/s-2026-black-friday/purchase HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         User-Agent: ShopApp/7.12.0 (iPhone; iOS 19.1; Scale/3.00)\r\n\
         Accept: application/json\r\n\
         Accept-Encoding: gzip, deflate, br\r\n\
         Accept-Language: en-GB,en;q=0.9\r\n\
         Content-Type: application/json\r\n\
         Idempotency-Key: u{user}-3f9c2a71-e4b8-4d0a-9f1e-6b2d7c5a8e10\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// A load balancer's health probe.
fn healthz() -> Vec<u8> {
    b"GET /healthz HTTP/1.1\r\nHost: 10.0.3.17:8080\r\nUser-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n".to_vec()
}

/// What both parsers must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: &'static str,
    path: String,
    idempotency_key: Option<Vec<u8>>,
    body: Vec<u8>,
    keep_alive: bool,
    used: usize,
}

fn seen_seckill(buf: &[u8]) -> Seen {
    let (r, used): (Request<'_>, usize) = match parse(buf) {
        Parsed::Complete(r, used) => (r, used),
        other => panic!("seckill parse: {other:?}"),
    };
    Seen {
        method: match r.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Other => "other",
        },
        path: r.path.to_string(),
        idempotency_key: r.idempotency_key.map(<[u8]>::to_vec),
        body: r.body.to_vec(),
        keep_alive: r.keep_alive,
        used,
    }
}

fn seen_naive(buf: &[u8]) -> Seen {
    let (r, used) = naive::parse(buf).expect("naive parse");
    Seen {
        method: match r.method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            _ => "other",
        },
        path: r.path.clone(),
        idempotency_key: r
            .headers
            .get("idempotency-key")
            .map(|v| v.as_bytes().to_vec()),
        body: r.body.clone(),
        keep_alive: r.keep_alive,
        used,
    }
}

/// Parses every request in `buf` with seckill's parser, as the connection
/// loop does with a read buffer; returns how many there were.
fn seckill_all(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while !buf.is_empty() {
        match parse(buf) {
            Parsed::Complete(req, used) => {
                black_box(&req);
                buf = &buf[used..];
                n += 1;
            }
            other => panic!("seckill parse: {other:?}"),
        }
    }
    n
}

fn naive_all(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while !buf.is_empty() {
        let (req, used) = naive::parse(buf).expect("naive parse");
        black_box(&req);
        buf = &buf[used..];
        n += 1;
    }
    n
}

fn single(c: &mut Criterion, group: &str, raw: &[u8]) {
    assert_eq!(seen_seckill(raw), seen_naive(raw), "the parsers disagree");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("seckill_httparse", |b| {
        b.iter(|| seckill_all(black_box(raw)))
    });
    g.bench_function("naive_split_string", |b| {
        b.iter(|| naive_all(black_box(raw)))
    });
    g.finish();
}

fn purchase_one(c: &mut Criterion) {
    single(c, "http/purchase", &purchase(4_182_733));
}

fn healthz_one(c: &mut Criterion) {
    single(c, "http/healthz", &healthz());
}

fn pipelined(c: &mut Criterion) {
    const BATCH: u32 = 16;
    let mut raw = Vec::new();
    for user in 0..BATCH {
        let one = purchase(1_000_000 + user * 7919);
        assert_eq!(seen_seckill(&one), seen_naive(&one), "the parsers disagree");
        raw.extend_from_slice(&one);
    }
    assert_eq!(seckill_all(&raw), BATCH as usize);
    assert_eq!(naive_all(&raw), BATCH as usize);
    let mut g = c.benchmark_group("http/pipelined_16");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("seckill_httparse", |b| {
        b.iter(|| seckill_all(black_box(&raw)))
    });
    g.bench_function("naive_split_string", |b| {
        b.iter(|| naive_all(black_box(&raw)))
    });
    g.finish();
}

/// The baseline: what a server written without a parser library looks like.
mod naive {
    use super::HashMap;

    pub struct Request {
        pub method: String,
        pub path: String,
        pub headers: HashMap<String, String>,
        pub body: Vec<u8>,
        pub keep_alive: bool,
    }

    /// The first request in `buf` and the bytes it used; `None` when it is
    /// incomplete or malformed.
    pub fn parse(buf: &[u8]) -> Option<(Request, usize)> {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
        let mut lines = head.split("\r\n");
        let mut parts = lines.next()?.split(' ');
        let method = parts.next()?.to_string();
        let target = parts.next()?.to_string();
        let version = parts.next()?.to_string();
        let path = target.split('?').next()?.to_string();
        let mut headers = HashMap::new();
        for line in lines {
            let (name, value) = line.split_once(':')?;
            headers.insert(name.trim().to_lowercase(), value.trim().to_string());
        }
        let body_len: usize = match headers.get("content-length") {
            Some(v) => v.parse().ok()?,
            None => 0,
        };
        let start = head_end + 4;
        let body = buf.get(start..start + body_len)?.to_vec();
        let keep_alive = match headers.get("connection").map(|v| v.to_lowercase()) {
            Some(v) if v == "close" => false,
            Some(v) if v == "keep-alive" => true,
            _ => version == "HTTP/1.1",
        };
        // Read like the node reads them, so both do the same work.
        let _ = (
            headers.get("authorization"),
            headers.get("expect"),
            headers.get("transfer-encoding"),
        );
        Some((
            Request {
                method,
                path,
                headers,
                body,
                keep_alive,
            },
            start + body_len,
        ))
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = purchase_one, healthz_one, pipelined
}
criterion_main!(benches);
