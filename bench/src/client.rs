//! The load generator's HTTP/1.1 client: one keep-alive connection sends a
//! request and reads its whole response (no pipelining), on a monoio
//! runtime.
//!
//! PERFORMANCE-CRITICAL PATH (of the load generator): every request goes
//! through [`Connection::exchange`] and [`parse_response`]. Banned here:
//! blocking I/O, allocation per request (the read buffer belongs to the
//! connection and is reused; the request buffer is handed back).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Most header lines a response may have.
const MAX_HEADERS: usize = 16;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The parts of a response the harness uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// `Idempotent-Replayed: true` was present.
    pub replayed: bool,
    /// The server will close the connection after this response.
    pub close: bool,
    /// Where the body is in the connection's read buffer.
    pub body: Range<usize>,
}

/// The outcome of looking at the start of a read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedResponse {
    /// A whole response and how many bytes of the buffer it used.
    Complete(ResponseHead, usize),
    /// More bytes are needed.
    Partial,
    /// Not HTTP/1.1 we understand (or chunked, which the node never sends).
    Invalid(&'static str),
}

/// Parses the first response in `buf` (it must carry `Content-Length`).
pub fn parse_response(buf: &[u8]) -> ParsedResponse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return ParsedResponse::Invalid("response head too large")
        }
        Ok(httparse::Status::Partial) => return ParsedResponse::Partial,
        Err(_) => return ParsedResponse::Invalid("malformed response"),
    };
    let mut content_length = None;
    let mut replayed = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) => content_length = Some(n),
                None => return ParsedResponse::Invalid("bad content-length"),
            }
        } else if h.name.eq_ignore_ascii_case("idempotent-replayed") {
            replayed = h.value.eq_ignore_ascii_case(b"true");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return ParsedResponse::Invalid("chunked responses are not supported");
        }
    }
    let status = resp.code.unwrap_or(0);
    let body_len = match content_length {
        Some(n) => n,
        // 1xx, 204 and 304 have no body; anything else must say its length.
        None if status < 200 || status == 204 || status == 304 => 0,
        None => return ParsedResponse::Invalid("response without content-length"),
    };
    let end = head_len + body_len;
    if buf.len() < end {
        return ParsedResponse::Partial;
    }
    ParsedResponse::Complete(
        ResponseHead {
            status,
            replayed,
            close,
            body: head_len..end,
        },
        end,
    )
}

/// The stable error code of an error body (`{"error":"sold_out",...}`),
/// found without a JSON parse.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"error\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    Some(&body[at..at + len])
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: TcpStream,
    rbuf: Vec<u8>,
}

impl Connection {
    /// Connects (with `TCP_NODELAY`).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_addr(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            rbuf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads the whole response. The request buffer is
    /// handed back for reuse whatever happens.
    pub async fn exchange(&mut self, request: Vec<u8>) -> (io::Result<ResponseHead>, Vec<u8>) {
        let (written, request) = self.stream.write_all(request).await;
        if let Err(e) = written {
            return (Err(e), request);
        }
        (self.read_response().await, request)
    }

    /// The body of the last response.
    pub fn body(&self, head: &ResponseHead) -> &[u8] {
        &self.rbuf[head.body.clone()]
    }

    async fn read_response(&mut self) -> io::Result<ResponseHead> {
        self.rbuf.clear();
        loop {
            if !self.rbuf.is_empty() {
                match parse_response(&self.rbuf) {
                    ParsedResponse::Complete(head, used) if used == self.rbuf.len() => {
                        return Ok(head)
                    }
                    ParsedResponse::Complete(..) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bytes after the response to an unpipelined request",
                        ))
                    }
                    ParsedResponse::Partial => {}
                    ParsedResponse::Invalid(why) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, why))
                    }
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(self.rbuf.capacity().max(4096));
            }
            let buf = std::mem::take(&mut self.rbuf);
            let start = buf.len();
            let (read, slice) = self.stream.read(buf.slice_mut(start..)).await;
            self.rbuf = slice.into_inner();
            if read? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_node_response() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nidempotent-replayed: true\r\n\r\n{}";
        match parse_response(raw) {
            ParsedResponse::Complete(h, n) => {
                assert_eq!(n, raw.len());
                assert_eq!(h.status, 200);
                assert!(h.replayed);
                assert!(!h.close);
                assert_eq!(&raw[h.body], b"{}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_the_whole_body_and_sees_close() {
        let raw = b"HTTP/1.1 410 Gone\r\ncontent-length: 10\r\nconnection: close\r\n\r\n{\"error\"";
        assert_eq!(parse_response(raw), ParsedResponse::Partial);
        assert_eq!(parse_response(&raw[..20]), ParsedResponse::Partial);
        let whole = b"HTTP/1.1 410 Gone\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        match parse_response(whole) {
            ParsedResponse::Complete(h, _) => assert!(h.close && h.status == 410),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_what_it_cannot_frame() {
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            ParsedResponse::Invalid(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            ParsedResponse::Invalid(_)
        ));
        assert!(matches!(
            parse_response(b"garbage\r\n\r\n"),
            ParsedResponse::Invalid(_)
        ));
    }

    #[test]
    fn finds_error_codes() {
        assert_eq!(
            error_code(br#"{"error":"sold_out","message":"no unit is left"}"#),
            Some(&b"sold_out"[..])
        );
        assert_eq!(error_code(br#"{"order_id":"1-2"}"#), None);
    }
}
