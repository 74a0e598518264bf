//! Order-log events: the one schema shared by the embedded journal and, in
//! cluster mode, the Kafka topic the shop's order system consumes.
//!
//! Schema version 1. Every event is one JSON object:
//!
//! ```json
//! {"v":1,"type":"order_reserved","at":1763784000123,"order_id":"1-1763784000123456",
//!  "sale_id":"s1","user_id":"u7","quantity":1,"expires_at":1763784900,
//!  "idempotency_key":"k-1","fingerprint":"9f..."}
//! ```
//!
//! - `v`: schema version; a reader that meets a larger `v` than it knows
//!   must stop there (alert, do not advance) rather than skip or misread
//!   it: the journal refuses to open, the settler exits, the audit fails.
//! - `type`: one of the [`EventKind`] variants in snake case.
//! - `at`: when the event was made, Unix milliseconds.
//! - `request_id`, `traceparent` (optional): the id of the HTTP request
//!   that made the change (the client's `X-Request-Id`, or one the node
//!   generated) and the client's W3C `traceparent`, when it sent a valid
//!   one. Absent in events made by no request (expiry, the settler's
//!   compensation without a known request) and in older logs; readers that
//!   do not know them ignore them, so the version stays 1.
//!
//! Times inside events (`starts_at`, `ends_at`, `expires_at`) are Unix
//! seconds, as in the HTTP API.

use serde::{Deserialize, Serialize};
use stock::{Order, SaleSpec};
/// The sale switch and the order change, spelled once (in `stock`'s model):
/// [`Switch::recorded`] is the `switch` of `sale_switched`, and
/// [`EventKind::order`] makes the event of each [`OrderChange`].
pub use stock::{OrderChange, Switch};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One record of the order log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version ([`SCHEMA_VERSION`] when written by this build).
    pub v: u32,
    /// Unix milliseconds when the event was made.
    pub at: u64,
    /// The request that made the change, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The client's W3C `traceparent` of that request, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// An event of the current schema version made at `at_ms`.
    pub fn new(at_ms: u64, kind: EventKind) -> Self {
        Event {
            v: SCHEMA_VERSION,
            at: at_ms,
            request_id: None,
            traceparent: None,
            kind,
        }
    }

    /// The event, made by the request `request_id` (with the client's
    /// `traceparent`, if any).
    pub fn traced(mut self, request_id: Option<&str>, traceparent: Option<&str>) -> Self {
        self.request_id = request_id.map(str::to_owned);
        self.traceparent = traceparent.map(str::to_owned);
        self
    }

    /// The JSON encoding written to the log.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).expect("event serialises")
    }

    /// Decodes one JSON record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What an [`Event`] records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A sale was created and its stock pre-loaded.
    SaleCreated {
        sale_id: String,
        stock: u64,
        per_user_limit: u32,
        starts_at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at: Option<u64>,
        payment_timeout_s: u64,
        /// Buyers need a ticket for this sale. Absent in older journals:
        /// false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ticket_required: bool,
    },
    /// An operator paused, resumed or closed a sale.
    SaleSwitched { sale_id: String, switch: Switch },
    /// A buyer won `quantity` units; the order waits for payment until
    /// `expires_at`.
    OrderReserved {
        order_id: String,
        sale_id: String,
        user_id: String,
        quantity: u32,
        expires_at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Hash of (sale, user, quantity) the key was first used with, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    /// The order was paid; its units are sold for good.
    OrderPaid {
        order_id: String,
        sale_id: String,
        user_id: String,
        quantity: u32,
    },
    /// The buyer cancelled; the units return to stock.
    OrderCancelled {
        order_id: String,
        sale_id: String,
        user_id: String,
        quantity: u32,
    },
    /// The payment timeout passed; the units return to stock.
    OrderExpired {
        order_id: String,
        sale_id: String,
        user_id: String,
        quantity: u32,
    },
    /// Compensation (cluster mode): an order that was never acknowledged to
    /// its buyer (its `order_reserved` could not be logged, or its node died
    /// between reserving and logging) was released; its units are back in
    /// stock and the order reads `cancelled`. The order may never have
    /// appeared as `order_reserved`: a consumer that does not know it
    /// ignores the event.
    StockReleased {
        order_id: String,
        sale_id: String,
        user_id: String,
        quantity: u32,
    },
}

