//! The route table: a request's path is parsed once into a [`Route`], which then serves for
//! dispatch, the method check and the metrics label (its template).

use super::error::Shape;
use crate::auth::Scope;
use hyper::Method;

/// Every route trackd answers, with the parts of the path it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'p> {
    NextTrackingNumber,
    IssueRun,
    /// `/api/tracking-numbers/<number>`: the number as sent.
    Lookup(&'p str),
    /// `/api/tracking-numbers/<number>/void`.
    Void(&'p str),
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    /// `/docs` (the page: empty) and `/docs/<file>`.
    Docs(&'p str),
    UserList,
    UserPolicy(&'p str),
    PolicyDetail(&'p str),
    /// `user_policy_dump/<user_id>/<format>/`.
    Dump(&'p str, &'p str),
    Unmatched,
}

/// Route templates, the only values of the `route` metrics label, indexed by
/// [`Route::index`]; the last one covers every path that matches no route.
pub const TEMPLATES: &[&str] = &[
    "/api/next-tracking-number/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/customer_insurance/user_list/",
    "/customer_insurance/user_policy/{user_id}/",
    "/customer_insurance/policy_detail/{policy_id}/",
    "/customer_insurance/user_policy_dump/{user_id}/{format}/",
    "/api/tracking-numbers",
    "/api/tracking-numbers/{tracking_number}",
    "/api/tracking-numbers/{tracking_number}/void",
    "/docs",
    UNMATCHED,
];
pub const UNMATCHED: &str = "unmatched";

/// The prefix of the customer-insurance routes.
pub const POLICY_PREFIX: &str = "/customer_insurance/";

impl<'p> Route<'p> {
    /// The route of `path` (with or without its trailing slash: the same resource).
    pub fn parse(path: &'p str) -> Self {
        let p = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        match p {
            "/api/next-tracking-number" => Route::NextTrackingNumber,
            "/api/tracking-numbers" => Route::IssueRun,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            "/docs" => Route::Docs(""),
            _ => {
                if let Some(n) = p.strip_prefix("/api/tracking-numbers/") {
                    match n.strip_suffix("/void") {
                        Some(n) => Route::Void(n),
                        None => Route::Lookup(n),
                    }
                } else if let Some(file) = p.strip_prefix("/docs/") {
                    Route::Docs(file)
                } else if let Some(rest) = p.strip_prefix(POLICY_PREFIX) {
                    Self::policy(rest)
                } else {
                    Route::Unmatched
                }
            }
        }
    }

    fn policy(rest: &'p str) -> Self {
        let mut it = rest.split('/');
        let r = match (it.next(), it.next(), it.next()) {
            (Some("user_list"), None, _) => Route::UserList,
            (Some("user_policy"), Some(id), None) => Route::UserPolicy(id),
            (Some("policy_detail"), Some(id), None) => Route::PolicyDetail(id),
            (Some("user_policy_dump"), Some(id), Some(f)) => Route::Dump(id, f),
            _ => return Route::Unmatched,
        };
        if it.next().is_some() {
            return Route::Unmatched;
        }
        r
    }

    /// Index of the route's template in [`TEMPLATES`].
    pub fn index(&self) -> usize {
        match self {
            Route::NextTrackingNumber => 0,
            Route::Healthz => 1,
            Route::Readyz => 2,
            Route::Metrics => 3,
            Route::OpenApi => 4,
            Route::UserList => 5,
            Route::UserPolicy(_) => 6,
            Route::PolicyDetail(_) => 7,
            Route::Dump(..) => 8,
            Route::IssueRun => 9,
            Route::Lookup(_) => 10,
            Route::Void(_) => 11,
            Route::Docs(_) => 12,
            Route::Unmatched => TEMPLATES.len() - 1,
        }
    }

    pub fn template(&self) -> &'static str {
        TEMPLATES[self.index()]
    }

    /// The methods the route answers, as the `Allow` header of a 405 lists them.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::NextTrackingNumber => "GET",
            Route::IssueRun | Route::Void(_) => "POST",
            _ => "GET, HEAD",
        }
    }

    /// The scope a key needs for the route (`None`: no key needed).
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Route::NextTrackingNumber | Route::IssueRun => Some(Scope::Issue),
            Route::Lookup(_) => Some(Scope::Lookup),
            Route::Void(_) => Some(Scope::Void),
            Route::UserList | Route::UserPolicy(_) | Route::PolicyDetail(_) | Route::Dump(..) => {
                Some(Scope::Policy)
            }
            Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::OpenApi
            | Route::Docs(_)
            | Route::Unmatched => None,
        }
    }

    /// The error shape of the route's family.
    pub fn shape(&self) -> Shape {
        match self.scope() {
            Some(Scope::Policy) => Shape::Envelope,
            _ => Shape::Detail,
        }
    }

    /// Whether the route answers `method` (HEAD wherever GET is read-only: hyper drops the
    /// body of a HEAD response).
    pub fn allows(&self, method: &Method) -> bool {
        match self {
            Route::NextTrackingNumber => method == Method::GET,
            Route::IssueRun | Route::Void(_) => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes_and_templates_never_to_ids() {
        let t = |p| Route::parse(p).template();
        assert_eq!(
            t("/api/next-tracking-number/"),
            "/api/next-tracking-number/"
        );
        assert_eq!(t("/api/next-tracking-number"), "/api/next-tracking-number/");
        assert_eq!(t("/metrics"), "/metrics");
        assert_eq!(t("/metrics/"), "/metrics");
        assert_eq!(
            Route::parse("/customer_insurance/user_policy/42/"),
            Route::UserPolicy("42")
        );
        assert_eq!(
            t("/customer_insurance/user_policy/42/"),
            "/customer_insurance/user_policy/{user_id}/"
        );
        assert_eq!(
            Route::parse("/customer_insurance/user_policy_dump/42/CSV"),
            Route::Dump("42", "CSV")
        );
        assert_eq!(
            t("/customer_insurance/policy_detail/7/"),
            "/customer_insurance/policy_detail/{policy_id}/"
        );
        assert_eq!(
            Route::parse("/customer_insurance/user_list"),
            Route::UserList
        );
        for unmatched in [
            "/customer_insurance/user_policy/1/2/3",
            "/customer_insurance/user_list/4",
            "/customer_insurance/user_policy",
            "/customer_insurance/user_policy_dump/1",
            "/customer_insurance/user_policy_dump/1/csv/x",
            "/customer_insurance/nope",
            "/MYID7K2Q9XW4LB0T",
            "/",
        ] {
            assert_eq!(Route::parse(unmatched), Route::Unmatched, "{unmatched}");
            assert_eq!(t(unmatched), UNMATCHED);
        }
        assert_eq!(Route::parse("/api/tracking-numbers/"), Route::IssueRun);
        assert_eq!(
            Route::parse("/api/tracking-numbers/MYID7K2Q9XW4LB0T"),
            Route::Lookup("MYID7K2Q9XW4LB0T")
        );
        assert_eq!(
            t("/api/tracking-numbers/MYID7K2Q9XW4LB0T"),
            "/api/tracking-numbers/{tracking_number}"
        );
        assert_eq!(
            Route::parse("/api/tracking-numbers/MYID7K2Q9XW4LB0T/void"),
            Route::Void("MYID7K2Q9XW4LB0T")
        );
        assert_eq!(
            t("/api/tracking-numbers/MYID7K2Q9XW4LB0T/void/"),
            "/api/tracking-numbers/{tracking_number}/void"
        );
        assert_eq!(Route::parse("/docs/"), Route::Docs(""));
        assert_eq!(Route::parse("/docs/init.js"), Route::Docs("init.js"));
        assert_eq!(t("/docs/swagger-ui.css"), "/docs");
    }

    #[test]
    fn methods_follow_the_route() {
        assert!(Route::NextTrackingNumber.allows(&Method::GET));
        assert!(!Route::NextTrackingNumber.allows(&Method::HEAD));
        assert!(Route::IssueRun.allows(&Method::POST));
        assert!(!Route::IssueRun.allows(&Method::GET));
        assert!(Route::Metrics.allows(&Method::HEAD));
        assert!(!Route::Metrics.allows(&Method::DELETE));
        assert_eq!(Route::UserList.allow(), "GET, HEAD");
        assert!(Route::Void("x").allows(&Method::POST));
        assert!(!Route::Void("x").allows(&Method::GET));
    }
}
