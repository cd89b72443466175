//! Versioned SQL migrations, embedded in the binary and recorded in `trackd_migrations`;
//! applied in order, each in its own transaction, under an advisory lock so concurrent
//! `trackd db migrate` runs do not race.

use tokio_postgres::Client;

/// One migration: a version number, a name, and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "policy",
    sql: include_str!("../../migrations/0001_policy.sql"),
}];

const LOCK_KEY: i64 = 0x7472_6163_6b64_6d67; // "trackdmg"

/// Applies every migration not yet recorded; returns the ones applied now.
pub async fn migrate(
    client: &mut Client,
) -> Result<Vec<&'static Migration>, tokio_postgres::Error> {
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS trackd_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM trackd_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO trackd_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
            applied.push(m);
        }
        tx.commit().await?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(MIGRATIONS[0].sql.contains("pg_notify('trackd_policy'"));
    }
}
