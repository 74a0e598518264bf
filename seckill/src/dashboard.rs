//! `GET /dashboard`: the operator's live page, one HTML file with its CSS
//! and JS inline (`dashboard/index.html`), embedded in the binary: no CDN,
//! no build step.
//!
//! The page itself holds no data and no secret, so it is served to anyone
//! (a browser cannot send a bearer header when it navigates). It asks for
//! the admin token once, keeps it in the tab's sessionStorage, and sends it
//! as `Authorization` on every call: `/admin/stats` each second, and the
//! switches (`/admin/sales/{id}/pause|resume|close`). The token never goes
//! into a URL.

use crate::http::Reply;

const PAGE: &str = include_str!("dashboard/index.html");

/// Writes the page into `body`.
pub fn page(body: &mut Vec<u8>) -> Reply {
    body.extend_from_slice(PAGE.as_bytes());
    Reply {
        status: 200,
        content_type: "text/html; charset=utf-8",
        replayed: false,
    }
}
