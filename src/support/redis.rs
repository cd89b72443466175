//! Redis connections, made one way everywhere: a single server (through redis-rs's
//! reconnecting connection manager) or a Redis Cluster given its seed nodes, with the store's
//! time limits on connecting and on every reply.

use super::lazy::Connection;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// A connection to a single Redis or a Redis Cluster.
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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

/// Connects to one Redis (reconnecting by itself) or to a cluster given its seed nodes.
pub async fn connect(
    urls: &[String],
    cluster: bool,
    timeout: Duration,
) -> redis::RedisResult<Conn> {
    Ok(if cluster {
        let client = ClusterClient::builder(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        Conn::Cluster(client.get_async_connection().await?)
    } else {
        let url = urls.first().map_or("", String::as_str);
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Conn::Single(client.get_connection_manager_with_config(config).await?)
    })
}

/// Whether an error may have left the connection unusable (then it is dropped and the next
/// use connects anew).
pub fn breaks_connection(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}
