//! Every error the API answers, and the one place where domain errors
//! become HTTP statuses and the stable codes of docs/api.md.
//!
//! A backend's own words (Redis and Kafka errors: hosts, ports, replies)
//! never reach a client: those errors answer a stable message, and their
//! detail goes to the log, at most one line a second per core.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use queue::LogError;
use stock::StockError;
use tracing::warn;

use crate::http::{HttpError, Prebuilt, Response};

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadRequestStatic(&'static str),
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// A missing or invalid buyer token, ticket or payment token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// A method the path does not serve; names the one it does (the
    /// `Allow` header of the 405).
    #[error("method not allowed; this path serves {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body over 16 KiB")]
    BodyTooLarge,
    #[error("request headers over 8 KiB")]
    HeadersTooLarge,
    #[error("no admission token is free; retry shortly")]
    Overloaded,
    #[error("too many purchase requests from this {by}; retry in {retry_after_s} s")]
    RateLimited {
        by: &'static str,
        retry_after_s: u32,
    },
    #[error(transparent)]
    Stock(#[from] StockError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Malformed(why) => ApiError::BadRequestStatic(why),
            HttpError::HeadersTooLarge => ApiError::HeadersTooLarge,
            HttpError::BodyTooLarge => ApiError::BodyTooLarge,
        }
    }
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::BadRequestStatic(_) => 400,
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::BodyTooLarge => 413,
            ApiError::HeadersTooLarge => 431,
            ApiError::Overloaded => 503,
            ApiError::RateLimited { .. } => 429,
            ApiError::Stock(e) => match e {
                StockError::SaleNotFound | StockError::OrderNotFound => 404,
                StockError::SaleNotOpen => 403,
                StockError::SoldOut => 410,
                StockError::LimitExceeded
                | StockError::InProgress
                | StockError::InvalidState(_) => 409,
                StockError::KeyReused => 422,
                StockError::Unavailable(_) | StockError::Undetermined(_) => 503,
            },
            ApiError::Log(_) => 503,
        }
    }

    /// The stable code of the error table in docs/api.md.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::BadRequestStatic(_)
            | ApiError::MethodNotAllowed(_) => "bad_request",
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::BodyTooLarge | ApiError::HeadersTooLarge => "too_large",
            ApiError::Overloaded => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Stock(e) => e.code(),
            ApiError::Log(e) => e.code(),
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Overloaded | ApiError::RateLimited { .. } => true,
            ApiError::Stock(e) => e.is_retryable(),
            ApiError::Log(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Seconds a client should wait before retrying, where retrying helps
    /// and the wait is the server's to tell (429, 503). A request whose
    /// Idempotency-Key is still in progress (409) waits on the client's own
    /// first request, so it gets none.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::Stock(StockError::InProgress) => None,
            e if e.is_retryable() => Some(1),
            _ => None,
        }
    }

    /// The message answered instead of the error's own text, for backend
    /// errors whose text is for the operator, not the client.
    fn stable_message(&self) -> Option<&'static str> {
        match self {
            ApiError::Stock(StockError::Unavailable(_) | StockError::Undetermined(_)) => {
                Some("the stock service is unavailable; retry")
            }
            ApiError::Log(_) => Some("the order log is unavailable; retry"),
            _ => None,
        }
    }

    /// Appends the whole answer to `out`, `body` as scratch for its body.
    /// A sale's refusals (sold out, not open) are copied from bytes made
    /// once: the same bytes `render` gives, without formatting them again.
    pub fn write_to(
        &self,
        out: &mut Vec<u8>,
        body: &mut Vec<u8>,
        request_id: Option<&str>,
        keep_alive: bool,
    ) {
        static SOLD_OUT: LazyLock<Prebuilt> =
            LazyLock::new(|| ApiError::Stock(StockError::SoldOut).prebuild());
        static NOT_OPEN: LazyLock<Prebuilt> =
            LazyLock::new(|| ApiError::Stock(StockError::SaleNotOpen).prebuild());
        match self {
            ApiError::Stock(StockError::SoldOut) => SOLD_OUT.write_to(out, request_id, keep_alive),
            ApiError::Stock(StockError::SaleNotOpen) => {
                NOT_OPEN.write_to(out, request_id, keep_alive)
            }
            _ => self.render_for(body, request_id).write_to(out, keep_alive),
        }
    }

    fn prebuild(&self) -> Prebuilt {
        Prebuilt::new(&self.render(&mut Vec::new()))
    }

    /// Writes `{"error": CODE, "message": "..."}` into `body` and returns the
    /// response that carries it.
    pub fn render<'b>(&self, body: &'b mut Vec<u8>) -> Response<'b> {
        self.render_for(body, None)
    }

    /// [`ApiError::render`] for the request `request_id`: the id is in the
    /// `x-request-id` header and in the log line of a backend error.
    pub fn render_for<'b>(
        &self,
        body: &'b mut Vec<u8>,
        request_id: Option<&'b str>,
    ) -> Response<'b> {
        body.clear();
        body.extend_from_slice(b"{\"error\":\"");
        body.extend_from_slice(self.code().as_bytes());
        body.extend_from_slice(b"\",\"message\":\"");
        match self.stable_message() {
            Some(message) => {
                log_detail(self, request_id);
                body.extend_from_slice(message.as_bytes());
            }
            // Display writes straight into the buffer, escaped: no String.
            None => {
                let _ = write!(JsonEscaped(body), "{self}");
            }
        }
        body.extend_from_slice(b"\"}");
        let mut resp = Response::json(self.status(), body);
        resp.retry_after = self.retry_after();
        resp.request_id = request_id;
        if let ApiError::MethodNotAllowed(allow) = self {
            resp.allow = Some(allow);
        }
        resp
    }
}

