//! The one connection behind a [`super::RedisStore`], whatever Redis is:
//! one server (a self-reconnecting `ConnectionManager`), a Redis Cluster
//! (the crate's cluster-async client, which follows MOVED/ASK and a
//! master failover by itself), or the primary that Sentinel names (a
//! `ConnectionManager` to it, replaced when a call fails and the sentinels
//! name another primary). [`Conn`] is a `ConnectionLike`, so the
//! store's commands, scripts and single-slot pipelines run unchanged on
//! either; only a pipeline that may span slots asks [`Conn::is_cluster`]
//! (a cluster pipeline must stay in one slot: the store sends such calls
//! concurrently instead).
//!
//! `--redis` accepts:
//! - `redis://host:port[/db]`: one server, or, when that server is
//!   cluster-enabled (`INFO cluster`), a seed of its cluster;
//! - `redis://h1:p1,redis://h2:p2,...`: the seed list of a Redis Cluster;
//! - `redis+sentinel://h1:p1,h2:p2,.../NAME`: the sentinels watching the
//!   primary named NAME.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelServerType};
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use parking_lot::Mutex;

use crate::authority::StockError;

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone:
/// clones share the underlying multiplexed connections.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Followed>),
}

/// The primary that the sentinels name, followed over failovers.
pub(super) struct Followed {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The primary's address and a connection to it. The lock is held to
    /// copy or swap them, never across a call.
    primary: Mutex<(String, ConnectionManager)>,
    timeout: Duration,
}

impl Conn {
    /// Connects to what `url` names (see the module doc). `timeout` bounds
    /// the connect and each later call's attempts.
    ///
    /// Errors: `Unavailable` on a bad URL or when nothing answers in time.
    pub(super) async fn open(url: &str, timeout: Duration) -> Result<Conn, StockError> {
        let bad =
            |e: ::redis::RedisError| StockError::Unavailable(format!("bad Redis URL {url:?}: {e}"));
        let down = |e: String| StockError::Unavailable(format!("connect {url}: {e}"));
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return Followed::open(rest, timeout).await.map_err(down);
        }
        let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
        if seeds.len() > 1 {
            return Conn::cluster(&seeds, timeout).await.map_err(down);
        }
        let client = ::redis::Client::open(url).map_err(bad)?;
        if is_cluster_enabled(&client, timeout).await.map_err(down)? {
            return Conn::cluster(&seeds, timeout).await.map_err(down);
        }
        single(client, timeout)
            .await
            .map(Conn::Single)
            .map_err(down)
    }

    /// Whether this is a Redis Cluster: a pipeline must then keep to one
    /// slot.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    async fn cluster(seeds: &[&str], timeout: Duration) -> Result<Conn, String> {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let client = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // MOVED/ASK and a failover are retried by the client; a few
            // quick retries, all within the caller's timeout, so a call
            // still fails fast (503) while a slot has no master.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(millis.clamp(10, 200))
            .build()
            .map_err(|e| format!("bad seed list: {e}"))?;
        match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(Ok(conn)) => Ok(Conn::Cluster(conn)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no cluster connection within {timeout:?}")),
        }
    }
}

impl Followed {
    /// `rest` is `h1:p1,h2:p2,.../NAME`.
    async fn open(rest: &str, timeout: Duration) -> Result<Conn, String> {
        let (hosts, name) = rest
            .rsplit_once('/')
            .filter(|(h, n)| !h.is_empty() && !n.is_empty())
            .ok_or("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME")?;
        let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
        let mut client =
            SentinelClient::build(sentinels, name.to_owned(), None, SentinelServerType::Master)
                .map_err(|e| format!("bad sentinel list: {e}"))?;
        let (addr, primary) = primary_of(&mut client, timeout).await?;
        Ok(Conn::Sentinel(Arc::new(Followed {
            sentinels: tokio::sync::Mutex::new(client),
            primary: Mutex::new((addr, primary)),
            timeout,
        })))
    }

    /// After a failed call: asks the sentinels for the primary and, when
    /// they name another one, connects to it for the next calls. One
    /// follow at a time; the others skip.
    async fn follow(self: Arc<Self>) {
        let Ok(mut sentinels) = self.sentinels.try_lock() else {
            return;
        };
        match primary_of(&mut sentinels, self.timeout).await {
            Ok((addr, conn)) => {
                let mut primary = self.primary.lock();
                if primary.0 != addr {
                    tracing::warn!(from = %primary.0, to = %addr, "Redis primary changed (Sentinel failover)");
                    *primary = (addr, conn);
                }
            }
            Err(e) => tracing::debug!(error = %e, "no primary from the sentinels"),
        }
    }

    fn current(&self) -> ConnectionManager {
        self.primary.lock().1.clone()
    }
}

/// The primary the sentinels name now (the crate checks that it answers as
/// one), and a connection to it.
async fn primary_of(
    sentinels: &mut SentinelClient,
    timeout: Duration,
) -> Result<(String, ConnectionManager), String> {
    let client = match tokio::time::timeout(timeout, sentinels.async_get_client()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(format!("no primary from the sentinels: {e}")),
        Err(_) => return Err(format!("no primary from the sentinels within {timeout:?}")),
    };
    let addr = client.get_connection_info().addr().to_string();
    let conn = single(client, timeout).await?;
    Ok((addr, conn))
}

/// A failed call after which the sentinels are asked again: the primary
/// is unreachable, or it answers as a replica now.
fn lost_primary(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A self-reconnecting connection to one server.
async fn single(client: ::redis::Client, timeout: Duration) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        // A reconnect is one quick retry, not a long backoff: callers
        // must fail fast (503) while Redis is down; the next call
        // starts the next attempt.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(timeout);
    match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// `INFO cluster` says `cluster_enabled:1`. A server that refuses INFO
/// (renamed or disabled, as managed services do) is taken as one server.
async fn is_cluster_enabled(client: &::redis::Client, timeout: Duration) -> Result<bool, String> {
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: Result<String, _> = ::redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await;
        match info {
            Ok(info) => Ok(info.contains("cluster_enabled:1")),
            Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(false),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(f) => {
                let followed = f.clone();
                Box::pin(async move {
                    let result = followed.current().req_packed_command(cmd).await;
                    after(followed, result)
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(f) => {
                let followed = f.clone();
                Box::pin(async move {
                    let result = followed
                        .current()
                        .req_packed_commands(pipeline, offset, count)
                        .await;
                    after(followed, result)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(f) => f.current().get_db(),
        }
    }
}

/// A call's result, after starting a follow (its own task, so that the
/// caller's timeout does not cut it short) when it lost the primary.
fn after<T>(followed: Arc<Followed>, result: Result<T, RedisError>) -> Result<T, RedisError> {
    if let Err(e) = &result {
        if lost_primary(e) {
            tokio::spawn(followed.follow());
        }
    }
    result
}
