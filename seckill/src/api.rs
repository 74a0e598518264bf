//! The HTTP API (docs/api.md): routing and one handler per endpoint.
//!
//! PERFORMANCE-CRITICAL PATH: `Core::purchase`. Its steps run in order,
//! one call each, returning early: buyer token and key headers → sale
//! lookup (per-core cache) → sale gate (sold-out flag; before the body is
//! parsed, for an unkeyed request) → parse the body → rate limit →
//! idempotency replay → admission token → take
//! units from the local shard → reserve with the stock authority → append
//! to the order log → confirm → answer. Banned on it: blocking I/O, locks
//! held across `.await`, logging at info level or above, allocation on the
//! sold-out and rejection paths beyond the response (the response buffers
//! are the connection's own and are reused). One exception, by contract: a
//! request with an Idempotency-Key its node does not know, about to be
//! refused (sold out, not open), first asks the stock authority what the
//! key stands for (`recall_key`: in cluster mode a batched Redis lookup,
//! bounded per node), so a retry gets its order on any node.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use queue::{Event, EventKind, OrderLog};
use serde::{Deserialize, Serialize};
use stock::{
    Attempt, KeyLookup, Order, OrderChange, OrderStatus, Reservation, Sale, SaleSpec,
    StockAuthority, StockError, Switch, Transition,
};
use tracing::debug;

use crate::auth::{self, PayloadBuf};
use crate::clock::{now_ms, now_s};
use crate::error::ApiError;
pub use crate::http::Reply;
use crate::http::{Method, Request, Response};
use crate::node::{Core, Failpoint};
use crate::reqid::{self, Trace};
use crate::timefmt;

/// The default payment timeout of a sale: 15 minutes.
pub const DEFAULT_PAYMENT_TIMEOUT_S: u64 = 900;
/// Longest accepted user id, sale id and Idempotency-Key.
const MAX_ID_LEN: usize = 64;

impl<A: StockAuthority, L: OrderLog> Core<A, L> {
    /// Answers one request from `peer`: appends the whole response to
    /// `out`, using `body` as scratch for the response body. Returns whether
    /// the connection may stay open.
    pub async fn handle(
        &self,
        req: &Request<'_>,
        peer: IpAddr,
        out: &mut Vec<u8>,
        body: &mut Vec<u8>,
    ) -> bool {
        let _inflight = self.begin_request();
        body.clear();
        let keep_alive = req.keep_alive && !self.node.is_shutting_down();
        let trace = reqid::is_traced(req.path).then(|| self.trace(req));
        let request_id = trace.as_ref().map(Trace::request_id);
        match self.route(req, peer, body, trace.as_ref()).await {
            Ok(reply) => {
                self.metrics().response(reply.status);
                Response {
                    status: reply.status,
                    content_type: reply.content_type,
                    body,
                    retry_after: None,
                    replayed: reply.replayed,
                    allow: None,
                    request_id,
                }
                .write_to(out, keep_alive);
            }
            Err(err) => {
                self.metrics().response(err.status());
                err.write_to(out, body, request_id, keep_alive);
            }
        }
        keep_alive
    }

