//! The bundled sample data (`config/sample_policies.json`, compiled in): served straight from
//! the cache when `policy.database_url` is empty, and loaded into PostgreSQL by
//! `trackd db seed --sample`.

use super::cache::{BuildError, Snapshot, SnapshotBuilder};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const SAMPLE_JSON: &str = include_str!("../../config/sample_policies.json");

#[derive(Debug, Clone, Deserialize)]
pub struct SampleCategory {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SamplePolicy {
    pub id: i64,
    pub name: String,
    pub policy_product_code: String,
    pub description: String,
    pub tnc: String,
    pub coverage_years: i32,
    pub policy_category_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SampleUser {
    pub id: i64,
    pub first_name: String,
    pub last_name: String,
    pub profession: String,
    pub email: String,
    pub mobile: String,
    pub language: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SampleUserPolicy {
    pub id: i64,
    pub policy_number: String,
    /// A decimal string, e.g. `"250000.00"` (kept exact for PostgreSQL's `numeric`).
    pub amount_insured: String,
    /// RFC 3339.
    pub start_date_time: String,
    pub expiry_date_time: Option<String>,
    pub policy_id: i64,
    pub user_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SampleData {
    pub categories: Vec<SampleCategory>,
    pub policies: Vec<SamplePolicy>,
    pub users: Vec<SampleUser>,
    pub user_policies: Vec<SampleUserPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("sample data is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("sample data: '{0}' is not an RFC 3339 timestamp")]
    Timestamp(String),
    #[error("sample data: {0}")]
    Build(#[from] BuildError),
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp.
pub fn parse_micros(s: &str) -> Result<i64, SampleError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| SampleError::Timestamp(s.into()))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| SampleError::Timestamp(s.into()))
}

impl SampleData {
    /// The data compiled into the binary.
    pub fn bundled() -> Result<Self, SampleError> {
        Self::parse(SAMPLE_JSON)
    }

    pub fn parse(json: &str) -> Result<Self, SampleError> {
        Ok(serde_json::from_str(json)?)
    }

    pub fn snapshot(&self) -> Result<Snapshot, SampleError> {
        let mut b = SnapshotBuilder::new();
        for c in &self.categories {
            b.category(c.id, &c.name);
        }
        for p in &self.policies {
            b.policy(
                p.id,
                &p.name,
                &p.policy_product_code,
                &p.description,
                &p.tnc,
                p.coverage_years,
                p.policy_category_id,
            );
        }
        for u in &self.users {
            b.user(
                u.id,
                &u.first_name,
                &u.last_name,
                &u.profession,
                &u.email,
                &u.mobile,
            )?;
        }
        for up in &self.user_policies {
            let start = parse_micros(&up.start_date_time)?;
            let expiry = up
                .expiry_date_time
                .as_deref()
                .map(parse_micros)
                .transpose()?;
            b.user_policy(
                up.id,
                up.user_id,
                up.policy_id,
                &up.policy_number,
                Some(start),
                expiry,
            )?;
        }
        Ok(b.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_sample_builds_with_its_edge_cases() {
        let data = SampleData::bundled().unwrap();
        let s = data.snapshot().unwrap();
        let c = s.counts();
        assert_eq!(c.users, data.users.len());
        assert_eq!(c.user_policies, data.user_policies.len());
        // Users without policies, a null expiry, a long and non-ASCII names.
        let no_policies = (0..s.user_count())
            .filter(|&i| s.user_policies(i).len() == 0)
            .count();
        assert!(no_policies >= 1);
        assert!(
            data.user_policies
                .iter()
                .any(|u| u.expiry_date_time.is_none())
        );
        assert!(
            data.users
                .iter()
                .any(|u| u.first_name.chars().count() > 200)
        );
        assert!(data.users.iter().any(|u| !u.first_name.is_ascii()));
    }
}