impl EventKind {
    /// The `sale_created` event of `spec`.
    pub fn sale_created(spec: &SaleSpec) -> EventKind {
        EventKind::SaleCreated {
            sale_id: spec.sale_id.clone(),
            stock: spec.stock,
            per_user_limit: spec.per_user_limit,
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            payment_timeout_s: spec.payment_timeout_s,
            ticket_required: spec.ticket_required,
        }
    }

    /// The sale a `sale_created` defines; `None` for any other event.
    pub fn sale_spec(&self) -> Option<SaleSpec> {
        let EventKind::SaleCreated {
            sale_id,
            stock,
            per_user_limit,
            starts_at,
            ends_at,
            payment_timeout_s,
            ticket_required,
        } = self
        else {
            return None;
        };
        Some(SaleSpec {
            sale_id: sale_id.clone(),
            stock: *stock,
            per_user_limit: *per_user_limit,
            starts_at: *starts_at,
            ends_at: *ends_at,
            payment_timeout_s: *payment_timeout_s,
            ticket_required: *ticket_required,
        })
    }

    /// The event of `change` of `order`: the one place an order's event is
    /// made. `idempotency_key` and `fingerprint` (hex) go into an
    /// `order_reserved` only.
    pub fn order(
        change: OrderChange,
        order: &Order,
        idempotency_key: Option<String>,
        fingerprint: Option<String>,
    ) -> EventKind {
        let (order_id, sale_id, user_id, quantity) = (
            order.order_id.clone(),
            order.sale_id.clone(),
            order.user_id.clone(),
            order.quantity,
        );
        match change {
            OrderChange::Reserved => EventKind::OrderReserved {
                order_id,
                sale_id,
                user_id,
                quantity,
                expires_at: order.expires_at,
                idempotency_key,
                fingerprint,
            },
            OrderChange::Paid => EventKind::OrderPaid {
                order_id,
                sale_id,
                user_id,
                quantity,
            },
            OrderChange::Cancelled => EventKind::OrderCancelled {
                order_id,
                sale_id,
                user_id,
                quantity,
            },
            OrderChange::Expired => EventKind::OrderExpired {
                order_id,
                sale_id,
                user_id,
                quantity,
            },
            OrderChange::Released => EventKind::StockReleased {
                order_id,
                sale_id,
                user_id,
                quantity,
            },
        }
    }

    /// The order change this event records, as `(sale_id, order_id,
    /// change)`; `None` for a sale's event.
    pub fn order_change(&self) -> Option<(&str, &str, OrderChange)> {
        let (sale_id, order_id, change) = match self {
            EventKind::OrderReserved {
                sale_id, order_id, ..
            } => (sale_id, order_id, OrderChange::Reserved),
            EventKind::OrderPaid {
                sale_id, order_id, ..
            } => (sale_id, order_id, OrderChange::Paid),
            EventKind::OrderCancelled {
                sale_id, order_id, ..
            } => (sale_id, order_id, OrderChange::Cancelled),
            EventKind::OrderExpired {
                sale_id, order_id, ..
            } => (sale_id, order_id, OrderChange::Expired),
            EventKind::StockReleased {
                sale_id, order_id, ..
            } => (sale_id, order_id, OrderChange::Released),
            EventKind::SaleCreated { .. } | EventKind::SaleSwitched { .. } => return None,
        };
        Some((sale_id, order_id, change))
    }

