//! The web dashboard: a few HTML pages and their CSS and JavaScript,
//! embedded in the binary (no CDN, nothing fetched from the internet, so it
//! works on an air-gapped host) and served beside the API.
//!
//! The pages hold no data and need no token: the browser fills them from the
//! API (`/api/procs`, `/api/hosts`, `/files`, `/api/stats`), asking the user
//! for an API token when the API answers 401. Pages are served `no-cache`
//! with an `ETag`; assets are linked as `?v=<content hash>` and cached for a
//! year under that name, so a new build is picked up at once.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{guard, web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

mod stats;

pub use stats::stats;

/// The page shell; `{{…}}` placeholders are filled once, at first use.
const SHELL: &str = include_str!("../../assets/shell.html");

/// The pages: (key, title, body fragment).
const PAGES: &[(&str, &str, &str)] = &[
    (
        "procs",
        "Processes",
        include_str!("../../assets/procs.html"),
    ),
    ("proc", "Process", include_str!("../../assets/proc.html")),
    ("hosts", "Hosts", include_str!("../../assets/hosts.html")),
    ("files", "Files", include_str!("../../assets/files.html")),
    (
        "missing",
        "Not found",
        include_str!("../../assets/missing.html"),
    ),
];

/// The static assets: (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../assets/favicon.svg"),
    ),
];

/// Only this origin's scripts, styles, images and API; no framing.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How long a hashed asset URL may be cached: its content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One rendered page.
struct Page {
    html: String,
    etag: String,
}

/// Everything served, rendered once.
struct Rendered {
    pages: Vec<(&'static str, Page)>,
    /// (name, content type, bytes, version hash).
    assets: Vec<(&'static str, &'static str, &'static [u8], String)>,
}

fn hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn rendered() -> &'static Rendered {
    static R: OnceLock<Rendered> = OnceLock::new();
    R.get_or_init(|| {
        let assets: Vec<_> = ASSETS
            .iter()
            .map(|(name, ctype, bytes)| (*name, *ctype, *bytes, hash(bytes)))
            .collect();
        let pages = PAGES
            .iter()
            .map(|(key, title, body)| {
                let mut html = SHELL
                    .replace("{{title}}", title)
                    .replace("{{page}}", key)
                    .replace("{{content}}", body);
                for (name, _, _, v) in &assets {
                    html = html.replace(&format!("{{{{v:{name}}}}}"), v);
                }
                for nav in ["procs", "hosts", "files"] {
                    let current = if *key == nav || (*key == "proc" && nav == "procs") {
                        " aria-current=\"page\""
                    } else {
                        ""
                    };
                    html = html.replace(&format!("{{{{nav:{nav}}}}}"), current);
                }
                let etag = format!("\"{}\"", hash(html.as_bytes()));
                (*key, Page { html, etag })
            })
            .collect();
        Rendered { pages, assets }
    })
}

/// Whether `If-None-Match` names this entity tag.
fn fresh(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn answer(
    req: &HttpRequest,
    status: StatusCode,
    ctype: &'static str,
    body: &'static [u8],
    etag: &str,
    cache: &'static str,
) -> HttpResponse {
    let not_modified = status == StatusCode::OK && fresh(req, etag);
    let mut resp = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::build(status)
    };
    resp.insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.insert_header((header::ETAG, v));
    }
    if ctype.starts_with("text/html") {
        resp.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    }
    if not_modified {
        return resp.finish();
    }
    resp.content_type(ctype).body(body)
}

fn page(req: &HttpRequest, key: &str, status: StatusCode) -> HttpResponse {
    let r = rendered();
    match r.pages.iter().find(|(k, _)| *k == key) {
        Some((_, p)) => answer(
            req,
            status,
            "text/html; charset=utf-8",
            p.html.as_bytes(),
            &p.etag,
            "no-cache",
        ),
        None => HttpResponse::InternalServerError().finish(),
    }
}

async fn procs_page(req: HttpRequest) -> HttpResponse {
    page(&req, "procs", StatusCode::OK)
}

async fn proc_page(req: HttpRequest) -> HttpResponse {
    let id_ok = req
        .match_info()
        .get("id")
        .is_some_and(|id| id.parse::<i64>().is_ok());
    if id_ok {
        page(&req, "proc", StatusCode::OK)
    } else {
        page(&req, "missing", StatusCode::NOT_FOUND)
    }
}

