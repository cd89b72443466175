//! The policy cache snapshot: every user, category, policy and user-policy in compact,
//! immutable, id-sorted columns with the indexes the routes need, built once per load and
//! then only read (behind an `Arc` in an `ArcSwap`).
//!
//! Layout, chosen for memory (about 1M users × 5 policies must fit in ≤ 200 bytes per
//! user-policy): struct-of-arrays, strings packed into one buffer per column with `u32`
//! offsets, professions interned, a user's policies found through a CSR offset array (no
//! per-user `Vec`), policies referenced by a `u32` index, timestamps as `i64` microseconds.

use std::collections::HashMap;
use std::time::SystemTime;

/// Microseconds since the Unix epoch standing for SQL NULL in timestamp columns.
const NULL_TS: i64 = i64::MIN;

/// Why a snapshot could not be built from the rows given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("duplicate {kind} id {id}")]
    DuplicateId { kind: &'static str, id: i64 },
    #[error("{kind} {id} refers to missing {target} {target_id}")]
    MissingRef {
        kind: &'static str,
        id: i64,
        target: &'static str,
        target_id: i64,
    },
    #[error("too many rows or too much text for the cache's 32-bit offsets")]
    TooLarge,
}

/// Strings of one column packed in one buffer: `offsets[i]..offsets[i + 1]` is row `i`.
#[derive(Debug, Default, Clone)]
pub struct StrCol {
    data: String,
    offsets: Vec<u32>,
}

impl StrCol {
    fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            data: String::new(),
            offsets,
        }
    }

    fn push(&mut self, s: &str) -> Result<(), BuildError> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.data.push_str(s);
        let end = u32::try_from(self.data.len()).map_err(|_| BuildError::TooLarge)?;
        self.offsets.push(end);
        Ok(())
    }

    pub fn get(&self, i: usize) -> &str {
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.data.get(a as usize..b as usize).unwrap_or(""),
            _ => "",
        }
    }

    /// The same strings in the order `order` gives.
    fn permuted(&self, order: &[u32]) -> Result<Self, BuildError> {
        let mut out = Self::with_capacity(order.len());
        out.data.reserve_exact(self.data.len());
        for &i in order {
            out.push(self.get(i as usize))?;
        }
        Ok(out)
    }

    fn shrink(&mut self) {
        self.data.shrink_to_fit();
        self.offsets.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.data.capacity() + self.offsets.capacity() * 4
    }
}

/// A policy category.
#[derive(Debug, Clone)]
pub struct Category {
    pub id: i64,
    pub name: Box<str>,
}

/// A policy product.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: i64,
    pub name: Box<str>,
    pub product_code: Box<str>,
    pub description: Box<str>,
    pub tnc: Box<str>,
    pub coverage_years: i32,
    category: u32,
}

/// One user, borrowed from a snapshot; its serde form is a `user_list/` entry.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct UserRef<'a> {
    pub id: i64,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub profession: &'a str,
    pub email: &'a str,
    pub mobile: &'a str,
}

/// One policy a user holds, borrowed from a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct UserPolicyRef<'a> {
    pub policy: &'a Policy,
    /// The policy's part of the row, as JSON ([`Snapshot::policy_row_json`]).
    pub policy_json: &'a str,
    pub policy_number: &'a str,
    /// Microseconds since the Unix epoch; `None` for SQL NULL.
    pub start_micros: Option<i64>,
    pub expiry_micros: Option<i64>,
}

/// Row counts of a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: usize,
    pub policies: usize,
    pub categories: usize,
    pub user_policies: usize,
}

impl Counts {
    pub fn rows(&self) -> usize {
        self.users + self.policies + self.categories + self.user_policies
    }
}

/// The immutable cache contents.
#[derive(Debug)]
pub struct Snapshot {
    user_ids: Vec<i64>,
    first_name: StrCol,
    last_name: StrCol,
    email: StrCol,
    mobile: StrCol,
    profession: Vec<u32>,
    professions: Vec<Box<str>>,
    /// CSR: user `i`'s policies are `up_*[user_up[i]..user_up[i + 1]]`, in user-policy id order.
    user_up: Vec<u32>,
    up_policy: Vec<u32>,
    up_number: StrCol,
    up_start: Vec<i64>,
    up_expiry: Vec<i64>,
    policies: Vec<Policy>,
    categories: Vec<Category>,
    /// Each user's `user_list/` entry, rendered once per load: a page or the streamed list is
    /// then a copy per user (about 30 bytes per user-policy at 5 policies a user).
    user_json: StrCol,
    /// Each policy's part of a `user_policy/` row (`"policy_id":…,"policy__name":…`), rendered
    /// once per load: policies are few, and every row of every user repeats one.
    policy_row_json: Vec<Box<str>>,
    /// Each policy's whole `policy_detail/` body, rendered once per load: an answer is then a
    /// reference to it.
    policy_detail: Vec<bytes::Bytes>,
    loaded_at: SystemTime,
}

