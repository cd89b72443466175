//! Loading the whole cache from PostgreSQL: one connection, one read-only repeatable-read
//! transaction (a consistent picture of the four tables), each table streamed with
//! `COPY … TO STDOUT (FORMAT binary)` and decoded row by row straight into the snapshot
//! builder: no per-row round trips, no intermediate row objects.

use super::cache::{BuildError, Snapshot, SnapshotBuilder};
use crate::support::pg;
use futures_util::{StreamExt, pin_mut};
use std::error::Error as StdError;
use std::time::Duration;
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{IsolationLevel, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Connect(#[from] pg::ConnectError),
    #[error("PostgreSQL: {}", pg::message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("building the snapshot: {0}")]
    Build(#[from] BuildError),
    #[error("the snapshot build task failed: {0}")]
    Task(String),
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `timestamp`/`timestamptz` decoded from its binary form to Unix microseconds without
/// going through `SystemTime` (infinities saturate).
struct UnixMicros(i64);

impl<'a> FromSql<'a> for UnixMicros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let b: [u8; 8] = raw.try_into()?;
        let v = i64::from_be_bytes(b);
        // i64::MIN is the cache's NULL marker: -infinity becomes the next value.
        Ok(Self(v.saturating_add(PG_EPOCH_MICROS).max(i64::MIN + 1)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }
}

/// Connects to `url` and loads a snapshot.
pub async fn load(
    url: &str,
    connect_timeout: Duration,
    tls: &crate::support::tls::Tls,
) -> Result<Snapshot, LoadError> {
    let mut client = pg::connect(url, connect_timeout, "policy load", tls).await?;
    let result = async {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let builder = load_tables(&tx).await?;
        tx.commit().await?;
        Ok::<_, LoadError>(builder)
    }
    .await;
    drop(client);
    let builder = result?;
    tokio::task::spawn_blocking(move || builder.build())
        .await
        .map_err(|e| LoadError::Task(e.to_string()))?
        .map_err(LoadError::from)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    sql: &str,
    types: &[Type],
    mut each: impl FnMut(&BinaryCopyOutRow) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let stream = tx.copy_out(sql).await?;
    let rows = BinaryCopyOutStream::new(stream, types);
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        each(&row?)?;
    }
    Ok(())
}

async fn load_tables(tx: &Transaction<'_>) -> Result<SnapshotBuilder, LoadError> {
    let mut b = SnapshotBuilder::new();
    // Row estimates from the planner statistics, to size the columns once.
    let est = tx
        .query(
            "SELECT relname::text, GREATEST(reltuples, 0)::bigint FROM pg_class
             WHERE relname IN ('user', 'user_policy') AND relkind = 'r'
               AND relnamespace = 'public'::regnamespace",
            &[],
        )
        .await?;
    let estimate = |name: &str| {
        est.iter()
            .find(|r| r.try_get::<_, &str>(0).is_ok_and(|n| n == name))
            .and_then(|r| r.try_get::<_, i64>(1).ok())
            .map_or(0, |n| n.clamp(0, 100_000_000) as usize)
    };
    b.reserve(estimate("user"), estimate("user_policy"));

    copy_rows(
        tx,
        "COPY (SELECT id, name FROM policy_category) TO STDOUT (FORMAT binary)",
        &[Type::INT8, Type::TEXT],
        |r| {
            b.category(r.try_get(0)?, r.try_get(1)?);
            Ok(())
        },
    )
    .await?;
    copy_rows(
        tx,
        "COPY (SELECT id, name, policy_product_code, description, tnc, coverage_years,
                      policy_category_id FROM policy) TO STDOUT (FORMAT binary)",
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
        ],
        |r| {
            b.policy(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
            );
            Ok(())
        },
    )
    .await?;
    copy_rows(
        tx,
        "COPY (SELECT id, first_name, last_name, profession, email, mobile FROM \"user\")
         TO STDOUT (FORMAT binary)",
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
        |r| {
            b.user(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
            )?;
            Ok(())
        },
    )
    .await?;
    copy_rows(
        tx,
        "COPY (SELECT id, user_id, policy_id, policy_number, start_date_time, expiry_date_time
               FROM user_policy) TO STDOUT (FORMAT binary)",
        &[
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
        ],
        |r| {
            let start: Option<UnixMicros> = r.try_get(4)?;
            let expiry: Option<UnixMicros> = r.try_get(5)?;
            b.user_policy(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                start.map(|t| t.0),
                expiry.map(|t| t.0),
            )?;
            Ok(())
        },
    )
    .await?;
    Ok(b)
}