    async fn route(
        &self,
        req: &Request<'_>,
        peer: IpAddr,
        body: &mut Vec<u8>,
        trace: Option<&Trace<'_>>,
    ) -> Result<Reply, ApiError> {
        let path = req.path;
        let method = req.method;
        if let Some(rest) = path.strip_prefix("/sales/") {
            return match (method, rest.split_once('/')) {
                (Method::Post, Some((id, "purchase"))) => {
                    let answer = self.purchase(id, req, peer, body, trace).await;
                    crate::stats::count_purchase(self, &answer);
                    if let Err(e) = &answer {
                        debug!(
                            request_id = trace.map(Trace::request_id),
                            sale_id = id,
                            status = e.status(),
                            code = e.code(),
                            "purchase refused"
                        );
                    }
                    answer
                }
                (Method::Get, None) => self.get_sale(rest, body),
                (_, Some((_, "purchase"))) => Err(ApiError::MethodNotAllowed("POST")),
                (_, None) => Err(ApiError::MethodNotAllowed("GET")),
                _ => Err(ApiError::NotFound("no such route")),
            };
        }
        if let Some(rest) = path.strip_prefix("/orders/") {
            return match (method, rest.split_once('/')) {
                (Method::Get, None) => self.get_order(rest, req, body).await,
                (Method::Post, Some((id, "pay"))) => {
                    self.pay_or_cancel(id, OrderStatus::Paid, req, body, trace)
                        .await
                }
                (Method::Post, Some((id, "cancel"))) => {
                    self.pay_or_cancel(id, OrderStatus::Cancelled, req, body, trace)
                        .await
                }
                (_, None) => Err(ApiError::MethodNotAllowed("GET")),
                (_, Some((_, "pay" | "cancel"))) => Err(ApiError::MethodNotAllowed("POST")),
                _ => Err(ApiError::NotFound("no such route")),
            };
        }
        if let Some(rest) = path.strip_prefix("/admin/sales/") {
            if !self.node.is_admin(req.authorization) {
                return Err(ApiError::Unauthorized);
            }
            return match (method, rest.split_once('/')) {
                (Method::Put, None) => self.create_sale(rest, req.body, body).await,
                (_, None) => Err(ApiError::MethodNotAllowed("PUT")),
                // `pause`, `resume`, `close`: `Switch`'s own words.
                (method, Some((id, word))) => match (method, word.parse::<Switch>()) {
                    (Method::Post, Ok(switch)) => self.switch_sale(id, switch, body).await,
                    (_, Ok(_)) => Err(ApiError::MethodNotAllowed("POST")),
                    (_, Err(_)) => Err(ApiError::NotFound("no such route")),
                },
            };
        }
        match (method, path) {
            (Method::Get, "/healthz") => {
                body.extend_from_slice(b"{\"status\":\"ok\"}");
                Ok(Reply::json())
            }
            (Method::Get, "/metrics") => {
                self.node.metrics.render(body);
                self.render_sale_gauges(body);
                Ok(Reply {
                    content_type: "text/plain; version=0.0.4",
                    ..Reply::json()
                })
            }
            (Method::Get, "/admin/stats") => {
                if !self.node.is_admin(req.authorization) {
                    return Err(ApiError::Unauthorized);
                }
                crate::stats::render(&self.node, body);
                Ok(Reply::json())
            }
            (Method::Get, "/dashboard") => Ok(crate::dashboard::page(body)),
            (Method::Get, "/openapi.json") => Ok(crate::openapi::serve(body)),
            (_, "/healthz" | "/metrics" | "/admin/stats" | "/dashboard" | "/openapi.json") => {
                Err(ApiError::MethodNotAllowed("GET"))
            }
            _ => Err(ApiError::NotFound("no such route")),
        }
    }

