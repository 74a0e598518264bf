//! Criterion benchmarks of buyer-token verification
//! ([`seckill::auth::BuyerKeys::verify`]), which runs on every purchase,
//! sold-out ones included, beside the path without it.
//!
//! - `auth/verify`: one valid token (HMAC-SHA256 of the base64url payload,
//!   constant-time compare, payload decoded into a stack buffer and parsed
//!   borrowing): the figure for one verification. `second_key` is a token
//!   signed with the second of two keys (rotation: the first is tried in
//!   vain), `forged` one no key signed (both keys tried).
//! - `sold_out/purchase`: a whole sold-out `POST /sales/{id}/purchase`
//!   answered by an embedded node's core (`Core::handle`: parse, token,
//!   sale cache, gate, 410 written), `keys_off` (trusted mode; the same
//!   request, its Authorization header unread) vs `keys_on`. Their ratio is
//!   what verification costs the sold-out path.
//!
//! Run: `cargo bench -p bench --bench auth` (add `-- --quick` for a smoke
//! run).

use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::auth::{self, BuyerKeys, Claims, PayloadBuf};
use seckill::config::Config;
use seckill::http::{Method, Request};
use seckill::node::{Core, EmbeddedNode};

const KEY: &str = "bench-buyer-key-0123456789abcdef";
const OTHER: &str = "bench-other-key-0123456789abcdef";
/// Far in the future: the token never expires during a run.
const EXP: u64 = 4_000_000_000;

fn claims(sub: &str) -> Claims<'_> {
    Claims {
        sub,
        sale: None,
        exp: EXP,
        nbf: None,
    }
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth/verify");
    g.throughput(Throughput::Elements(1));
    let one = BuyerKeys::new(&[KEY]).unwrap();
    let two = BuyerKeys::new(&[OTHER, KEY]).unwrap();
    let valid = format!("Bearer {}", auth::mint(KEY.as_bytes(), &claims("u123456")));
    let forged = format!(
        "Bearer {}",
        auth::mint(b"nobody-listed-this-0123456789", &claims("u123456"))
    );
    let mut buf = PayloadBuf::default();
    assert!(one.verify(Some(valid.as_bytes()), 1, &mut buf).is_ok());
    assert!(two.verify(Some(valid.as_bytes()), 1, &mut buf).is_ok());
    assert!(two.verify(Some(forged.as_bytes()), 1, &mut buf).is_err());
    g.bench_function("valid", |b| {
        b.iter(|| {
            let claims = one.verify(Some(black_box(valid.as_bytes())), 1, &mut buf);
            black_box(claims.map(|c| c.sub.len()).ok());
        })
    });
    g.bench_function("second_key", |b| {
        b.iter(|| {
            let claims = two.verify(Some(black_box(valid.as_bytes())), 1, &mut buf);
            black_box(claims.map(|c| c.sub.len()).ok());
        })
    });
    g.bench_function("forged", |b| {
        b.iter(|| {
            let claims = two.verify(Some(black_box(forged.as_bytes())), 1, &mut buf);
            black_box(claims.is_err());
        })
    });
    g.finish();
}

/// Polls `f` once: the sold-out path never waits.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the sold-out path waited"),
    }
}

/// A core of an embedded node whose sale `s` is sold out.
fn sold_out_core(
    keys: BuyerKeys,
    dir: &std::path::Path,
) -> Core<stock::EmbeddedAuthority, queue::Journal> {
    let config = Config {
        data_dir: dir.to_owned(),
        cores: 1,
        buyer_keys: keys,
        ..Config::default()
    };
    let (node, _) = EmbeddedNode::open_embedded(config, "admin".into()).unwrap();
    let core = Core::new(0, node);
    let token = format!("Bearer {}", auth::mint(KEY.as_bytes(), &claims("first")));
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut out, mut body) = (Vec::new(), Vec::new());
        let put = Request {
            method: Method::Put,
            path: "/admin/sales/s",
            idempotency_key: None,
            authorization: Some(b"Bearer admin"),
            request_id: None,
            traceparent: None,
            body: br#"{"stock": 1, "per_user_limit": 1}"#,
            keep_alive: true,
            expects_continue: false,
        };
        core.handle(&put, Ipv4Addr::LOCALHOST.into(), &mut out, &mut body)
            .await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // The one unit, then a purchase that finds none and raises the flag.
        for expect in [&b"HTTP/1.1 200"[..], b"HTTP/1.1 410"] {
            out.clear();
            let buy = Request {
                method: Method::Post,
                path: "/sales/s/purchase",
                authorization: Some(token.as_bytes()),
                body: br#"{"user_id": "first", "quantity": 1}"#,
                ..put
            };
            core.handle(&buy, Ipv4Addr::LOCALHOST.into(), &mut out, &mut body)
                .await;
            assert!(out.starts_with(expect), "{}", String::from_utf8_lossy(&out));
        }
    });
    core
}

fn sold_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("sold_out/purchase");
    g.throughput(Throughput::Elements(1));
    let token = format!("Bearer {}", auth::mint(KEY.as_bytes(), &claims("u123456")));
    let req = Request {
        method: Method::Post,
        path: "/sales/s/purchase",
        idempotency_key: None,
        authorization: Some(token.as_bytes()),
        request_id: None,
        traceparent: None,
        body: br#"{"user_id": "u123456", "quantity": 1}"#,
        keep_alive: true,
        expects_continue: false,
    };
    let peer: IpAddr = Ipv4Addr::LOCALHOST.into();
    for (name, keys) in [
        ("keys_off", BuyerKeys::default()),
        ("keys_on", BuyerKeys::new(&[KEY]).unwrap()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let core = sold_out_core(keys, dir.path());
        let (mut out, mut body) = (Vec::with_capacity(512), Vec::with_capacity(512));
        now(core.handle(&req, peer, &mut out, &mut body));
        assert!(
            out.starts_with(b"HTTP/1.1 410"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(now(core.handle(black_box(&req), peer, &mut out, &mut body)));
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = verify, sold_out
}
criterion_main!(benches);
