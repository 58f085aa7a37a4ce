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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::Config, proxy::routes::Snapshot, state::State};

    /// A route whose JWT's `tenant` claim goes in X-Tenant, limited per X-Tenant (burst 1).
    fn snapshot() -> Snapshot {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n\
             jwt = { algorithm = \"HS256\", secret = \"s3cret\", claim_headers = { tenant = \"x-tenant\" } }\n\
             rate_limit = { requests_per_second = 0.01, burst = 1, key = \"header\", header = \"x-tenant\" }\n";
        let config = Config::parse(Path::new("t.toml"), text).unwrap();
        Snapshot::build(&State::new(config), &Default::default())
    }

    /// A request of tenant `tenant` that also says `X-Tenant: claimed` itself.
    fn request(tenant: &str, claimed: &str) -> HeaderMap {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = serde_json::json!({ "sub": "u", "exp": exp, "tenant": tenant });
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers.insert("x-tenant", claimed.parse().unwrap());
        headers
    }

    /// The claim header is set before the rate limit is counted: a limit by that field counts
    /// by the verified claim, whatever the client wrote in it.
    #[test]
    fn a_limit_by_a_claims_field_counts_the_verified_claim() {
        let snapshot = snapshot();
        let route = &snapshot.routes["l"][0];
        let (uri, client) = ("/".parse::<Uri>().unwrap(), "192.0.2.1".parse().unwrap());
        let mut first = request("acme", "globex");
        assert!(admit(route, &mut first, &uri, client).is_ok());
        assert_eq!(first["x-tenant"], "acme", "the backend gets the claim");
        // acme's burst is spent, whatever the field says; globex has its own.
        let refused = admit(route, &mut request("acme", "globex"), &uri, client).err().unwrap();
        assert_eq!(refused.response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(admit(route, &mut request("globex", "acme"), &uri, client).is_ok());
    }
}