    /// `POST /sales/{id}/purchase`: the hot path, one step per line.
    async fn purchase(
        &self,
        sale_id: &str,
        req: &Request<'_>,
        peer: IpAddr,
        body: &mut Vec<u8>,
        trace: Option<&Trace<'_>>,
    ) -> Result<Reply, ApiError> {
        let mut token = PayloadBuf::default();
        let buyer = verify_buyer(req, sale_id, &self.node.config.buyer_keys, &mut token)?;
        let idempotency_key = idempotency_key(req)?;
        let now = now_s();
        // Refusals that do not depend on the body are decided before it is
        // read, from the per-core cache and read-mostly flags only: no
        // shared write, no allocation, no JSON (the sold-out crowd).
        let sale = self
            .with_sale(sale_id, |sale| -> Result<_, StockError> {
                if idempotency_key.is_none() {
                    // With a key, a retry must get its order back even
                    // after sell-out: that is decided below.
                    sale.gate(now)?;
                }
                Ok(sale.clone())
            })
            .ok_or(StockError::SaleNotFound)??;
        // The clock of the rate limits and the order latency: read once the
        // crowd's refusals are answered.
        let started = Instant::now();
        let input = PurchaseInput::parse(req.body, buyer)?;
        let attempt = Attempt {
            user_id: &input.user_id,
            quantity: input.quantity,
            idempotency_key,
            now,
            core: self.id,
        };
        if idempotency_key.is_none() && attempt.quantity > sale.spec().per_user_limit {
            return Err(StockError::LimitExceeded.into());
        }
        let ticket = buyer.is_some_and(|b| b.sale.is_some());
        if sale.spec().ticket_required && !ticket {
            return Err(ApiError::Unauthenticated("this sale needs a ticket for it"));
        }
        self.rate_limit(&attempt, peer, started)?;
        if attempt.idempotency_key.is_some() {
            if let KeyLookup::Replay(order) =
                self.node.authority.lookup_key(&sale, &attempt).await?
            {
                return self.replayed(&order, body);
            }
            if let Err(refused) = sale.gate(now) {
                return self.recall_or(refused, &sale, &attempt, body, trace).await;
            }
            if attempt.quantity > sale.spec().per_user_limit {
                return Err(StockError::LimitExceeded.into());
            }
        }
        let _permit = self
            .admission
            .acquire()
            .await
            .map_err(|_| ApiError::Overloaded)?;
        let units = match sale.stock.take(self.id, attempt.quantity) {
            Some(units) => units,
            None => match self
                .node
                .authority
                .refill(&sale, self.id, attempt.quantity)
                .await
            {
                Ok(units) => units,
                Err(refused @ (StockError::SoldOut | StockError::SaleNotOpen))
                    if attempt.idempotency_key.is_some() =>
                {
                    return self.recall_or(refused, &sale, &attempt, body, trace).await;
                }
                Err(e) => return Err(e.into()),
            },
        };
        let (order, pending) = match self.node.authority.reserve(&sale, &attempt, units).await? {
            Reservation::Replay(order) => {
                return self
                    .replayed_from_authority(&sale, &order, &attempt, body, trace)
                    .await;
            }
            Reservation::New { order, pending } => (order, pending),
        };
        self.node.failpoint(Failpoint::AfterReserve);
        let (request_id, traceparent) = ids(trace);
        let event = reserved_event(&order, &attempt, sale.id()).traced(request_id, traceparent);
        if let Err(e) = self.node.log.append(&event).await {
            self.node.authority.abort(pending);
            return Err(e.into());
        }
        self.node.authority.confirm(pending);
        self.metrics().order(started.elapsed().as_micros() as u64);
        debug!(
            request_id = trace.map(Trace::request_id),
            order_id = order.order_id,
            sale_id,
            "purchase reserved"
        );
        write_json(body, &OrderView::from(&order));
        Ok(Reply::json())
    }

    /// Charges the request to its user's and its address's rate limits.
    fn rate_limit(
        &self,
        attempt: &Attempt<'_>,
        peer: IpAddr,
        now: Instant,
    ) -> Result<(), ApiError> {
        if !self.limits.is_on() {
            return Ok(());
        }
        self.limits
            .check(attempt.user_id, peer, now)
            .map_err(|limited| ApiError::RateLimited {
                by: limited.by,
                // Whole seconds, rounded up, at least 1.
                retry_after_s: u32::try_from(limited.retry_after.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1),
            })
    }

    /// A keyed request about to be `refused` whose key this node's memory
    /// does not know: the key may stand for an order made on another node
    /// or before a restart, which is answered instead. Costs a (batched)
    /// backend call in cluster mode; unkeyed requests never come here.
    async fn recall_or(
        &self,
        refused: StockError,
        sale: &Sale,
        attempt: &Attempt<'_>,
        body: &mut Vec<u8>,
        trace: Option<&Trace<'_>>,
    ) -> Result<Reply, ApiError> {
        match self.node.authority.recall_key(sale, attempt).await? {
            KeyLookup::Replay(order) => {
                self.replayed_from_authority(sale, &order, attempt, body, trace)
                    .await
            }
            KeyLookup::Unused => Err(refused.into()),
        }
    }

