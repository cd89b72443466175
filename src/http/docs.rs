//! `/docs`: the OpenAPI document as an interactive page (Swagger UI, vendored from the npm
//! registry under `src/http/docs/` and compiled into the binary: nothing is fetched from
//! elsewhere at run time). The only HTML trackd serves.

use super::response::{self, Body};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// Scripts and styles from this origin only (Swagger UI sets inline styles on its elements,
/// so styles allow them; scripts do not); requests to this origin only; never in a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const PAGE: Asset = Asset {
    name: "",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("docs/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "init.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("docs/init.js"),
    },
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("docs/swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        name: "swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("docs/swagger-ui/swagger-ui.css"),
    },
    Asset {
        name: "favicon-32x32.png",
        content_type: "image/png",
        bytes: include_bytes!("docs/swagger-ui/favicon-32x32.png"),
    },
];

/// The page (`asset` empty) or one of its files; `None` for any other name.
pub fn serve(asset: &str) -> Option<Response<Body>> {
    let a = if asset.is_empty() {
        &PAGE
    } else {
        ASSETS.iter().find(|a| a.name == asset)?
    };
    let mut r = response::bytes(
        StatusCode::OK,
        HeaderValue::from_static(a.content_type),
        bytes::Bytes::from_static(a.bytes),
    );
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The page follows the binary; its files change only with a new build.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if a.name.is_empty() {
            "no-cache"
        } else {
            "public, max-age=3600"
        }),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_and_nothing_else() {
        let page = serve("").unwrap();
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert!(
            page.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self';")
        );
        let html = std::str::from_utf8(PAGE.bytes).unwrap();
        // Every file the page names is served, and no script is inline.
        for a in ASSETS {
            if a.name.ends_with(".js") || a.name.ends_with(".css") {
                assert!(html.contains(&format!("/docs/{}", a.name)), "{}", a.name);
            }
            assert!(serve(a.name).is_some());
        }
        assert!(!html.contains("<script>"));
        assert!(serve("swagger-ui.css.map").is_none());
        assert!(serve("../Cargo.toml").is_none());
    }
}
