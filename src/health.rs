//! Readiness: a list of independent checks (tracking numbers today; serving policies joins
//! with one more [`ReadinessCheck`]), combined with the draining flag into `/readyz`'s answer.
//! Liveness (`/healthz`) needs no check: answering at all is the signal.

use crate::tracking::allocator::Allocator;
use serde_json::{Map, Value, json};

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
        let ok = buffered > 0 || healthy;
        CheckReport {
            ok,
            reason: (!ok).then(|| {
                format!(
                    "no numbers in hand and the {} sequence store is failing: {}",
                    a.store_kind(),
                    a.last_error().unwrap_or_else(|| "unknown error".into())
                )
            }),
            detail: json!({
                "store": a.store_kind(),
                "store_healthy": healthy,
                "buffered_numbers": buffered,
                "store_detail": a.store_report(),
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
