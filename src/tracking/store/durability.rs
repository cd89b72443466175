//! Whether a shared sequence store keeps what it acknowledged: read from the server when trackd
//! connects (and after every reconnect), and decided before any number is issued. A store that
//! could lose an acknowledged reservation in a crash or failover is refused unless the operator
//! declared its durability or opted in to the risk, by name.

use crate::config::Durability;

/// What the Redis server says about itself (`INFO`, and `CONFIG GET appendfsync` where the
/// server allows it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisFacts {
    pub version: (u32, u32, u32),
    /// `master` or `slave`.
    pub role: String,
    pub aof_enabled: bool,
    /// `None` when `CONFIG` is refused (managed Redis).
    pub appendfsync: Option<String>,
    pub connected_replicas: u32,
    /// Changes when the server restarts.
    pub run_id: String,
    /// Changes when a replica is promoted.
    pub replid: String,
}

impl RedisFacts {
    /// The facts in an `INFO` reply (all sections), with `appendfsync` from `CONFIG GET`.
    pub fn from_info(info: &str, appendfsync: Option<String>) -> Self {
        let mut f = RedisFacts {
            appendfsync,
            ..Default::default()
        };
        for line in info.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else {
                continue;
            };
            match k {
                "redis_version" => {
                    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
                    f.version = (
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                    );
                }
                "role" => f.role = v.to_owned(),
                "aof_enabled" => f.aof_enabled = v == "1",
                "connected_slaves" => f.connected_replicas = v.parse().unwrap_or(0),
                "run_id" => f.run_id = v.to_owned(),
                "master_replid" => f.replid = v.to_owned(),
                _ => {}
            }
        }
        f
    }

    fn has_waitaof(&self) -> bool {
        self.version >= (7, 2, 0)
    }
}

/// What confirms a reservation before its numbers are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// The reply itself: the server fsyncs every write before answering.
    Reply,
    /// `WAIT n`: `n` replicas have the write.
    Wait(u32),
    /// `WAITAOF 1 n`: the write is in the primary's AOF on disk, and in `n` replicas'.
    WaitAof(u32),
}

/// How the store's acknowledged reservations are known to survive, and what each needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub confirm: Confirm,
    /// For logs and `/readyz`: what trackd relies on.
    pub relies_on: String,
}

/// Decides whether reservations from the Redis at `addr` can be relied on, and how to confirm
/// each. `Err` is the refusal, naming what to change.
pub fn decide_redis(
    facts: &RedisFacts,
    mode: Durability,
    min_replicas: u32,
    addr: &str,
) -> Result<Verdict, String> {
    if facts.role == "slave" {
        return Err(format!(
            "the Redis at {addr} is a replica: point tracking.redis_url at the primary"
        ));
    }
    if min_replicas > facts.connected_replicas && mode != Durability::UnsafeMayReissue {
        return Err(format!(
            "the Redis at {addr} has {} replica(s) connected; tracking.redis_min_replicas is \
             {min_replicas}, so no reservation could be confirmed",
            facts.connected_replicas
        ));
    }
    let replicas = |base: &str| {
        if min_replicas > 0 {
            format!("{base}, and WAIT for {min_replicas} replica(s) after each reservation")
        } else {
            base.to_owned()
        }
    };
    let then_wait = if min_replicas > 0 {
        Confirm::Wait(min_replicas)
    } else {
        Confirm::Reply
    };
    match mode {
        Durability::UnsafeMayReissue => Ok(Verdict {
            confirm: then_wait,
            relies_on: replicas(
                "nothing: tracking.redis_durability = \"unsafe-may-reissue\" (a Redis crash or \
                 failover can make numbers issued twice)",
            ),
        }),
        Durability::Declared => Ok(Verdict {
            confirm: then_wait,
            relies_on: replicas(
                "the operator's declaration (tracking.redis_durability = \"declared\") that Redis \
                 keeps every acknowledged write",
            ),
        }),
        Durability::Check => {
            let opt_out = "or set tracking.redis_durability = \"unsafe-may-reissue\" to issue anyway \
                           (a Redis crash could then make numbers issued twice)";
            let Some(appendfsync) = &facts.appendfsync else {
                return Err(format!(
                    "the Redis at {addr} refuses CONFIG GET, so its persistence cannot be checked: \
                     if it keeps every acknowledged write (appendfsync always, or a provider's \
                     guarantee), set tracking.redis_durability = \"declared\"; {opt_out}"
                ));
            };
            if facts.aof_enabled && appendfsync == "always" {
                return Ok(Verdict {
                    confirm: then_wait,
                    relies_on: replicas("appendonly yes, appendfsync always (checked)"),
                });
            }
            if facts.aof_enabled && facts.has_waitaof() {
                return Ok(Verdict {
                    confirm: Confirm::WaitAof(min_replicas),
                    relies_on: format!(
                        "appendonly yes (checked), and WAITAOF 1 {min_replicas} after each reservation"
                    ),
                });
            }
            let has = if facts.aof_enabled {
                format!("appendonly yes with appendfsync {appendfsync}")
            } else {
                "appendonly no".to_owned()
            };
            Err(format!(
                "the Redis at {addr} has {has}: a crash of Redis can lose a reservation it \
                 acknowledged, and its numbers could then be issued twice. Set appendonly yes \
                 and appendfsync always on Redis (on Redis >= 7.2, appendonly yes is enough: \
                 trackd then waits for WAITAOF), {opt_out}"
            ))
        }
    }
}

