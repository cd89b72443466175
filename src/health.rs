//! Health: readiness is a list of independent checks (tracking numbers, records, policies),
//! combined with the draining flag into `/readyz`'s answer; liveness (`/healthz`) fails only
//! when a supervised actor is gone for good (its supervisor gave up restarting it), since then
//! only a new process helps.

use crate::policy::PolicyCache;
use crate::records::writer::{Mode, Recorder};
use crate::supervise::Health;
use crate::tracking::allocator::Allocator;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The outcome of one check.
pub struct CheckReport {
    pub ok: bool,
    /// Why it is not ok, in one line for people (`None` when ok).
    pub reason: Option<String>,
    /// Details shown under `checks.<name>` in `/readyz`.
    pub detail: Value,
}

/// One condition the instance needs to serve traffic. Must be cheap: it runs on every probe.
pub trait ReadinessCheck: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn check(&self) -> CheckReport;
}

/// All readiness checks of an application.
#[derive(Default)]
pub struct Readiness {
    checks: Vec<Box<dyn ReadinessCheck>>,
}

/// The combined answer.
pub struct Verdict {
    pub ready: bool,
    pub body: Value,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, check: impl ReadinessCheck) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Runs every check; ready when all pass and the server is not draining.
    pub fn evaluate(&self, draining: bool) -> Verdict {
        let mut reasons = Vec::new();
        if draining {
            reasons.push("draining: shutting down".to_owned());
        }
        let mut checks = Map::new();
        for c in &self.checks {
            let r = c.check();
            if !r.ok {
                reasons.push(format!(
                    "{}: {}",
                    c.name(),
                    r.reason.as_deref().unwrap_or("not ready")
                ));
            }
            let mut detail = match r.detail {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                other => Map::from_iter([("detail".to_owned(), other)]),
            };
            detail.insert("ok".into(), Value::Bool(r.ok));
            checks.insert(c.name().to_owned(), Value::Object(detail));
        }
        let ready = reasons.is_empty();
        let mut body = json!({
            "status": if ready { "ready" } else { "not ready" },
            "draining": draining,
            "checks": checks,
        });
        if !ready {
            body["detail"] = Value::String(reasons.join("; "));
            body["reasons"] = json!(reasons);
        }
        Verdict { ready, body }
    }
}

/// Tracking numbers can be issued: numbers are in hand, or the sequence store answers.
pub struct TrackingReadiness(pub Allocator);

impl ReadinessCheck for TrackingReadiness {
    fn name(&self) -> &'static str {
        "tracking"
    }

    fn check(&self) -> CheckReport {
        let a = &self.0;
        let buffered = a.buffered();
        let healthy = a.store_healthy();
        let given_up = a.health().given_up();
        let ok = a.is_ready();
        CheckReport {
            ok,
            reason: (!ok).then(|| match &given_up {
                Some(why) => why.clone(),
                None => format!(
                    "no numbers in hand and the {} sequence store is failing: {}",
                    a.store_kind(),
                    a.last_error().unwrap_or_else(|| "unknown error".into())
                ),
            }),
            detail: json!({
                "store": a.store_kind(),
                "store_healthy": healthy,
                "buffered_numbers": buffered,
                "allocator_restarts": a.health().restarts(),
                "store_detail": a.store_report(),
            }),
        }
    }
}

/// Issued numbers are being recorded: the record writer is not failing.
pub struct RecordsReadiness {
    pub recorder: Option<Arc<Recorder>>,
    /// Where idempotency keys live (shown, not checked: a failing key store answers 503 per
    /// request that carries a key).
    pub idempotency: &'static str,
}

impl ReadinessCheck for RecordsReadiness {
    fn name(&self) -> &'static str {
        "records"
    }

    fn check(&self) -> CheckReport {
        let Some(r) = &self.recorder else {
            return CheckReport {
                ok: true,
                reason: None,
                detail: json!({"mode": "off", "idempotency_store": self.idempotency}),
            };
        };
        let error = r.last_error();
        CheckReport {
            ok: error.is_none(),
            reason: error
                .as_ref()
                .map(|e| format!("writing records to the {} store fails: {e}", r.sink_kind())),
            detail: json!({
                "mode": if r.mode() == Mode::Durable { "durable" } else { "async" },
                "store": r.sink_kind(),
                "queued": r.stats().queued.load(Ordering::Relaxed),
                "written": r.stats().written.load(Ordering::Relaxed),
                "error": error,
                "store_detail": r.sink_report(),
                "idempotency_store": self.idempotency,
            }),
        }
    }
}

/// Whether the process is alive: every supervised actor still runs (or is being restarted).
#[derive(Default)]
pub struct Liveness {
    actors: Vec<Arc<Health>>,
}

impl Liveness {
    pub fn new(actors: impl IntoIterator<Item = Arc<Health>>) -> Self {
        Self {
            actors: actors.into_iter().collect(),
        }
    }

    /// `Err(reasons)` once any supervised actor is gone for good.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let dead: Vec<String> = self.actors.iter().filter_map(|h| h.given_up()).collect();
        if dead.is_empty() { Ok(()) } else { Err(dead) }
    }
}

/// Policies can be served: a snapshot is loaded (a failed refresh keeps serving the last one).
pub struct PolicyReadiness(pub Arc<PolicyCache>);

impl ReadinessCheck for PolicyReadiness {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn check(&self) -> CheckReport {
        let cache = &self.0;
        let ok = cache.is_ready();
        let counts = cache.current().map(|s| s.counts()).unwrap_or_default();
        CheckReport {
            ok,
            reason: (!ok).then(|| {
                format!(
                    "the policy cache is not loaded yet: {}",
                    cache.last_error().unwrap_or_else(|| "loading".into())
                )
            }),
            detail: json!({
                "source": cache.source(),
                "users": counts.users,
                "user_policies": counts.user_policies,
                "last_error": cache.last_error(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn check(&self) -> CheckReport {
            CheckReport {
                ok: self.0,
                reason: (!self.0).then(|| "switched off".into()),
                detail: Value::Null,
            }
        }
    }

    #[test]
    fn all_checks_and_draining_must_pass() {
        let v = Readiness::new().with(Fixed(true)).evaluate(false);
        assert!(v.ready);
        assert_eq!(v.body["checks"]["fixed"]["ok"], true);
        assert!(v.body.get("detail").is_none());

        let v = Readiness::new().with(Fixed(true)).evaluate(true);
        assert!(!v.ready);
        assert!(v.body["detail"].as_str().unwrap().contains("draining"));

        let v = Readiness::new()
            .with(Fixed(true))
            .with(Fixed(false))
            .evaluate(false);
        assert!(!v.ready);
        assert_eq!(v.body["reasons"][0], "fixed: switched off");
    }
}
