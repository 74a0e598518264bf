//! The one connection behind a [`super::RedisStore`], whatever Redis is:
//! one server (a self-reconnecting `ConnectionManager`) or a Redis Cluster
//! (the crate's cluster-async client, which follows MOVED/ASK and a
//! master failover by itself). [`Conn`] is a `ConnectionLike`, so the
//! store's commands, scripts and single-slot pipelines run unchanged on
//! either; only a pipeline that may span slots asks [`Conn::is_cluster`]
//! (a cluster pipeline must stay in one slot: the store sends such calls
//! concurrently instead).
//!
//! `--redis` accepts:
//! - `redis://host:port[/db]`: one server, or, when that server is
//!   cluster-enabled (`INFO cluster`), a seed of its cluster;
//! - `redis://h1:p1,redis://h2:p2,...`: the seed list of a Redis Cluster.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::authority::StockError;

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone:
/// clones share the underlying multiplexed connections.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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
        let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
        if seeds.len() > 1 {
            return Conn::cluster(&seeds, timeout).await.map_err(down);
        }
        let client = ::redis::Client::open(url).map_err(bad)?;
        if is_cluster_enabled(&client, timeout).await.map_err(down)? {
            return Conn::cluster(&seeds, timeout).await.map_err(down);
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            // A reconnect is one quick retry, not a long backoff: callers
            // must fail fast (503) while Redis is down; the next call
            // starts the next attempt.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
            .await
        {
            Ok(Ok(conn)) => Ok(Conn::Single(conn)),
            Ok(Err(e)) => Err(down(e.to_string())),
            Err(_) => Err(down(format!("no connection within {timeout:?}"))),
        }
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

/// `INFO cluster` says `cluster_enabled:1`.
async fn is_cluster_enabled(client: &::redis::Client, timeout: Duration) -> Result<bool, String> {
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = ::redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        Ok::<_, ::redis::RedisError>(info.contains("cluster_enabled:1"))
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