    /// Answers a replay the shared authority found (the key first used on
    /// another node, or that node's answer lost). In cluster mode the order
    /// is logged again first, as it is now (`order_reserved`, then the
    /// event of its current status), so no 200 names an order the log may
    /// lack and no paid or cancelled order reads as reserved again.
    /// Consumers dedupe by order id.
    async fn replayed_from_authority(
        &self,
        sale: &Sale,
        order: &Order,
        attempt: &Attempt<'_>,
        body: &mut Vec<u8>,
        trace: Option<&Trace<'_>>,
    ) -> Result<Reply, ApiError> {
        if self.node.relog_replays {
            if self.node.fails_once(Failpoint::ReplayLog) {
                return Err(ApiError::Log(queue::LogError::Unavailable(
                    "failpoint replay_log".into(),
                )));
            }
            let (request_id, traceparent) = ids(trace);
            let reserved =
                reserved_event(order, attempt, &order.sale_id).traced(request_id, traceparent);
            self.node.log.append(&reserved).await?;
            if let Some(event) = transition_event(order, order.status) {
                let event = event.traced(request_id, traceparent);
                self.node.log.append(&event).await?;
            }
        }
        self.node.authority.replay_answered(sale, attempt, order);
        self.replayed(order, body)
    }

    fn replayed(&self, order: &Order, body: &mut Vec<u8>) -> Result<Reply, ApiError> {
        self.metrics().replay();
        // The first response again: the order as it was answered then.
        let mut view = OrderView::from(order);
        view.status = OrderStatus::Reserved.as_str();
        write_json(body, &view);
        Ok(Reply {
            replayed: true,
            ..Reply::json()
        })
    }

    fn get_sale(&self, sale_id: &str, body: &mut Vec<u8>) -> Result<Reply, ApiError> {
        let now = now_s();
        self.with_sale(sale_id, |sale| write_json(body, &SaleView::new(sale, now)))
            .ok_or(StockError::SaleNotFound)?;
        Ok(Reply::json())
    }

    async fn get_order(
        &self,
        order_id: &str,
        req: &Request<'_>,
        body: &mut Vec<u8>,
    ) -> Result<Reply, ApiError> {
        let mut token = PayloadBuf::default();
        let caller = self.order_caller(req, &mut token)?;
        let order = self.node.authority.order(order_id).await?;
        owned_by(&order, caller)?;
        write_json(body, &OrderView::from(&order));
        Ok(Reply::json())
    }

    /// `/pay` is the payment service's callback (admin or payment token);
    /// `/cancel` is the buyer's (or the admin's).
    async fn pay_or_cancel(
        &self,
        order_id: &str,
        to: OrderStatus,
        req: &Request<'_>,
        body: &mut Vec<u8>,
        trace: Option<&Trace<'_>>,
    ) -> Result<Reply, ApiError> {
        let mut token = PayloadBuf::default();
        if to == OrderStatus::Paid {
            self.check_payer(req)?;
        } else if let Some(buyer) = self.order_caller(req, &mut token)? {
            let order = self.node.authority.order(order_id).await?;
            owned_by(&order, Some(buyer))?;
        }
        let order = self.move_order(order_id, to, trace).await?;
        write_json(body, &OrderView::from(&order));
        Ok(Reply::json())
    }