/// Decides whether commits of the PostgreSQL session are durable (`synchronous_commit`,
/// `fsync` as the session sees them).
pub fn decide_postgres(
    synchronous_commit: &str,
    fsync: &str,
    mode: Durability,
) -> Result<String, String> {
    match mode {
        Durability::UnsafeMayReissue => Ok(
            "nothing: tracking.postgres_durability = \"unsafe-may-reissue\" (a crash can make \
             numbers issued twice)"
                .into(),
        ),
        Durability::Declared => {
            Ok("the operator's declaration (tracking.postgres_durability = \"declared\")".into())
        }
        Durability::Check => {
            let weak = if synchronous_commit == "off" {
                Some("synchronous_commit = off")
            } else if fsync == "off" {
                Some("fsync = off")
            } else {
                None
            };
            match weak {
                None => Ok(format!(
                    "synchronous_commit = {synchronous_commit}, fsync = {fsync} (checked)"
                )),
                Some(setting) => Err(format!(
                    "the PostgreSQL sequence store's session has {setting}: a committed reservation \
                     can be lost in a crash, and its numbers could then be issued twice. Set it on \
                     (for the database or role trackd uses), or set tracking.postgres_durability = \
                     \"unsafe-may-reissue\" to issue anyway"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n# Replication\r\n\
                        role:master\r\nconnected_slaves:1\r\nmaster_replid:r1\r\n\
                        # Persistence\r\naof_enabled:1\r\n";

    fn facts(fsync: &str) -> RedisFacts {
        RedisFacts::from_info(INFO, Some(fsync.into()))
    }

    #[test]
    fn info_is_read() {
        let f = facts("always");
        assert_eq!(f.version, (7, 0, 15));
        assert_eq!(
            (f.role.as_str(), f.run_id.as_str(), f.replid.as_str()),
            ("master", "abc", "r1")
        );
        assert!(f.aof_enabled);
        assert_eq!(f.connected_replicas, 1);
    }

    #[test]
    fn only_fsync_always_or_waitaof_pass_the_check() {
        let ok = decide_redis(&facts("always"), Durability::Check, 0, "r").unwrap();
        assert_eq!(ok.confirm, Confirm::Reply);
        let ok = decide_redis(&facts("always"), Durability::Check, 1, "r").unwrap();
        assert_eq!(ok.confirm, Confirm::Wait(1));
        let refused = decide_redis(&facts("everysec"), Durability::Check, 0, "r").unwrap_err();
        assert!(refused.contains("appendfsync everysec"), "{refused}");
        assert!(refused.contains("tracking.redis_durability"), "{refused}");
        let mut no_aof = facts("everysec");
        no_aof.aof_enabled = false;
        assert!(
            decide_redis(&no_aof, Durability::Check, 0, "r")
                .unwrap_err()
                .contains("appendonly no")
        );
        // Redis >= 7.2 with AOF: WAITAOF after each reservation.
        let mut new = facts("everysec");
        new.version = (7, 2, 4);
        let v = decide_redis(&new, Durability::Check, 1, "r").unwrap();
        assert_eq!(v.confirm, Confirm::WaitAof(1));
        // CONFIG refused: declare it, or opt in.
        let mut managed = facts("always");
        managed.appendfsync = None;
        assert!(
            decide_redis(&managed, Durability::Check, 0, "r")
                .unwrap_err()
                .contains("\"declared\"")
        );
        assert!(
            decide_redis(&managed, Durability::Declared, 0, "r")
                .unwrap()
                .relies_on
                .contains("declaration")
        );
        // The opt-in issues from anything, and says so.
        let v = decide_redis(&no_aof, Durability::UnsafeMayReissue, 0, "r").unwrap();
        assert!(v.relies_on.contains("unsafe"));
    }

    #[test]
    fn replicas_and_roles_are_checked() {
        assert!(
            decide_redis(&facts("always"), Durability::Check, 2, "r")
                .unwrap_err()
                .contains("redis_min_replicas")
        );
        let mut replica = facts("always");
        replica.role = "slave".into();
        assert!(
            decide_redis(&replica, Durability::Check, 0, "r")
                .unwrap_err()
                .contains("replica")
        );
    }

    #[test]
    fn postgres_sessions_without_durable_commits_are_refused() {
        assert!(decide_postgres("on", "on", Durability::Check).is_ok());
        assert!(decide_postgres("remote_apply", "on", Durability::Check).is_ok());
        let e = decide_postgres("off", "on", Durability::Check).unwrap_err();
        assert!(
            e.contains("synchronous_commit = off") && e.contains("postgres_durability"),
            "{e}"
        );
        assert!(
            decide_postgres("on", "off", Durability::Check)
                .unwrap_err()
                .contains("fsync = off")
        );
        assert!(decide_postgres("off", "off", Durability::UnsafeMayReissue).is_ok());
    }
}
