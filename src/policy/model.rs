//! The JSON shapes of the customer-insurance routes (field names of the reference service)
//! and timestamp formatting, borrowed from a snapshot without copying strings.

use super::cache::{Policy, Snapshot, UserPolicyRef, UserRef};
use serde::Serialize;
use std::fmt;

/// A timestamp in microseconds since the Unix epoch, serialised as RFC 3339 in UTC:
/// `2020-08-31T10:00:00Z`, with `.ffffff` only when there are sub-second digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn to_datetime(self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000).ok()
    }

    /// The UTC calendar date.
    pub fn date(self) -> Option<time::Date> {
        self.to_datetime().map(|t| t.date())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(t) = self.to_datetime() else {
            return write!(f, "{}", self.0);
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        if t.microsecond() != 0 {
            write!(f, ".{:06}", t.microsecond())?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One entry of `user_list/`.
#[derive(Serialize)]
pub struct UserJson<'a> {
    pub id: i64,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub profession: &'a str,
    pub email: &'a str,
    pub mobile: &'a str,
}

impl<'a> From<UserRef<'a>> for UserJson<'a> {
    fn from(u: UserRef<'a>) -> Self {
        Self {
            id: u.id,
            first_name: u.first_name,
            last_name: u.last_name,
            profession: u.profession,
            email: u.email,
            mobile: u.mobile,
        }
    }
}

/// One entry of `user_policy/<id>/`.
#[derive(Serialize)]
#[allow(non_snake_case)]
pub struct UserPolicyJson<'a> {
    pub user__first_name: &'a str,
    pub user_id: i64,
    pub policy_id: i64,
    pub policy__name: &'a str,
    pub policy_number: &'a str,
    pub start_date_time: Option<Timestamp>,
    pub expiry_date_time: Option<Timestamp>,
}

impl<'a> UserPolicyJson<'a> {
    pub fn new(user: &UserRef<'a>, up: &UserPolicyRef<'a>) -> Self {
        Self {
            user__first_name: user.first_name,
            user_id: user.id,
            policy_id: up.policy.id,
            policy__name: &up.policy.name,
            policy_number: up.policy_number,
            start_date_time: up.start_micros.map(Timestamp),
            expiry_date_time: up.expiry_micros.map(Timestamp),
        }
    }
}

/// The element of `policy_detail/<id>/`.
#[derive(Serialize)]
#[allow(non_snake_case)]
pub struct PolicyDetailJson<'a> {
    pub id: i64,
    pub name: &'a str,
    pub policy_product_code: &'a str,
    pub description: &'a str,
    pub policy_category__name: &'a str,
    pub tnc: &'a str,
    pub coverage_years: i32,
}

impl<'a> PolicyDetailJson<'a> {
    pub fn new(snap: &'a Snapshot, p: &'a Policy) -> Self {
        Self {
            id: p.id,
            name: &p.name,
            policy_product_code: &p.product_code,
            description: &p.description,
            policy_category__name: &snap.category_of(p).name,
            tnc: &p.tnc,
            coverage_years: p.coverage_years,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_598_868_000_000_000).to_string(),
            "2020-08-31T10:00:00Z"
        );
        assert_eq!(
            Timestamp(1_500_000).to_string(),
            "1970-01-01T00:00:01.500000Z"
        );
        assert_eq!(
            serde_json::to_string(&Some(Timestamp(-1_000_000))).unwrap(),
            "\"1969-12-31T23:59:59Z\""
        );
        assert_eq!(
            Timestamp(1_598_868_000_000_000).date().unwrap().to_string(),
            "2020-08-31"
        );
    }
}