    /// Who asks about an order: `None` may see every order (the admin, or
    /// anyone in trusted mode), `Some(buyer)` only the buyer's own. A
    /// missing or invalid buyer token is 401.
    fn order_caller<'t>(
        &self,
        req: &Request<'_>,
        token: &'t mut PayloadBuf,
    ) -> Result<Option<&'t str>, ApiError> {
        let keys = &self.node.config.buyer_keys;
        if !keys.is_on() || self.node.is_admin(req.authorization) {
            return Ok(None);
        }
        Ok(Some(keys.verify(req.authorization, now_s(), token)?.sub))
    }

    /// The payment callback's caller: the admin, or whoever holds the
    /// payment token; open only in trusted mode without a payment token.
    fn check_payer(&self, req: &Request<'_>) -> Result<(), ApiError> {
        let config = &self.node.config;
        let paid_by_token = config
            .payment_token
            .as_deref()
            .is_some_and(|t| auth::bearer_is(req.authorization, t));
        let open = config.payment_token.is_none() && !config.buyer_keys.is_on();
        if open || paid_by_token || self.node.is_admin(req.authorization) {
            return Ok(());
        }
        Err(ApiError::Unauthenticated(
            "paying needs the payment service's token",
        ))
    }

    /// Moves an order to `to` (paid, cancelled or expired): the authority
    /// checks the move, the log records it, then the authority applies it
    /// (cancel and expiry return the units exactly once). `trace`: the
    /// request that asked for the move (none for the expiry sweep).
    pub async fn move_order(
        &self,
        order_id: &str,
        to: OrderStatus,
        trace: Option<&Trace<'_>>,
    ) -> Result<Order, ApiError> {
        let authority = &self.node.authority;
        let (order, pending) = match authority.begin_transition(order_id, to, now_s()).await? {
            Transition::Unchanged(order) => return Ok(order),
            Transition::Pending { order, pending } => (order, pending),
        };
        let Some(event) = transition_event(&order, to) else {
            authority.abort_transition(pending);
            return Err(StockError::InvalidState("an order cannot go back to reserved").into());
        };
        let (request_id, traceparent) = ids(trace);
        let event = event.traced(request_id, traceparent);
        let logged = if self.node.fails_once(Failpoint::TransitionLog) {
            Err(queue::LogError::Unavailable(
                "failpoint transition_log".into(),
            ))
        } else {
            self.node.log.append(&event).await
        };
        if let Err(e) = logged {
            authority.abort_transition(pending);
            return Err(e.into());
        }
        Ok(authority.finish_transition(pending))
    }

    async fn create_sale(
        &self,
        sale_id: &str,
        input: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<Reply, ApiError> {
        let _turn = self.node.admin_change().await;
        let authority = &self.node.authority;
        let existing = authority.sale(sale_id);
        // A retried PUT without `starts_at` means the same sale, not one that
        // starts at the time of the retry.
        let default_start = existing.as_ref().map_or_else(now_s, |s| s.spec().starts_at);
        let spec = SaleInput::parse(sale_id, input, default_start)?;
        if spec.ticket_required && !self.node.config.buyer_keys.is_on() {
            return Err(ApiError::BadRequestStatic(
                "ticket_required needs buyer_keys: without them there are no tickets",
            ));
        }
        if let Some(existing) = existing {
            if existing.spec() != &spec {
                return Err(StockError::InvalidState(
                    "a sale with this id exists with another definition",
                )
                .into());
            }
        } else {
            let event = Event::new(now_ms(), EventKind::sale_created(&spec));
            self.node.log.append(&event).await?;
        }
        let sale = authority.create_sale(spec).await?;
        write_json(body, &SaleView::new(&sale, now_s()));
        Ok(Reply::json())
    }

    async fn switch_sale(
        &self,
        sale_id: &str,
        switch: Switch,
        body: &mut Vec<u8>,
    ) -> Result<Reply, ApiError> {
        let _turn = self.node.admin_change().await;
        let authority = &self.node.authority;
        let sale = authority.sale(sale_id).ok_or(StockError::SaleNotFound)?;
        if switch != Switch::Close && sale.state(now_s()) == stock::SaleState::Closed {
            return Err(StockError::InvalidState("the sale is closed").into());
        }
        let event = Event::new(
            now_ms(),
            EventKind::SaleSwitched {
                sale_id: sale_id.to_owned(),
                switch,
            },
        );
        self.node.log.append(&event).await?;
        let sale = authority.switch(sale_id, switch).await?;
        write_json(body, &SaleView::new(&sale, now_s()));
        Ok(Reply::json())
    }

    fn render_sale_gauges(&self, body: &mut Vec<u8>) {
        use std::io::Write;
        let sales = self.node.authority.sales();
        let _ = writeln!(
            body,
            "# HELP seckill_sale_units Units of each sale by kind."
        );
        let _ = writeln!(body, "# TYPE seckill_sale_units gauge");
        for sale in &sales {
            let id = sale.id();
            let _ = writeln!(
                body,
                "seckill_sale_units{{sale_id=\"{id}\",kind=\"stock\"}} {}",
                sale.spec().stock
            );
            let _ = writeln!(
                body,
                "seckill_sale_units{{sale_id=\"{id}\",kind=\"sold\"}} {}",
                sale.sold()
            );
            let _ = writeln!(
                body,
                "seckill_sale_units{{sale_id=\"{id}\",kind=\"available\"}} {}",
                sale.stock.available()
            );
        }
        let _ = writeln!(
            body,
            "# HELP seckill_admission_available Free admission tokens on the core that answered."
        );
        let _ = writeln!(body, "# TYPE seckill_admission_available gauge");
        let _ = writeln!(
            body,
            "seckill_admission_available {}",
            self.admission.available()
        );
        let _ = writeln!(
            body,
            "# HELP seckill_driver_info The monoio driver the cores run."
        );
        let _ = writeln!(body, "# TYPE seckill_driver_info gauge");
        let _ = writeln!(
            body,
            "seckill_driver_info{{driver=\"{}\"}} 1",
            self.node.driver()
        );
    }
}

