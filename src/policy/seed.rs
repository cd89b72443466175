//! `trackd db seed`: the bundled sample data (`--sample`, idempotent) or N generated users with
//! five policies each (`--users N`: deterministic for a given starting id, streamed with
//! `COPY … FROM STDIN` in one transaction). Progress goes to an indicatif bar on a terminal and
//! to plain log lines otherwise.

use super::sample::{SampleData, parse_micros};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use std::fmt::Write as _;
use std::io::IsTerminal;
use tokio_postgres::{Client, Transaction};

/// Policies generated per user by `--users N`.
pub const POLICIES_PER_USER: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("PostgreSQL: {}", crate::support::pg::message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Sample(#[from] super::sample::SampleError),
    #[error("no policy products to attach user policies to")]
    NoPolicies,
}

/// Reports progress: an indicatif bar on a terminal, else a log line every 10 %.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: u64,
    next_log: u64,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg:12} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            total,
            done: 0,
            next_log: total / 10,
        }
    }

    fn phase(&self, name: &'static str) {
        match &self.bar {
            Some(b) => b.set_message(name),
            None => tracing::info!(phase = name, "seeding"),
        }
    }

    fn add(&mut self, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(b) => b.inc(rows),
            None if self.done >= self.next_log => {
                tracing::info!(
                    rows = self.done,
                    total = self.total,
                    percent = self.done * 100 / self.total.max(1),
                    "seeding"
                );
                self.next_log = self.done + self.total / 10;
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_with_message("done");
        }
    }
}

async fn upsert_categories_and_policies(
    tx: &Transaction<'_>,
    data: &SampleData,
) -> Result<(), SeedError> {
    for c in &data.categories {
        tx.execute(
            "INSERT INTO policy_category (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&c.id, &c.name],
        )
        .await?;
    }
    for p in &data.policies {
        tx.execute(
            "INSERT INTO policy (id, name, policy_product_code, description, tnc, coverage_years,
                                 policy_category_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &p.id,
                &p.name,
                &p.policy_product_code,
                &p.description,
                &p.tnc,
                &p.coverage_years,
                &p.policy_category_id,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Moves every identity sequence past the ids written explicitly.
async fn fix_sequences(tx: &Transaction<'_>) -> Result<(), SeedError> {
    for table in ["\"user\"", "policy_category", "policy", "user_policy"] {
        tx.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                           GREATEST((SELECT max(id) FROM {table}), 1))"
        ))
        .await?;
    }
    Ok(())
}

/// Loads the bundled sample data; rows that already exist (same id or unique key) are kept.
pub async fn seed_sample(client: &mut Client, data: &SampleData) -> Result<u64, SeedError> {
    let tx = client.transaction().await?;
    upsert_categories_and_policies(&tx, data).await?;
    for u in &data.users {
        tx.execute(
            "INSERT INTO \"user\" (id, first_name, last_name, profession, email, mobile, language)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &u.id,
                &u.first_name,
                &u.last_name,
                &u.profession,
                &u.email,
                &u.mobile,
                &u.language,
            ],
        )
        .await?;
    }
    for up in &data.user_policies {
        // Validate here so a bad timestamp is our error, not PostgreSQL's.
        parse_micros(&up.start_date_time)?;
        if let Some(e) = &up.expiry_date_time {
            parse_micros(e)?;
        }
        tx.execute(
            "INSERT INTO user_policy (id, policy_number, amount_insured, start_date_time,
                                      expiry_date_time, policy_id, user_id)
             VALUES ($1, $2, $3::text::numeric, $4::text::timestamptz, $5::text::timestamptz, $6, $7)
             ON CONFLICT DO NOTHING",
            &[
                &up.id,
                &up.policy_number,
                &up.amount_insured,
                &up.start_date_time,
                &up.expiry_date_time,
                &up.policy_id,
                &up.user_id,
            ],
        )
        .await?;
    }
    fix_sequences(&tx).await?;
    tx.commit().await?;
    Ok(
        (data.categories.len() + data.policies.len() + data.users.len() + data.user_policies.len())
            as u64,
    )
}

const FIRST_NAMES: &[&str] = &[
    "Aarav", "Priya", "Rahul", "Ananya", "Vikram", "Meera", "Arjun", "Kavya", "Rohan", "Isha",
    "Siti", "Ahmad", "Wei", "Mei", "Nguyen", "Linh", "José", "María", "Zoë", "Søren",
];
const LAST_NAMES: &[&str] = &[
    "Sharma", "Iyer", "Verma", "Patel", "Reddy", "Nair", "Gupta", "Singh", "Das", "Khan", "Tan",
    "Lim", "Wong", "Tran", "Peña", "García", "Müller", "Ünal", "Nielsen", "O'Brien",
];
const PROFESSIONS: &[&str] = &[
    "Software Engineer",
    "Doctor",
    "Teacher",
    "Nurse",
    "Accountant",
    "Architect",
    "Farmer",
    "Pilot",
    "Student",
    "Designer",
    "Lawyer",
    "Chef",
];

