//! HTTP/1.1 on one connection: parse requests with `httparse`, enforce the
//! size limits, write responses, keep-alive and pipelining.
//!
//! PERFORMANCE-CRITICAL PATH. Every request goes through `parse` and
//! `Response::write_to`. Banned here: blocking I/O, logging at info level or
//! above, locks, allocation per request (the read and write buffers belong
//! to the connection and are reused).

use std::io::Write;

/// A successful answer; its body is already in the body buffer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub replayed: bool,
}

impl Reply {
    /// 200, `application/json`.
    pub(crate) fn json() -> Self {
        Reply {
            status: 200,
            content_type: "application/json",
            replayed: false,
        }
    }
}

/// Headers over this many bytes are answered 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Bodies over this many bytes are answered 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// More header lines than this is answered 431.
const MAX_HEADERS: usize = 32;

/// The methods the API uses; anything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Other,
}

/// One parsed request, borrowing the connection's read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without the query string.
    pub path: &'a str,
    pub idempotency_key: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    /// `X-Request-Id` as sent (validated by `reqid::RequestId`).
    pub request_id: Option<&'a [u8]>,
    /// W3C `traceparent` as sent (validated by `reqid::valid_traceparent`).
    pub traceparent: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expects_continue: bool,
}

/// Why a request could not be parsed. Each one closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line, header or framing → 400.
    Malformed(&'static str),
    /// Headers over the limit → 431.
    HeadersTooLarge,
    /// Body over the limit → 413.
    BodyTooLarge,
}

/// The outcome of looking at the start of the read buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole request and how many bytes of the buffer it used.
    Complete(Request<'a>, usize),
    /// More bytes are needed. `expects_continue`: the headers are complete
    /// and ask for `Expect: 100-continue` (so that it can be answered).
    Partial {
        expects_continue: bool,
    },
    Error(HttpError),
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEADER_BYTES {
                Parsed::Error(HttpError::HeadersTooLarge)
            } else {
                Parsed::Partial {
                    expects_continue: false,
                }
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(HttpError::HeadersTooLarge),
        Err(e) => return Parsed::Error(HttpError::Malformed(malformed(e))),
    };
    if head_len > MAX_HEADER_BYTES {
        return Parsed::Error(HttpError::HeadersTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        _ => Method::Other,
    };
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_length: Option<usize> = None;
    let mut idempotency_key = None;
    let mut authorization = None;
    let mut request_id = None;
    let mut traceparent = None;
    let mut expects_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(len) = parse_usize(h.value) else {
                return Parsed::Error(HttpError::Malformed("invalid Content-Length"));
            };
            if content_length.is_some_and(|l| l != len) {
                return Parsed::Error(HttpError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(HttpError::Malformed(
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                keep_alive = false;
            } else if contains_token(h.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            idempotency_key = Some(h.value);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = Some(h.value);
        } else if name.eq_ignore_ascii_case("traceparent") {
            traceparent = Some(h.value);
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Parsed::Error(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Parsed::Partial { expects_continue };
    }
    let path = req.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Parsed::Complete(
        Request {
            method,
            path,
            idempotency_key,
            authorization,
            request_id,
            traceparent,
            body: &buf[head_len..total],
            keep_alive,
            expects_continue,
        },
        total,
    )
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

fn parse_usize(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The reason phrase of the statuses this service sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The header that ends a connection after its answer.
const CLOSE: &[u8] = b"connection: close\r\n";

/// A response about to be written: status, extra headers, body.
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'static str,
    pub body: &'a [u8],
    pub retry_after: Option<u32>,
    pub replayed: bool,
    /// The `Allow` header of a 405: the methods the path serves.
    pub allow: Option<&'static str>,
    /// The `X-Request-Id` header: the request's id (purchases and order
    /// calls).
    pub request_id: Option<&'a str>,
}

impl<'a> Response<'a> {
    pub fn json(status: u16, body: &'a [u8]) -> Self {
        Response {
            status,
            content_type: "application/json",
            body,
            retry_after: None,
            replayed: false,
            allow: None,
            request_id: None,
        }
    }

    /// Appends the whole response to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>, keep_alive: bool) {
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(secs) = self.retry_after {
            let _ = write!(out, "retry-after: {secs}\r\n");
        }
        if self.replayed {
            out.extend_from_slice(b"idempotent-replayed: true\r\n");
        }
        if let Some(allow) = self.allow {
            let _ = write!(out, "allow: {allow}\r\n");
        }
        if let Some(id) = self.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(CLOSE);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
    }
}

/// A whole response made once and then copied, for the answers the crowd
/// gets most (the refusals of a sold-out or closed sale): no formatting per
/// request. `head` is the status line and the headers, `tail` the blank
/// line and the body; the headers of the request's own (`x-request-id`,
/// `connection: close`) go between.
#[derive(Debug)]
pub struct Prebuilt {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Prebuilt {
    /// The bytes `resp.write_to` writes, split for `write_to`.
    pub fn new(resp: &Response<'_>) -> Prebuilt {
        let mut head = Vec::new();
        resp.write_to(&mut head, true);
        let blank = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a written response has a blank line");
        let tail = head.split_off(blank + 2);
        Prebuilt { head, tail }
    }

    /// Appends the response to `out`, as `Response::write_to` would.
    pub fn write_to(&self, out: &mut Vec<u8>, request_id: Option<&str>, keep_alive: bool) {
        out.extend_from_slice(&self.head);
        if let Some(id) = request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(CLOSE);
        }
        out.extend_from_slice(&self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_purchase_with_body_and_headers() {
        let raw = b"POST /sales/s1/purchase?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nIdempotency-Key: k1\r\n\r\n{}GET /healthz HTTP/1.1\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/sales/s1/purchase");
        assert_eq!(r.body, b"{}");
        assert_eq!(r.idempotency_key, Some(&b"k1"[..]));
        assert_eq!(r.request_id, None);
        assert!(r.keep_alive);
        // Pipelined: the next request starts right after.
        let (r2, _) = complete(&raw[n..]);
        assert_eq!(r2.path, "/healthz");
    }

    #[test]
    fn parses_request_id_and_traceparent() {
        let raw = b"GET /orders/1-a HTTP/1.1\r\nX-Request-Id: r-1\r\ntraceparent: 00-ab\r\n\r\n";
        let (r, _) = complete(raw);
        assert_eq!(r.request_id, Some(&b"r-1"[..]));
        assert_eq!(r.traceparent, Some(&b"00-ab"[..]));
        let mut out = Vec::new();
        let mut resp = Response::json(410, b"{}");
        resp.request_id = Some("r-1");
        resp.write_to(&mut out, true);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("x-request-id: r-1\r\n"));
    }

    #[test]
    fn partial_until_the_body_is_in() {
        let raw = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nab";
        assert!(matches!(
            parse(raw),
            Parsed::Partial {
                expects_continue: true
            }
        ));
        assert!(matches!(parse(b"GET / HT"), Parsed::Partial { .. }));
    }

    #[test]
    fn limits_and_malformed_input() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert!(matches!(
            parse(&big),
            Parsed::Error(HttpError::HeadersTooLarge)
        ));
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert!(matches!(parse(raw), Parsed::Error(HttpError::BodyTooLarge)));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Parsed::Error(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Parsed::Error(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Error(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn writes_headers_for_retry_and_replay() {
        let mut out = Vec::new();
        let mut resp = Response::json(503, b"{}");
        resp.retry_after = Some(1);
        resp.write_to(&mut out, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("retry-after: 1\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