fn reserved_event(order: &Order, attempt: &Attempt<'_>, sale_id: &str) -> Event {
    let kind = EventKind::order(
        OrderChange::Reserved,
        order,
        attempt.idempotency_key.map(str::to_owned),
        attempt
            .idempotency_key
            .map(|_| format!("{:x}", attempt.fingerprint(sale_id))),
    );
    Event::new(now_ms(), kind)
}

/// The event of `order` moving to `to`; none for `Reserved`.
fn transition_event(order: &Order, to: OrderStatus) -> Option<Event> {
    let kind = match to {
        OrderStatus::Reserved => return None,
        moved => EventKind::order(moved.into(), order, None, None),
    };
    Some(Event::new(now_ms(), kind))
}

/// The request id and `traceparent` an event of `trace`'s request carries.
fn ids<'t>(trace: Option<&'t Trace<'_>>) -> (Option<&'t str>, Option<&'t str>) {
    (
        trace.map(Trace::request_id),
        trace.and_then(|t| t.traceparent),
    )
}

/// Another buyer's order is answered exactly like a missing one.
fn owned_by(order: &Order, caller: Option<&str>) -> Result<(), ApiError> {
    match caller {
        Some(buyer) if buyer != order.user_id => Err(StockError::OrderNotFound.into()),
        _ => Ok(()),
    }
}

fn write_json<T: Serialize>(body: &mut Vec<u8>, value: &T) {
    body.clear();
    // Plain strings and numbers always serialise.
    let _ = serde_json::to_writer(&mut *body, value);
}

/// Decodes a body that must be one JSON object (serde would also fill a
/// struct from an array).
fn json_object<'a, T: Deserialize<'a>>(input: &'a [u8]) -> Result<T, ApiError> {
    if input.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequestStatic("the body must be a JSON object"));
    }
    serde_json::from_slice(input)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// With buyer `keys` set, the buyer token, verified (401), decoded into