fn opt_ts(v: i64) -> Option<i64> {
    (v != NULL_TS).then_some(v)
}

impl Snapshot {
    pub fn counts(&self) -> Counts {
        Counts {
            users: self.user_ids.len(),
            policies: self.policies.len(),
            categories: self.categories.len(),
            user_policies: self.up_policy.len(),
        }
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The index of the user with this id.
    pub fn user_index(&self, id: i64) -> Option<usize> {
        self.user_ids.binary_search(&id).ok()
    }

    /// The `user_list/` entry of the user at index `i`, as JSON.
    pub fn user_json(&self, i: usize) -> &str {
        self.user_json.get(i)
    }

    pub fn user(&self, i: usize) -> UserRef<'_> {
        let p = self.profession.get(i).copied().unwrap_or(0) as usize;
        UserRef {
            id: self.user_ids.get(i).copied().unwrap_or(0),
            first_name: self.first_name.get(i),
            last_name: self.last_name.get(i),
            profession: self.professions.get(p).map_or("", |s| s),
            email: self.email.get(i),
            mobile: self.mobile.get(i),
        }
    }

    pub fn user_count(&self) -> usize {
        self.user_ids.len()
    }

    /// The index of the first user whose id is greater than `after_id` (keyset paging).
    pub fn first_user_after(&self, after_id: Option<i64>) -> usize {
        match after_id {
            None => 0,
            Some(a) => self.user_ids.partition_point(|&id| id <= a),
        }
    }

    /// The policies of the user at index `i`, in user-policy id order.
    pub fn user_policies(&self, i: usize) -> impl ExactSizeIterator<Item = UserPolicyRef<'_>> {
        let a = self.user_up.get(i).copied().unwrap_or(0) as usize;
        let b = self.user_up.get(i + 1).copied().unwrap_or(0) as usize;
        (a..b.max(a)).map(move |k| UserPolicyRef {
            policy: &self.policies[self.up_policy[k] as usize],
            policy_json: &self.policy_row_json[self.up_policy[k] as usize],
            policy_number: self.up_number.get(k),
            start_micros: opt_ts(self.up_start[k]),
            expiry_micros: opt_ts(self.up_expiry[k]),
        })
    }

    /// The `policy_detail/<id>/` body of a policy: `{"data":[{…}],"status":true}`.
    pub fn policy_detail_body(&self, id: i64) -> Option<&bytes::Bytes> {
        self.policies
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.policy_detail[i])
    }

    pub fn policy(&self, id: i64) -> Option<&Policy> {
        self.policies
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.policies[i])
    }

    pub fn category_of(&self, p: &Policy) -> &Category {
        &self.categories[p.category as usize]
    }

    /// Heap bytes held by the snapshot (capacity, not length), for logs and the load bench.
    pub fn heap_bytes(&self) -> usize {
        let boxed = |s: &str| s.len();
        self.user_ids.capacity() * 8
            + self.first_name.heap_bytes()
            + self.last_name.heap_bytes()
            + self.email.heap_bytes()
            + self.mobile.heap_bytes()
            + self.profession.capacity() * 4
            + self
                .professions
                .iter()
                .map(|s| boxed(s) + 16)
                .sum::<usize>()
            + self.user_up.capacity() * 4
            + self.up_policy.capacity() * 4
            + self.up_number.heap_bytes()
            + self.user_json.heap_bytes()
            + self
                .policy_row_json
                .iter()
                .map(|s| s.len() + 16)
                .sum::<usize>()
            + self
                .policy_detail
                .iter()
                .map(|b| b.len() + 32)
                .sum::<usize>()
            + self.up_start.capacity() * 8
            + self.up_expiry.capacity() * 8
            + self
                .policies
                .iter()
                .map(|p| {
                    std::mem::size_of::<Policy>()
                        + p.name.len()
                        + p.product_code.len()
                        + p.description.len()
                        + p.tnc.len()
                })
                .sum::<usize>()
            + self
                .categories
                .iter()
                .map(|c| std::mem::size_of::<Category>() + c.name.len())
                .sum::<usize>()
    }
}