    /// The id events are keyed and partitioned by: the order id for order
    /// events (so one order's events stay in order), the sale id for sale
    /// events.
    pub fn key(&self) -> &str {
        match self {
            EventKind::SaleCreated { sale_id, .. } | EventKind::SaleSwitched { sale_id, .. } => {
                sale_id
            }
            EventKind::OrderReserved { order_id, .. }
            | EventKind::OrderPaid { order_id, .. }
            | EventKind::OrderCancelled { order_id, .. }
            | EventKind::OrderExpired { order_id, .. }
            | EventKind::StockReleased { order_id, .. } => order_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_event_has_the_documented_shape() {
        let e = Event::new(
            1_000,
            EventKind::OrderReserved {
                order_id: "1-2".into(),
                sale_id: "s".into(),
                user_id: "u".into(),
                quantity: 1,
                expires_at: 900,
                idempotency_key: None,
                fingerprint: None,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "order_reserved");
        assert_eq!(v["order_id"], "1-2");
        assert_eq!(v["quantity"], 1);
        assert_eq!(v["at"], 1_000);
        assert!(v.get("idempotency_key").is_none());
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn request_ids_are_optional_and_round_trip() {
        let kind = EventKind::OrderPaid {
            order_id: "1-2".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            quantity: 1,
        };
        let plain = Event::new(7, kind.clone());
        assert!(!String::from_utf8(plain.to_json())
            .unwrap()
            .contains("request_id"));
        let traced = Event::new(7, kind).traced(Some("r-1"), Some("00-ab-cd-01"));
        let v: serde_json::Value = serde_json::from_slice(&traced.to_json()).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["traceparent"], "00-ab-cd-01");
        assert_eq!(v["type"], "order_paid");
        assert_eq!(Event::from_json(&traced.to_json()).unwrap(), traced);
    }

    #[test]
    fn switch_round_trips() {
        let e = Event::new(
            5,
            EventKind::SaleSwitched {
                sale_id: "s".into(),
                switch: Switch::Close,
            },
        );
        let text = String::from_utf8(e.to_json()).unwrap();
        assert!(text.contains(r#""type":"sale_switched""#), "{text}");
        assert!(text.contains(r#""switch":"closed""#), "{text}");
        assert_eq!(Event::from_json(text.as_bytes()).unwrap(), e);
    }

    #[test]
    fn every_order_change_makes_its_event_and_reads_back() {
        let order = Order {
            order_id: "1-2".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            quantity: 2,
            status: stock::OrderStatus::Reserved,
            expires_at: 900,
            shard: 0,
        };
        for change in OrderChange::ALL {
            let kind = EventKind::order(change, &order, Some("k".into()), Some("f".into()));
            assert_eq!(kind.order_change(), Some(("s", "1-2", change)));
            let v: serde_json::Value =
                serde_json::from_slice(&Event::new(1, kind).to_json()).unwrap();
            let expected = match change {
                OrderChange::Released => "stock_released".to_owned(),
                other => format!("order_{}", other.as_str()),
            };
            assert_eq!(v["type"], expected.as_str());
            assert_eq!(v["quantity"], 2);
            // The key and fingerprint belong to a reservation only.
            assert_eq!(
                v.get("idempotency_key").is_some(),
                change == OrderChange::Reserved
            );
        }
    }

    #[test]
    fn a_sale_spec_round_trips_through_its_sale_created() {
        let spec = SaleSpec {
            sale_id: "s".into(),
            stock: 5,
            per_user_limit: 2,
            starts_at: 10,
            ends_at: Some(20),
            payment_timeout_s: 900,
            ticket_required: true,
        };
        let kind = EventKind::sale_created(&spec);
        assert_eq!(kind.sale_spec().as_ref(), Some(&spec));
        let json = Event::new(1, kind).to_json();
        assert_eq!(
            Event::from_json(&json).unwrap().kind.sale_spec(),
            Some(spec)
        );
    }

    #[test]
    fn sale_created_without_ticket_required_replays_as_false() {
        let old = br#"{"v":1,"type":"sale_created","at":1,"sale_id":"s","stock":5,"per_user_limit":1,"starts_at":0,"payment_timeout_s":900}"#;
        let e = Event::from_json(old).unwrap();
        assert!(matches!(
            e.kind,
            EventKind::SaleCreated {
                ticket_required: false,
                ..
            }
        ));
        // And false is not written, so older readers see the same event.
        assert!(!String::from_utf8(e.to_json())
            .unwrap()
            .contains("ticket_required"));
    }
}