/// `token`; a ticket for another sale than `sale_id` is 401 too. Header
/// only: checked before anything else of the request.
fn verify_buyer<'t>(
    req: &Request<'_>,
    sale_id: &str,
    keys: &auth::BuyerKeys,
    token: &'t mut PayloadBuf,
) -> Result<Option<auth::Claims<'t>>, ApiError> {
    if !keys.is_on() {
        return Ok(None);
    }
    let buyer = keys.verify(req.authorization, now_s(), token)?;
    if buyer.sale.is_some_and(|s| s != sale_id) {
        return Err(ApiError::Unauthenticated(
            "the buyer token is a ticket for another sale",
        ));
    }
    Ok(Some(buyer))
}

/// The `Idempotency-Key` header, checked: 1 to 64 visible ASCII characters.
fn idempotency_key<'a>(req: &Request<'a>) -> Result<Option<&'a str>, ApiError> {
    match req.idempotency_key {
        None => Ok(None),
        Some(k) if (1..=MAX_ID_LEN).contains(&k.len()) && k.iter().all(u8::is_ascii_graphic) => {
            // Visible ASCII is valid UTF-8.
            std::str::from_utf8(k)
                .map(Some)
                .map_err(|_| ApiError::BadRequestStatic("invalid Idempotency-Key"))
        }
        Some(_) => Err(ApiError::BadRequestStatic(
            "Idempotency-Key must be 1 to 64 visible ASCII characters",
        )),
    }
}

/// A purchase body, validated.
struct PurchaseInput<'a> {
    /// The buyer: the token's `sub` when buyer keys are set, else the body's.
    user_id: Cow<'a, str>,
    quantity: u32,
}

#[derive(Deserialize)]
struct PurchaseBody<'a> {
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    quantity: Option<i64>,
}

impl<'a> PurchaseInput<'a> {
    /// `buyer`: the verified token, when buyer keys are set; a body
    /// `user_id` that differs from its `sub` is 400.
    fn parse(input: &'a [u8], buyer: Option<auth::Claims<'a>>) -> Result<Self, ApiError> {
        let body: PurchaseBody<'a> = json_object(input)?;
        let user_id = match (buyer, body.user_id) {
            (Some(b), Some(u)) if u != b.sub => {
                return Err(ApiError::BadRequestStatic(
                    "user_id differs from the buyer token's sub",
                ))
            }
            (Some(b), _) => Cow::Borrowed(b.sub),
            (None, u) => u.ok_or(ApiError::BadRequestStatic("missing field user_id"))?,
        };
        if user_id.is_empty() || user_id.len() > MAX_ID_LEN || user_id.chars().any(char::is_control)
        {
            return Err(ApiError::BadRequestStatic(
                "user_id must be 1 to 64 bytes without control characters",
            ));
        }
        let quantity = match body.quantity {
            None => 1,
            Some(q) if (1..=i64::from(u32::MAX)).contains(&q) => q as u32,
            Some(_) => {
                return Err(ApiError::BadRequestStatic(
                    "quantity must be a positive integer",
                ))
            }
        };
        Ok(PurchaseInput { user_id, quantity })
    }
}

#[derive(Deserialize)]
struct SaleBody {
    stock: Option<serde_json::Value>,
    per_user_limit: Option<serde_json::Value>,
    starts_at: Option<serde_json::Value>,
    ends_at: Option<serde_json::Value>,
    payment_timeout_s: Option<serde_json::Value>,
    ticket_required: Option<serde_json::Value>,
}

struct SaleInput;

/// The largest whole number a double holds exactly: in cluster mode every
/// number of a sale is read by Redis's Lua, whose numbers are doubles.
const MAX_EXACT: u64 = 1 << 53;
/// `expires_at` (now + `payment_timeout_s`, plus a grace in Redis) must be
/// exact too: half the exact range leaves the clock all the room it needs.
const MAX_PAYMENT_TIMEOUT_S: u64 = MAX_EXACT / 2;