async fn hosts_page(req: HttpRequest) -> HttpResponse {
    page(&req, "hosts", StatusCode::OK)
}

async fn files_page(req: HttpRequest) -> HttpResponse {
    page(&req, "files", StatusCode::OK)
}

async fn missing_page(req: HttpRequest) -> HttpResponse {
    page(&req, "missing", StatusCode::NOT_FOUND)
}

async fn home(_req: HttpRequest) -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/"))
        .finish()
}

/// `/ui/assets/{name}[?v=HASH]`: cached for good when `v` is this build's hash.
async fn asset(req: HttpRequest) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some((_, ctype, bytes, version)) = rendered().assets.iter().find(|a| a.0 == name) else {
        return page(&req, "missing", StatusCode::NOT_FOUND);
    };
    let asked = crate::api::query(&req).get("v").cloned();
    let cache = if asked.as_deref() == Some(version.as_str()) {
        IMMUTABLE
    } else {
        "no-cache"
    };
    answer(
        &req,
        StatusCode::OK,
        ctype,
        bytes,
        &format!("\"{version}\""),
        cache,
    )
}

/// GET and HEAD (the body of a HEAD answer is dropped by the server).
fn read() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Registers the dashboard's pages and assets (the API's routes are
/// registered by [`crate::api::configure`], `/api/stats` among them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", read().to(procs_page))
        .route("/ui", read().to(home))
        .route("/ui/procs", read().to(home))
        .route("/ui/procs/{id}", read().to(proc_page))
        .route("/ui/hosts", read().to(hosts_page))
        .route("/ui/files", read().to(files_page))
        .route("/ui/assets/{name}", read().to(asset))
        .route("/ui/{rest:.*}", read().to(missing_page));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    async fn get(
        path: &str,
        etag: Option<&str>,
    ) -> (StatusCode, actix_web::http::header::HeaderMap, String) {
        let app = test::init_service(App::new().configure(configure)).await;
        let mut req = test::TestRequest::get().uri(path);
        if let Some(t) = etag {
            req = req.insert_header((header::IF_NONE_MATCH, t));
        }
        let resp = test::call_service(&app, req.to_request()).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = test::read_body(resp).await;
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn h<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[actix_web::test]
    async fn pages_are_html_that_revalidates() {
        for (path, page) in [
            ("/", "procs"),
            ("/ui/procs/42", "proc"),
            ("/ui/hosts", "hosts"),
            ("/ui/files", "files"),
        ] {
            let (s, headers, body) = get(path, None).await;
            assert_eq!(s, StatusCode::OK, "{path}");
            assert_eq!(h(&headers, "content-type"), "text/html; charset=utf-8");
            assert_eq!(h(&headers, "cache-control"), "no-cache");
            assert!(h(&headers, "content-security-policy").contains("script-src 'self'"));
            assert!(body.contains(&format!("data-page=\"{page}\"")), "{path}");
            assert!(!body.contains("{{"), "{path}: every placeholder is filled");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "no external URL"
            );
            let etag = h(&headers, "etag").to_owned();
            let (s, _, body) = get(path, Some(&etag)).await;
            assert_eq!(s, StatusCode::NOT_MODIFIED, "{path}");
            assert!(body.is_empty());
        }
        let (s, _, body) = get("/ui/procs/abc", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("data-page=\"missing\""));
        let (s, _, _) = get("/ui/nothing/here", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, headers, _) = get("/ui", None).await;
        assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(h(&headers, "location"), "/");
    }

    #[actix_web::test]
    async fn assets_have_types_and_are_immutable_under_their_hash() {
        let (_, _, html) = get("/", None).await;
        for (name, ctype) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let start = html
                .find(&format!("/ui/assets/{name}?v="))
                .unwrap_or_else(|| panic!("{name} is linked"));
            let link: String = html[start..].chars().take_while(|c| *c != '"').collect();
            let (s, headers, body) = get(&link, None).await;
            assert_eq!(s, StatusCode::OK, "{link}");
            assert_eq!(h(&headers, "content-type"), ctype);
            assert_eq!(h(&headers, "cache-control"), IMMUTABLE);
            assert_eq!(h(&headers, "x-content-type-options"), "nosniff");
            assert!(!body.is_empty());
            let (_, headers, _) = get(&format!("/ui/assets/{name}"), None).await;
            assert_eq!(h(&headers, "cache-control"), "no-cache", "unversioned");
        }
        let (s, _, _) = get("/ui/assets/nope.js", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