/// Collects rows in any order and builds a [`Snapshot`], checking ids and references.
#[derive(Default)]
pub struct SnapshotBuilder {
    user_ids: Vec<i64>,
    first_name: StrCol,
    last_name: StrCol,
    email: StrCol,
    mobile: StrCol,
    profession: Vec<u32>,
    professions: Vec<Box<str>>,
    profession_ix: HashMap<Box<str>, u32>,
    categories: Vec<Category>,
    policies: Vec<(Policy, i64)>,
    up_id: Vec<i64>,
    up_user: Vec<i64>,
    up_policy: Vec<i64>,
    up_number: StrCol,
    up_start: Vec<i64>,
    up_expiry: Vec<i64>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pre-sizes the user and user-policy columns (from a row estimate; only a hint).
    pub fn reserve(&mut self, users: usize, user_policies: usize) {
        self.user_ids.reserve(users);
        self.profession.reserve(users);
        self.first_name.offsets.reserve(users + 1);
        self.last_name.offsets.reserve(users + 1);
        self.email.offsets.reserve(users + 1);
        self.mobile.offsets.reserve(users + 1);
        self.up_id.reserve(user_policies);
        self.up_user.reserve(user_policies);
        self.up_policy.reserve(user_policies);
        self.up_start.reserve(user_policies);
        self.up_expiry.reserve(user_policies);
        self.up_number.offsets.reserve(user_policies + 1);
        self.up_number.data.reserve(user_policies * 14);
    }

    pub fn user(
        &mut self,
        id: i64,
        first_name: &str,
        last_name: &str,
        profession: &str,
        email: &str,
        mobile: &str,
    ) -> Result<(), BuildError> {
        self.user_ids.push(id);
        self.first_name.push(first_name)?;
        self.last_name.push(last_name)?;
        self.email.push(email)?;
        self.mobile.push(mobile)?;
        let p = match self.profession_ix.get(profession) {
            Some(&p) => p,
            None => {
                let p = u32::try_from(self.professions.len()).map_err(|_| BuildError::TooLarge)?;
                self.professions.push(profession.into());
                self.profession_ix.insert(profession.into(), p);
                p
            }
        };
        self.profession.push(p);
        Ok(())
    }

