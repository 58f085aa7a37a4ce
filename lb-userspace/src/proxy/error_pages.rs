//! A listener's error pages: the page sent in place of the line of plain text of an error lbd
//! makes itself (nginx's `error_page`, HAProxy's `errorfile`). Backends' own errors pass as
//! they are; a route's fallback, its fixed answers and gRPC's refusals are not dressed.
use std::sync::Arc;

use bytes::Bytes;
use hyper::{
    Response,
    header::{self, HeaderValue},
};

use crate::proxy::{
    body::{Body, full},
    phase::respond::Plain,
    watched_file::WatchedFile,
};

/// One status's page: its type, and its file's contents as they are now.
struct Page {
    status: u16,
    content_type: HeaderValue,
    body: Arc<WatchedFile<Bytes>>,
}

/// A listener's pages, by status.
#[derive(Default)]
pub struct ErrorPages {
    pages: Vec<Page>,
}

/// What a page whose file cannot be read means until it is fixed.
pub const PLAIN_MEANWHILE: &str = "answering with plain text";

impl ErrorPages {
    pub fn new(pages: impl IntoIterator<Item = (u16, &'static str, Arc<WatchedFile<Bytes>>)>) -> ErrorPages {
        let pages = pages
            .into_iter()
            .map(|(status, content_type, body)| Page {
                status,
                content_type: HeaderValue::from_static(content_type),
                body,
            })
            .collect();
        ErrorPages { pages }
    }

    /// The page for `status`, its type and contents (None: no page, or its file holds nothing).
    pub fn page(&self, status: u16) -> Option<(&HeaderValue, Bytes)> {
        let page = self.pages.iter().find(|p| p.status == status)?;
        let body = Bytes::clone(&page.body.current());
        (!body.is_empty()).then_some((&page.content_type, body))
    }

    /// A backend's error answer (400 to 599) replaced by the page for its status, if there is
    /// one (a route's `intercept_errors`, nginx's `proxy_intercept_errors`): the status kept,
    /// the backend's fields and body dropped (its connection is not reused).
    pub fn intercept(&self, response: &mut Response<Body>) {
        let status = response.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return;
        }
        if let Some((content_type, body)) = self.page(status.as_u16()) {
            let mut page = Response::new(full(body));
            *page.status_mut() = status;
            *page.version_mut() = response.version();
            page.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
            *response = page;
        }
    }

    /// `response`'s text replaced by the page for its status, if it is lbd's own plain text
    /// (`respond::text`) and the listener has one; its other fields (`Retry-After`,
    /// `WWW-Authenticate`, `Connection`) stay.
    pub fn dress(&self, response: &mut Response<Body>) {
        if self.pages.is_empty() || response.extensions().get::<Plain>().is_none() {
            return;
        }
        if let Some((content_type, body)) = self.page(response.status().as_u16()) {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
            *response.body_mut() = full(body);
        }
    }
}