impl SaleInput {
    /// `default_start` stands in for a missing `starts_at`.
    fn parse(sale_id: &str, input: &[u8], default_start: u64) -> Result<SaleSpec, ApiError> {
        if sale_id.is_empty()
            || sale_id.len() > MAX_ID_LEN
            || !sale_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(ApiError::BadRequestStatic(
                "sale id must be 1 to 64 characters of A-Z a-z 0-9 - _ . :",
            ));
        }
        let body: SaleBody = json_object(input)?;
        let stock = positive(body.stock, "stock", MAX_EXACT)?
            .ok_or(ApiError::BadRequestStatic("missing field stock"))?;
        let per_user_limit = positive(body.per_user_limit, "per_user_limit", MAX_EXACT)?
            .ok_or(ApiError::BadRequestStatic("missing field per_user_limit"))?;
        let per_user_limit = u32::try_from(per_user_limit)
            .map_err(|_| ApiError::BadRequestStatic("per_user_limit is too large"))?;
        let starts_at = time_field(body.starts_at, "starts_at")?.unwrap_or(default_start);
        let ends_at = time_field(body.ends_at, "ends_at")?;
        if ends_at.is_some_and(|end| end <= starts_at) {
            return Err(ApiError::BadRequestStatic(
                "ends_at must be after starts_at",
            ));
        }
        let payment_timeout_s = positive(
            body.payment_timeout_s,
            "payment_timeout_s",
            MAX_PAYMENT_TIMEOUT_S,
        )?
        .unwrap_or(DEFAULT_PAYMENT_TIMEOUT_S);
        let ticket_required = match body.ticket_required {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(_) => {
                return Err(ApiError::BadRequestStatic(
                    "ticket_required must be true or false",
                ))
            }
        };
        Ok(SaleSpec {
            sale_id: sale_id.to_owned(),
            stock,
            per_user_limit,
            starts_at,
            ends_at,
            payment_timeout_s,
            ticket_required,
        })
    }
}

/// A whole number from 1 to `max`, or absent (`null` counts as absent).
fn positive(
    v: Option<serde_json::Value>,
    name: &'static str,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::BadRequest(format!("{name} must be a whole number from 1 to {max}"));
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

/// Unix seconds (milliseconds are recognised by size) or an RFC 3339 time.
fn time_field(v: Option<serde_json::Value>, name: &'static str) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::BadRequest(format!("{name} must be Unix seconds or an RFC 3339 time"));
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            let secs = n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64));
            let secs = secs.ok_or_else(bad)?;
            let secs = if secs >= 100_000_000_000 {
                secs / 1000
            } else {
                secs
            };
            if secs > MAX_EXACT {
                return Err(ApiError::BadRequest(format!(
                    "{name} must be at most {MAX_EXACT} (Unix seconds)"
                )));
            }
            Ok(Some(secs))
        }
        Some(serde_json::Value::String(s)) => timefmt::parse_rfc3339(&s).map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

#[derive(Serialize)]
struct OrderView<'a> {
    order_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    quantity: u32,
    status: &'static str,
    expires_at: u64,
}

impl<'a> From<&'a Order> for OrderView<'a> {
    fn from(o: &'a Order) -> Self {
        OrderView {
            order_id: &o.order_id,
            sale_id: &o.sale_id,
            user_id: &o.user_id,
            quantity: o.quantity,
            status: o.status.as_str(),
            expires_at: o.expires_at,
        }
    }
}

#[derive(Serialize)]
struct SaleView<'a> {
    sale_id: &'a str,
    state: &'static str,
    stock: u64,
    sold: u64,
    remaining: u64,
    per_user_limit: u32,
    starts_at: u64,
    ends_at: Option<u64>,
    payment_timeout_s: u64,
    ticket_required: bool,
}

impl<'a> SaleView<'a> {
    fn new(sale: &'a Sale, now: u64) -> Self {
        let spec = sale.spec();
        SaleView {
            sale_id: sale.id(),
            state: sale.state(now).as_str(),
            stock: spec.stock,
            sold: sale.sold(),
            remaining: sale.remaining(),
            per_user_limit: spec.per_user_limit,
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            payment_timeout_s: spec.payment_timeout_s,
            ticket_required: spec.ticket_required,
        }
    }
}