    pub fn category(&mut self, id: i64, name: &str) {
        self.categories.push(Category {
            id,
            name: name.into(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub fn policy(
        &mut self,
        id: i64,
        name: &str,
        product_code: &str,
        description: &str,
        tnc: &str,
        coverage_years: i32,
        category_id: i64,
    ) {
        self.policies.push((
            Policy {
                id,
                name: name.into(),
                product_code: product_code.into(),
                description: description.into(),
                tnc: tnc.into(),
                coverage_years,
                category: 0,
            },
            category_id,
        ));
    }

    /// One user-policy; timestamps in microseconds since the Unix epoch.
    pub fn user_policy(
        &mut self,
        id: i64,
        user_id: i64,
        policy_id: i64,
        policy_number: &str,
        start_micros: Option<i64>,
        expiry_micros: Option<i64>,
    ) -> Result<(), BuildError> {
        self.up_id.push(id);
        self.up_user.push(user_id);
        self.up_policy.push(policy_id);
        self.up_number.push(policy_number)?;
        self.up_start.push(start_micros.unwrap_or(NULL_TS));
        self.up_expiry.push(expiry_micros.unwrap_or(NULL_TS));
        Ok(())
    }

    /// Sorts, indexes and checks everything; CPU-bound (run it off the async workers).
    pub fn build(self) -> Result<Snapshot, BuildError> {
        let n_users = self.user_ids.len();
        if u32::try_from(n_users).is_err() || u32::try_from(self.up_id.len()).is_err() {
            return Err(BuildError::TooLarge);
        }

        // Categories and policies: few rows, sorted by id.
        let mut categories = self.categories;
        categories.sort_unstable_by_key(|c| c.id);
        if let Some(w) = categories.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(BuildError::DuplicateId {
                kind: "category",
                id: w[0].id,
            });
        }
        let mut policies = Vec::with_capacity(self.policies.len());
        for (mut p, category_id) in self.policies {
            let c = categories
                .binary_search_by_key(&category_id, |c| c.id)
                .map_err(|_| BuildError::MissingRef {
                    kind: "policy",
                    id: p.id,
                    target: "category",
                    target_id: category_id,
                })?;
            p.category = c as u32;
            policies.push(p);
        }
        policies.sort_unstable_by_key(|p| p.id);
        if let Some(w) = policies.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(BuildError::DuplicateId {
                kind: "policy",
                id: w[0].id,
            });
        }

        // Users by id (already in order when loaded with ORDER BY id).
        let (user_ids, first_name, last_name, email, mobile, profession) =
            if self.user_ids.is_sorted() {
                (
                    self.user_ids,
                    self.first_name,
                    self.last_name,
                    self.email,
                    self.mobile,
                    self.profession,
                )
            } else {
                let mut order: Vec<u32> = (0..n_users as u32).collect();
                order.sort_unstable_by_key(|&i| self.user_ids[i as usize]);
                (
                    order.iter().map(|&i| self.user_ids[i as usize]).collect(),
                    self.first_name.permuted(&order)?,
                    self.last_name.permuted(&order)?,
                    self.email.permuted(&order)?,
                    self.mobile.permuted(&order)?,
                    order.iter().map(|&i| self.profession[i as usize]).collect(),
                )
            };
        if let Some(w) = user_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(BuildError::DuplicateId {
                kind: "user",
                id: w[0],
            });
        }

        // User-policies grouped by user index, then by id.
        let n_up = self.up_id.len();
        let mut user_ix = Vec::with_capacity(n_up);
        let mut policy_ix = Vec::with_capacity(n_up);
        // Consecutive rows usually share a user: remember the last lookup.
        let mut last: Option<(i64, u32)> = None;
        for k in 0..n_up {
            let uid = self.up_user[k];
            let ui = match last {
                Some((id, ix)) if id == uid => ix,
                _ => {
                    let ix = user_ids
                        .binary_search(&uid)
                        .map_err(|_| BuildError::MissingRef {
                            kind: "user_policy",
                            id: self.up_id[k],
                            target: "user",
                            target_id: uid,
                        })? as u32;
                    last = Some((uid, ix));
                    ix
                }
            };
            user_ix.push(ui);
            let pid = self.up_policy[k];
            let pi = policies.binary_search_by_key(&pid, |p| p.id).map_err(|_| {
                BuildError::MissingRef {
                    kind: "user_policy",
                    id: self.up_id[k],
                    target: "policy",
                    target_id: pid,
                }
            })?;
            policy_ix.push(pi as u32);
        }
        drop(self.up_user);
        drop(self.up_policy);
        let key = |k: usize| (user_ix[k], self.up_id[k]);
        let sorted = (1..n_up).all(|k| key(k - 1) < key(k));
        let (up_policy, up_number, up_start, up_expiry, user_ix) = if sorted {
            (
                policy_ix,
                self.up_number,
                self.up_start,
                self.up_expiry,
                user_ix,
            )
        } else {
            let mut order: Vec<u32> = (0..n_up as u32).collect();
            order.sort_unstable_by_key(|&k| key(k as usize));
            if let Some(w) = order
                .windows(2)
                .find(|w| key(w[0] as usize) == key(w[1] as usize))
            {
                return Err(BuildError::DuplicateId {
                    kind: "user_policy",
                    id: self.up_id[w[0] as usize],
                });
            }
            let pick = |v: &[i64]| order.iter().map(|&k| v[k as usize]).collect::<Vec<_>>();
            (
                order.iter().map(|&k| policy_ix[k as usize]).collect(),
                self.up_number.permuted(&order)?,
                pick(&self.up_start),
                pick(&self.up_expiry),
                order.iter().map(|&k| user_ix[k as usize]).collect(),
            )
        };
        // CSR offsets from the (sorted) user index of each user-policy.
        let mut user_up = Vec::with_capacity(n_users + 1);
        user_up.push(0u32);
        let mut k = 0usize;
        for u in 0..n_users as u32 {
            while k < user_ix.len() && user_ix[k] == u {
                k += 1;
            }
            user_up.push(k as u32);
        }

        let mut snap = Snapshot {
            user_ids,
            first_name,
            last_name,
            email,
            mobile,
            profession,
            professions: self.professions,
            user_up,
            up_policy,
            up_number,
            up_start,
            up_expiry,
            policies,
            categories,
            user_json: StrCol::default(),
            policy_row_json: Vec::new(),
            policy_detail: Vec::new(),
            loaded_at: SystemTime::now(),
        };
        let mut user_json = StrCol::with_capacity(n_users);
        let mut buf = Vec::with_capacity(256);
        for i in 0..n_users {
            buf.clear();
            super::model::write_user(&mut buf, &snap.user(i));
            // Valid UTF-8: JSON text built from `&str`s.
            user_json.push(std::str::from_utf8(&buf).unwrap_or("{}"))?;
        }
        snap.user_json = user_json;
        snap.policy_row_json = snap
            .policies
            .iter()
            .map(|p| {
                buf.clear();
                super::model::write_policy_row_part(&mut buf, p);
                String::from_utf8_lossy(&buf).into()
            })
            .collect();
        snap.policy_detail = snap
            .policies
            .iter()
            .map(|p| {
                let mut body = Vec::with_capacity(512);
                super::model::write_policy_detail(&mut body, p, &snap.category_of(p).name);
                bytes::Bytes::from(body)
            })
            .collect();
        snap.user_ids.shrink_to_fit();
        for c in [
            &mut snap.first_name,
            &mut snap.last_name,
            &mut snap.email,
            &mut snap.mobile,
            &mut snap.up_number,
            &mut snap.user_json,
        ] {
            c.shrink();
        }
        snap.profession.shrink_to_fit();
        snap.up_policy.shrink_to_fit();
        snap.up_start.shrink_to_fit();
        snap.up_expiry.shrink_to_fit();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotBuilder {
        let mut b = SnapshotBuilder::new();
        b.category(2, "Health");
        b.category(1, "Motor");
        b.policy(10, "Car Basic", "MOT-1", "d", "t", 1, 1);
        b.policy(5, "Health Plus", "HLT-1", "d", "t", 5, 2);
        // Users out of order, one without policies.
        b.user(3, "Zoë", "Ünal", "Engineer", "z@example.com", "+60 1")
            .unwrap();
        b.user(1, "Ana", "Lim", "Engineer", "a@example.com", "+60 2")
            .unwrap();
        b.user(2, "Bo", "", "", "", "").unwrap();
        b.user_policy(7, 3, 10, "P-7", Some(1_000_000), None)
            .unwrap();
        b.user_policy(4, 1, 5, "P-4", Some(0), Some(86_400_000_000))
            .unwrap();
        b.user_policy(6, 3, 5, "P-6", None, None).unwrap();
        b
    }

    #[test]
    fn builds_sorted_indexes() {
        let s = sample().build().unwrap();
        assert_eq!(
            s.counts(),
            Counts {
                users: 3,
                policies: 2,
                categories: 2,
                user_policies: 3
            }
        );
        let ids: Vec<i64> = (0..s.user_count()).map(|i| s.user(i).id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let zoe = s.user_index(3).unwrap();
        assert_eq!(s.user(zoe).first_name, "Zoë");
        assert_eq!(s.user(zoe).profession, "Engineer");
        // The pre-rendered user_list/ entries are the users' serde form, user by user.
        for i in 0..s.user_count() {
            assert_eq!(
                s.user_json(i),
                serde_json::to_string(&s.user(i)).unwrap(),
                "user index {i}"
            );
        }
        let numbers: Vec<&str> = s.user_policies(zoe).map(|p| p.policy_number).collect();
        assert_eq!(numbers, ["P-6", "P-7"], "by user-policy id");
        let p7 = s.user_policies(zoe).nth(1).unwrap();
        assert_eq!(p7.policy.id, 10);
        assert_eq!((p7.start_micros, p7.expiry_micros), (Some(1_000_000), None));
        assert_eq!(s.user_policies(s.user_index(2).unwrap()).len(), 0);
        assert!(s.user_index(4).is_none());
        let p = s.policy(5).unwrap();
        assert_eq!(s.category_of(p).name.as_ref(), "Health");
        assert!(s.policy(6).is_none());
    }

    #[test]
    fn keyset_start() {
        let s = sample().build().unwrap();
        assert_eq!(s.first_user_after(None), 0);
        assert_eq!(s.first_user_after(Some(0)), 0);
        assert_eq!(s.first_user_after(Some(1)), 1);
        assert_eq!(s.first_user_after(Some(3)), 3);
    }

    #[test]
    fn rejects_dangling_and_duplicate_rows() {
        let mut b = sample();
        b.user_policy(9, 99, 5, "P-9", None, None).unwrap();
        assert!(matches!(
            b.build(),
            Err(BuildError::MissingRef { target: "user", .. })
        ));
        let mut b = sample();
        b.user(1, "Dup", "", "", "", "").unwrap();
        assert_eq!(
            b.build().unwrap_err(),
            BuildError::DuplicateId {
                kind: "user",
                id: 1
            }
        );
        let mut b = sample();
        b.policy(11, "x", "X", "", "", 1, 42);
        assert!(matches!(
            b.build(),
            Err(BuildError::MissingRef {
                target: "category",
                ..
            })
        ));
    }

    #[test]
    fn empty_builds() {
        let s = SnapshotBuilder::new().build().unwrap();
        assert_eq!(s.counts().rows(), 0);
        assert_eq!(s.first_user_after(Some(5)), 0);
        assert_eq!(s.user_policies(0).len(), 0);
    }
}
