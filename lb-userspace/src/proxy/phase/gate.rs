//! Gate: who may use a route: the client allow and deny lists, an API key, a JWT (whose verified
//! subject and claims, and only they, reach the backend in the route's subject and claim
//! headers), the rate limit, then
//! basic auth (after the rate limit, as nginx's `limit_req` comes before `auth_basic`: guesses
//! are limited before they are hashed).
use std::{net::IpAddr, sync::Arc};

use hyper::{
    HeaderMap, StatusCode, Uri,
    header::{self, HeaderValue},
};

use crate::proxy::{basic_auth::BasicAuth, phase::Refusal, routes::CompiledRoute};

/// Lets the request through or says why not; may set the JWT subject header.
pub fn admit(
    route: &CompiledRoute,
    headers: &mut HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> Result<(), Refusal> {
    if !route.admits(client) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "client address not allowed on this route"));
    }
    let runtime = &route.runtime;
    let mut api_key = None;
    if let Some(keys) = &runtime.api_keys {
        let key = keys.check(headers, uri).map_err(|(status, why)| Refusal::new(status, why))?;
        api_key = Some(key);
    }
    let mut subject = None;
    if let Some(jwt) = &runtime.jwt {
        let verified = jwt.check(headers).map_err(|(status, why)| {
            let mut refusal = Refusal::new(status, why);
            refusal
                .response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            refusal
        })?;
        subject = verified.subject;
        if let Some(name) = &jwt.subject_header {
            headers.remove(name);
            if let Some(value) = subject.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
                headers.insert(name.clone(), value);
            }
        }
        // Only the token says these: a client's own fields of these names go.
        for (name, value) in verified.fields {
            headers.remove(&name);
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
    if let Some(wait) = runtime.rate_limited(client, (api_key.as_deref(), subject.as_deref()), headers) {
        let mut refusal = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        refusal.response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Err(refusal);
    }
    Ok(())
}

/// Lets the request through if its user and password are right, and names the user; the user's
/// name, and only it, reaches the backend in the route's user header.
pub async fn logged_in(auth: &BasicAuth, headers: &mut HeaderMap) -> Result<Arc<str>, Refusal> {
    let user = auth.check(headers).await.map_err(|(status, why)| {
        let mut refusal = Refusal::new(status, why);
        let headers = refusal.response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                drop(headers.insert(header::WWW_AUTHENTICATE, auth.challenge.clone()))
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                drop(headers.insert(header::RETRY_AFTER, HeaderValue::from(1)))
            }
            _ => {}
        }
        refusal
    })?;
    if let Some(name) = &auth.user_header {
        headers.remove(name);
        if let Ok(value) = HeaderValue::from_str(&user) {
            headers.insert(name.clone(), value);
        }
    }
    Ok(user)
}
