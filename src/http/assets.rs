//! The browser app: the files of `static/`, embedded into the binary and
//! served by it, so one binary is the whole deployment.
//!
//! Every asset is served under `/assets/{version}/…`, where `version` is a
//! digest of every embedded file: a release changes the path, so those
//! responses may be cached for a year. `index.html` names the current
//! version (its `{{ASSET_BASE}}` placeholder is filled in at start-up) and is
//! never cached without revalidation. Any other browser navigation that is
//! not an API route gets `index.html` too, and the app routes it itself.

use actix_web::http::header::{self, HeaderValue};
use std::borrow::Cow;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use rust_embed::Embed;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

#[derive(Embed)]
#[folder = "static/"]
#[exclude = "README.md"]
struct StaticFiles;

/// Where `index.html` names the versioned asset path.
const ASSET_BASE_PLACEHOLDER: &str = "{{ASSET_BASE}}";

/// Cache policy of an asset under the current version: it never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Cache policy of `index.html`, and of an asset asked for under another
/// version (during a rolling upgrade a replica may still be asked for the old
/// one): always revalidate.
const REVALIDATE: &str = "no-cache";

/// The app's own scripts, styles and the chart library; connections only to
/// this origin (REST and the WebSocket). The chart library sets inline
/// styles on the elements it creates.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The API reference page: Swagger UI's script sets inline styles and
/// draws its icons from `data:` URIs; it fetches this origin's
/// `/api/v1/openapi.json` and, on "Try it out", the API.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Pages served outside `/assets/` (their placeholders filled in).
const PAGES: [&str; 2] = ["index.html", "api-docs.html"];

/// An HTML page with `{{ASSET_BASE}}` filled in, and its tag.
struct Page {
    html: String,
    etag: String,
}

impl Page {
    fn load(name: &str, version: &str) -> Page {
        let template = StaticFiles::get(name)
            .map(|file| String::from_utf8_lossy(&file.data).into_owned())
            .unwrap_or_else(|| "<!doctype html><title>Matchday</title>".to_string());
        Page {
            html: template.replace(ASSET_BASE_PLACEHOLDER, &format!("/assets/{version}/")),
            etag: format!("\"{}-{version}\"", name.trim_end_matches(".html")),
        }
    }
}

/// The embedded app, with its version and its pages filled in.
pub struct Assets {
    version: String,
    index: Page,
    docs: Page,
}

impl Assets {
    /// Reads the embedded files once (from disk in debug builds) and names
    /// their version.
    pub fn load() -> Assets {
        let mut names: Vec<String> = StaticFiles::iter().map(|name| name.into_owned()).collect();
        names.sort();
        let mut digest = Sha256::new();
        for name in &names {
            if let Some(file) = StaticFiles::get(name) {
                digest.update(name.as_bytes());
                digest.update(file.metadata.sha256_hash());
            }
        }
        let version = hex(&digest.finalize()[..6]);
        Assets {
            index: Page::load("index.html", &version),
            docs: Page::load("api-docs.html", &version),
            version,
        }
    }

    /// The digest naming this build's assets.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn with_common_headers(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `If-None-Match` names `etag` (weak comparison: a proxy that compresses
/// may weaken a tag to `W/"…"`), or is `*`.
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
        })
}

fn page_response(req: &HttpRequest, page: &Page, policy: &'static str) -> HttpResponse {
    // For HEAD, actix sends the headers of this body (its length) and
    // drops the body itself.
    let mut response = if not_modified(req, &page.etag) {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(page.html.clone())
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    if let Ok(etag) = HeaderValue::from_str(&page.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    with_common_headers(&mut response);
    response
}

fn index_response(req: &HttpRequest, assets: &Assets) -> HttpResponse {
    page_response(req, &assets.index, CONTENT_SECURITY_POLICY)
}

/// `GET /api/v1/docs`: the API reference page.
pub fn docs_page(req: &HttpRequest, assets: &Assets) -> HttpResponse {
    page_response(req, &assets.docs, DOCS_CONTENT_SECURITY_POLICY)
}

/// `GET /`: the app.
pub async fn index(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    index_response(&req, &state.assets)
}

/// `GET /assets/{version}/{path}`: one embedded file.
pub async fn asset(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (version, name) = path.into_inner();
    let Some(file) = (!PAGES.contains(&name.as_str()))
        .then(|| StaticFiles::get(&name))
        .flatten()
    else {
        return ApiError::not_found("no such file").error_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..12]));
    let cache = if version == state.assets.version {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let mut response = if not_modified(&req, &etag) {
        HttpResponse::NotModified().finish()
    } else {
        let mime = file.metadata.mimetype();
        // RFC 9239: JavaScript is text/javascript, whatever the extension.
        let content_type = if mime.ends_with("javascript") {
            "text/javascript; charset=utf-8".to_string()
        } else if mime.starts_with("text/") {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
        let builder = &mut HttpResponse::Ok();
        builder.content_type(content_type);
        // Release builds embed the files as static bytes: send them as they are.
        match file.data {
            Cow::Borrowed(bytes) => builder.body(bytes),
            Cow::Owned(bytes) => builder.body(bytes),
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    with_common_headers(&mut response);
    response
}

/// Whether a request is a browser navigating to one of the app's own
/// routes (`/portfolio`, `/players/12`): a `GET` or `HEAD` that accepts
/// HTML, outside the API, for a path whose last segment names no file.
fn is_app_navigation(req: &HttpRequest) -> bool {
    let path = req.path();
    let method_ok = req.method() == Method::GET || req.method() == Method::HEAD;
    let accepts_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let api = path.starts_with("/api/") || path == "/api" || path.starts_with("/assets/");
    let names_file = path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'));
    method_ok && accepts_html && !api && !names_file
}

/// Every unmatched request: the app for a browser navigation, else the
/// JSON `404 not_found` of the API.
pub async fn fallback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if is_app_navigation(&req) {
        return index_response(&req, &state.assets);
    }
    ApiError::not_found("no such route").error_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_every_embedded_file_and_index_points_at_it() {
        let assets = Assets::load();
        assert_eq!(assets.version().len(), 12);
        for page in [&assets.index, &assets.docs] {
            assert!(page
                .html
                .contains(&format!("/assets/{}/", assets.version())));
            assert!(!page.html.contains(ASSET_BASE_PLACEHOLDER));
        }
        assert_ne!(assets.index.etag, assets.docs.etag);
        assert!(StaticFiles::get("app.js").is_some());
        assert!(StaticFiles::get("README.md").is_none());
    }
}
