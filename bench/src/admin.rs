//! The harness's control-plane calls to a node: create a sale, read its
//! state. Plain blocking HTTP/1.1 over `std::net` (one request per
//! connection); never used on the load path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{parse_response, ParsedResponse};
use crate::BenchError;

/// The sale a scenario creates (`PUT /admin/sales/{id}` body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSetup {
    pub stock: u64,
    pub per_user_limit: u32,
    /// Unix seconds; absent: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_timeout_s: Option<u64>,
}

/// `GET /sales/{id}`, the fields the audit uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleView {
    pub sale_id: String,
    pub state: String,
    pub stock: u64,
    pub sold: u64,
    pub remaining: u64,
    pub per_user_limit: u32,
}

/// Creates (or re-creates) a sale.
pub fn create_sale(
    addr: SocketAddr,
    token: &str,
    sale: &str,
    setup: &SaleSetup,
) -> Result<(), BenchError> {
    let body = serde_json::to_vec(setup).map_err(|e| BenchError::Admin(e.to_string()))?;
    let auth = format!("Bearer {token}");
    let (status, answer) = request(
        addr,
        "PUT",
        &format!("/admin/sales/{sale}"),
        &[("Authorization", auth.as_str())],
        &body,
    )?;
    if status != 200 {
        return Err(BenchError::Admin(format!(
            "PUT /admin/sales/{sale} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}

/// Whether the node knows the sale (GET /sales/{sale}: 200 or 404).
pub fn sale_exists(addr: SocketAddr, sale: &str) -> Result<bool, BenchError> {
    let (status, body) = request(addr, "GET", &format!("/sales/{sale}"), &[], b"")?;
    match status {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(BenchError::Admin(format!(
            "GET /sales/{sale} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}

/// Reads a sale's state.
pub fn sale_view(addr: SocketAddr, sale: &str) -> Result<SaleView, BenchError> {
    let (status, body) = request(addr, "GET", &format!("/sales/{sale}"), &[], b"")?;
    if status != 200 {
        return Err(BenchError::Admin(format!(
            "GET /sales/{sale} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| BenchError::Admin(format!("GET /sales/{sale}: unexpected body: {e}")))
}

/// One blocking request on a fresh connection: (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), BenchError> {
    let fail = |e: std::io::Error| BenchError::Admin(format!("{method} {path} to {addr}: {e}"));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(fail)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse_response(&buf) {
            ParsedResponse::Complete(head, _) => {
                return Ok((head.status, buf[head.body].to_vec()));
            }
            ParsedResponse::Invalid(why) => {
                return Err(BenchError::Admin(format!("{method} {path}: {why}")))
            }
            ParsedResponse::Partial => {}
        }
        let n = stream.read(&mut chunk).map_err(fail)?;
        if n == 0 {
            return Err(BenchError::Admin(format!(
                "{method} {path}: connection closed before the whole response"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
