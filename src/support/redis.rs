//! Redis connections, made one way everywhere: a single server or a Redis Cluster given its
//! seed nodes, with the store's time limits on connecting and on every reply, over TLS for
//! `rediss://` URLs (trusting `tls.ca_file` when set).

use super::lazy::Connection;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// A connection to a single Redis or a Redis Cluster. A single server's connection does not
/// reconnect by itself: a failure drops it, and whoever holds it connects anew (and checks
/// the server again, see [`super::lazy`]).
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs `cmd` (a command without keys, such as `WAIT`) on the node that holds `key`.
    pub async fn on_node_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                T::from_redis_value(v).map_err(Into::into)
            }
        }
    }
}

impl Connection for Conn {}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connects to one Redis or to a cluster given its seed nodes.
pub async fn connect(
    urls: &[String],
    cluster: bool,
    timeout: Duration,
    tls: &super::tls::Tls,
) -> redis::RedisResult<Conn> {
    Ok(if cluster {
        let mut builder = ClusterClient::builder(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1);
        if let Some(certs) = tls.redis_certificates() {
            builder = builder.certs(certs);
        }
        Conn::Cluster(builder.build()?.get_async_connection().await?)
    } else {
        let url = urls.first().map_or("", String::as_str);
        let client = tls.redis_client(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Conn::Single(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        )
    })
}

/// Whether an error may have left the connection unusable (then it is dropped and the next
/// use connects anew).
pub fn breaks_connection(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}