/// splitmix64: a fixed, fast mixer so the generated data depends only on ids.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `COPY` text format: backslash, tab, newline and carriage return escaped.
fn put_text(buf: &mut BytesMut, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => buf.put_slice(b"\\\\"),
            b'\t' => buf.put_slice(b"\\t"),
            b'\n' => buf.put_slice(b"\\n"),
            b'\r' => buf.put_slice(b"\\r"),
            _ => buf.put_u8(b),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS+00` for a number of seconds since the Unix epoch.
fn put_ts(buf: &mut BytesMut, secs: i64) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    buf.put_slice(s.as_bytes());
}

const CHUNK: usize = 1 << 20;

async fn copy_in<F>(
    tx: &Transaction<'_>,
    sql: &str,
    count: u64,
    progress: &mut Progress,
    mut row: F,
) -> Result<(), SeedError>
where
    F: FnMut(u64, &mut BytesMut),
{
    let sink = tx.copy_in::<_, Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK + 4096);
    let mut pending = 0;
    for i in 0..count {
        row(i, &mut buf);
        pending += 1;
        if buf.len() >= CHUNK {
            sink.send(buf.split().freeze()).await?;
            progress.add(pending);
            pending = 0;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.split().freeze()).await?;
    }
    progress.add(pending);
    sink.as_mut().finish().await?;
    Ok(())
}

/// Adds `users` generated users after the highest existing user id, each with
/// [`POLICIES_PER_USER`] policies; the sample categories and policies are added if missing.
/// Returns the first and last new user id.
pub async fn seed_users(
    client: &mut Client,
    data: &SampleData,
    users: u64,
) -> Result<(i64, i64), SeedError> {
    let tx = client.transaction().await?;
    upsert_categories_and_policies(&tx, data).await?;
    let policy_ids: Vec<i64> = tx
        .query("SELECT id FROM policy ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if policy_ids.is_empty() {
        return Err(SeedError::NoPolicies);
    }
    let base: i64 = tx
        .query_one("SELECT COALESCE(max(id), 0) FROM \"user\"", &[])
        .await?
        .get(0);
    let up_base: i64 = tx
        .query_one("SELECT COALESCE(max(id), 0) FROM user_policy", &[])
        .await?
        .get(0);
    let mut progress = Progress::new(users * (1 + POLICIES_PER_USER));

    progress.phase("users");
    copy_in(
        &tx,
        "COPY \"user\" (id, first_name, last_name, profession, email, mobile, language) FROM STDIN",
        users,
        &mut progress,
        |i, buf| {
            let id = base + 1 + i as i64;
            let h = mix(id as u64);
            let first = FIRST_NAMES[(h % FIRST_NAMES.len() as u64) as usize];
            let last = LAST_NAMES[((h >> 8) % LAST_NAMES.len() as u64) as usize];
            let prof = PROFESSIONS[((h >> 16) % PROFESSIONS.len() as u64) as usize];
            let mut line = String::with_capacity(128);
            let _ = write!(line, "{id}\t");
            buf.put_slice(line.as_bytes());
            put_text(buf, first);
            buf.put_u8(b'\t');
            put_text(buf, last);
            buf.put_u8(b'\t');
            put_text(buf, prof);
            line.clear();
            let _ = writeln!(
                line,
                "\tuser{id}@example.com\t+60 1{:08}\ten",
                (h >> 24) % 100_000_000
            );
            buf.put_slice(line.as_bytes());
        },
    )
    .await?;

    progress.phase("policies");
    let n_policies = policy_ids.len() as u64;
    copy_in(
        &tx,
        "COPY user_policy (id, policy_number, amount_insured, start_date_time, expiry_date_time,
                           policy_id, user_id) FROM STDIN",
        users * POLICIES_PER_USER,
        &mut progress,
        |i, buf| {
            let user_id = base + 1 + (i / POLICIES_PER_USER) as i64;
            let k = i % POLICIES_PER_USER;
            let id = up_base + 1 + i as i64;
            let h = mix((id as u64) ^ 0x5eed);
            let policy_id = policy_ids[((h % n_policies + k) % n_policies) as usize];
            // Starts between 2010 and 2025; one in seven has no expiry.
            let start = 1_262_304_000 + (h >> 8) as i64 % (16 * 365 * 86_400);
            let mut line = String::with_capacity(96);
            let _ = write!(
                line,
                "{id}\tS{user_id:010}-{}\t{}.00\t",
                k + 1,
                10_000 + (h >> 40) % 990_000
            );
            buf.put_slice(line.as_bytes());
            put_ts(buf, start);
            buf.put_u8(b'\t');
            if (h >> 4).is_multiple_of(7) {
                buf.put_slice(b"\\N");
            } else {
                put_ts(buf, start + (1 + (h >> 12) as i64 % 20) * 365 * 86_400);
            }
            line.clear();
            let _ = writeln!(line, "\t{policy_id}\t{user_id}");
            buf.put_slice(line.as_bytes());
        },
    )
    .await?;
    fix_sequences(&tx).await?;
    tx.commit().await?;
    progress.finish();
    for t in ["\"user\"", "user_policy"] {
        client.batch_execute(&format!("ANALYZE {t}")).await?;
    }
    Ok((base + 1, base + users as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut b = BytesMut::new();
        put_text(&mut b, "a\tb\\c\nd\re");
        assert_eq!(&b[..], b"a\\tb\\\\c\\nd\\re");
        let mut b = BytesMut::new();
        put_ts(&mut b, 1_598_868_000);
        assert_eq!(&b[..], b"2020-08-31 10:00:00+00");
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(mix(42), mix(42));
        assert_ne!(mix(42), mix(43));
    }
}
