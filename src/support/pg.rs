//! PostgreSQL connections, made one way everywhere: within a time limit, encrypted as the URL's
//! `sslmode` says ([`super::tls`]), the connection driven on a task of its own (logging, under
//! the caller's name, how it ended), and errors shown with the server's own message.

use super::tls::Tls;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client};

/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to PostgreSQL timed out after {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL: {}", message(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// An error with the server's message when there is one (`Display` of
/// `tokio_postgres::Error` says only "db error").
pub fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            // "error performing TLS handshake" and the like say why only in their source.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Connects to `url` within `timeout`; `what` names the connection in the log when it ends.
pub async fn connect(
    url: &str,
    timeout: Duration,
    what: &'static str,
    tls: &Tls,
) -> Result<Client, ConnectError> {
    let (url, tls) = tls.postgres(url);
    let (client, conn) = tokio::time::timeout(timeout, tokio_postgres::connect(&url, tls))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres {what} connection closed");
        }
    });
    Ok(client)
}

/// Like [`connect`], for a connection that `LISTEN`s: the payloads of its notifications
/// arrive on the returned channel, which closes when the connection does.
pub async fn connect_listening(
    url: &str,
    timeout: Duration,
    tls: &Tls,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), ConnectError> {
    use futures_util::StreamExt;
    let (url, tls) = tls.postgres(url);
    let (client, mut conn) = tokio::time::timeout(timeout, tokio_postgres::connect(&url, tls))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres listening connection ended");
                    break;
                }
            }
        }
    });
    Ok((client, rx))
}

/// Runs idempotent `CREATE … IF NOT EXISTS` statements. Two instances doing so at once can
/// collide in the catalog (a duplicate table, type or unique key): the other one created it,
/// which is what was wanted.
pub async fn ensure_schema(client: &Client, ddl: &str) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    match client.batch_execute(ddl).await {
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_TABLE)
                || e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        other => other,
    }
}