/// Logs the detail of a backend error answered with a stable message: at
/// most one line a second per thread (per core), counting the ones left
/// out since the last.
fn log_detail(err: &ApiError, request_id: Option<&str>) {
    thread_local! {
        /// When a line was last logged, and how many were left out since.
        static LAST: Cell<(Option<Instant>, u64)> = const { Cell::new((None, 0)) };
    }
    LAST.with(|last| {
        let (at, left_out) = last.get();
        let now = Instant::now();
        if at.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            last.set((at, left_out + 1));
            return;
        }
        last.set((Some(now), 0));
        warn!(error = %err, request_id, left_out, "a backend error answered 503");
    });
}

/// Escapes what is written into a JSON string body.
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.extend_from_slice(b"\\\""),
                '\\' => self.0.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = std::io::Write::write_fmt(self.0, format_args!("\\u{:04x}", c as u32));
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    self.0
                        .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_follow_the_table() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequestStatic("x"), 400, "bad_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (StockError::SaleNotFound.into(), 404, "not_found"),
            (StockError::SaleNotOpen.into(), 403, "sale_not_open"),
            (StockError::LimitExceeded.into(), 409, "limit_exceeded"),
            (StockError::InProgress.into(), 409, "in_progress"),
            (StockError::InvalidState("x").into(), 409, "invalid_state"),
            (StockError::SoldOut.into(), 410, "sold_out"),
            (ApiError::BodyTooLarge, 413, "too_large"),
            (ApiError::HeadersTooLarge, 431, "too_large"),
            (StockError::KeyReused.into(), 422, "idempotency_key_reused"),
            (ApiError::Overloaded, 503, "overloaded"),
            (LogError::Unavailable("x".into()).into(), 503, "unavailable"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[test]
    fn backend_errors_answer_a_stable_message_without_their_detail() {
        const STOCK: &str = "the stock service is unavailable; retry";
        const LOG: &str = "the order log is unavailable; retry";
        let detail = "connect redis://10.0.0.7:6379: Connection refused (os error 111)";
        let cases: Vec<(ApiError, &str)> = vec![
            (StockError::Unavailable(detail.into()).into(), STOCK),
            (StockError::Undetermined(detail.into()).into(), STOCK),
            (LogError::Unavailable(detail.into()).into(), LOG),
            (LogError::Undetermined(detail.into()).into(), LOG),
        ];
        let mut body = Vec::new();
        for (err, message) in cases {
            let resp = err.render(&mut body);
            assert_eq!(resp.status, 503, "{err:?}");
            assert_eq!(resp.retry_after, Some(1), "{err:?}");
            let v: serde_json::Value = serde_json::from_slice(resp.body).unwrap();
            assert_eq!(v["error"], "unavailable", "{err:?}");
            assert_eq!(v["message"], message, "{err:?}");
        }
    }

    #[test]
    fn retry_after_is_answered_with_429_and_503_only() {
        let errors: Vec<ApiError> = vec![
            ApiError::BadRequest("x".into()),
            ApiError::BadRequestStatic("x"),
            ApiError::Unauthorized,
            ApiError::Unauthenticated("x"),
            ApiError::NotFound("x"),
            ApiError::MethodNotAllowed("GET"),
            ApiError::BodyTooLarge,
            ApiError::HeadersTooLarge,
            ApiError::Overloaded,
            ApiError::RateLimited {
                by: "user",
                retry_after_s: 7,
            },
            StockError::SaleNotFound.into(),
            StockError::OrderNotFound.into(),
            StockError::SaleNotOpen.into(),
            StockError::SoldOut.into(),
            StockError::LimitExceeded.into(),
            StockError::InProgress.into(),
            StockError::KeyReused.into(),
            StockError::InvalidState("x").into(),
            StockError::Unavailable("x".into()).into(),
            StockError::Undetermined("x".into()).into(),
            LogError::Unavailable("x".into()).into(),
            LogError::Undetermined("x".into()).into(),
        ];
        for e in &errors {
            let expected = match e.status() {
                429 => Some(7),
                503 => Some(1),
                _ => None,
            };
            assert_eq!(e.retry_after(), expected, "{e:?}");
            if expected.is_some() {
                assert!(e.is_retryable(), "{e:?}");
            }
        }
    }

    #[test]
    fn prebuilt_refusals_are_the_rendered_bytes() {
        for err in [
            ApiError::Stock(StockError::SoldOut),
            ApiError::Stock(StockError::SaleNotOpen),
            ApiError::Overloaded,
        ] {
            for (keep_alive, id) in [
                (true, None),
                (false, None),
                (true, Some("r-1")),
                (false, Some("r-1")),
            ] {
                let (mut rendered, mut body) = (b"before".to_vec(), Vec::new());
                err.render_for(&mut body, id)
                    .write_to(&mut rendered, keep_alive);
                let mut written = b"before".to_vec();
                err.write_to(&mut written, &mut Vec::new(), id, keep_alive);
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(rendered).unwrap(),
                    "{err:?}, keep-alive {keep_alive}, request id {id:?}"
                );
            }
        }
    }

    #[test]
    fn renders_escaped_json_with_retry_after() {
        let mut body = Vec::new();
        let resp = ApiError::BadRequest("bad \"x\"\n".into()).render(&mut body);
        assert_eq!(resp.status, 400);
        let v: serde_json::Value = serde_json::from_slice(resp.body).unwrap();
        assert_eq!(v["error"], "bad_request");
        assert_eq!(v["message"], "bad \"x\"\n");
        let resp = ApiError::Overloaded.render(&mut body);
        assert_eq!(resp.retry_after, Some(1));
    }
}
