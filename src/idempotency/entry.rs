//! What a key holds (an [`Entry`]: pending under a claim, or done with its answer) and the
//! decision an existing entry means for a request ([`decide`]); the same in every backend.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// A key still pending after this long belongs to a request that died: it may be taken over.
pub const STALE_PENDING: Duration = Duration::from_secs(30);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the first request with a key left behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The request's parameters, normalised: a retry must match them exactly.
    pub fingerprint: String,
    /// Unix milliseconds when the key was claimed, last refreshed, or completed.
    pub at_ms: u64,
    /// `None` while the first request is still being answered.
    pub status: Option<u16>,
    pub body: Option<String>,
    /// The process that holds a pending key (a restarted embedded instance takes its own
    /// keys over at once: their requests died with the previous process).
    pub owner: String,
    /// Random, one per claim, kept across refreshes: whoever holds it may settle the key.
    pub claim: String,
}

impl Entry {
    pub fn is_pending(&self) -> bool {
        self.status.is_none()
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether the entry has outlived [`TTL`].
    pub fn expired(&self) -> bool {
        now_ms().saturating_sub(self.at_ms) >= TTL.as_millis() as u64
    }
}

/// A pending key as this request claimed it: refreshing, completing or releasing it succeeds
/// only while the key is still pending under this claim (nobody took it over meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim(pub(crate) Entry);

impl Claim {
    pub fn token(&self) -> &str {
        &self.0.claim
    }
}

/// What to do with a request carrying a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use: answer it, then complete (or release) the claim.
    Fresh(Claim),
    /// A retry: answer exactly this.
    Replay { status: u16, body: String },
    /// The key was used with other parameters.
    Conflict,
    /// The first request with this key is still being answered.
    InProgress,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Answer(Begin),
    TakeOver,
}

/// What an existing entry means for a request with `fingerprint`. `owner` is this process for
/// the embedded store, where a pending entry of another (dead) process can be taken over.
pub fn decide(entry: &Entry, fingerprint: &str, owner: Option<&str>) -> Decision {
    if entry.fingerprint != fingerprint {
        return Decision::Answer(Begin::Conflict);
    }
    match (entry.status, &entry.body) {
        (Some(status), Some(body)) => Decision::Answer(Begin::Replay {
            status,
            body: body.clone(),
        }),
        _ => {
            let stale = now_ms().saturating_sub(entry.at_ms) > STALE_PENDING.as_millis() as u64;
            let dead_owner = owner.is_some_and(|o| o != entry.owner);
            if stale || dead_owner {
                Decision::TakeOver
            } else {
                Decision::Answer(Begin::InProgress)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fp: &str, done: bool, age_ms: u64, owner: &str) -> Entry {
        Entry {
            fingerprint: fp.into(),
            at_ms: now_ms() - age_ms,
            status: done.then_some(201),
            body: done.then(|| "{}".into()),
            owner: owner.into(),
            claim: "c".into(),
        }
    }

    #[test]
    fn a_done_key_replays_and_other_parameters_conflict() {
        let e = entry("a", true, 0, "p");
        assert_eq!(
            decide(&e, "a", None),
            Decision::Answer(Begin::Replay {
                status: 201,
                body: "{}".into()
            })
        );
        assert_eq!(decide(&e, "b", None), Decision::Answer(Begin::Conflict));
    }

    #[test]
    fn pending_keys_wait_unless_stale_or_orphaned() {
        let fresh = entry("a", false, 0, "p");
        assert_eq!(
            decide(&fresh, "a", None),
            Decision::Answer(Begin::InProgress)
        );
        assert_eq!(
            decide(&fresh, "a", Some("p")),
            Decision::Answer(Begin::InProgress)
        );
        assert_eq!(decide(&fresh, "a", Some("q")), Decision::TakeOver);
        let stale = entry("a", false, 31_000, "p");
        assert_eq!(decide(&stale, "a", None), Decision::TakeOver);
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let e = entry("a", true, 0, "p");
        assert_eq!(Entry::from_json(e.to_json().as_bytes()), Some(e.clone()));
        assert!(!e.expired());
        assert!(entry("a", true, TTL.as_millis() as u64 + 1, "p").expired());
        assert_eq!(Entry::from_json(b"{\"fingerprint\":1}"), None);
    }
}
