//! Gate: who may use a route: the client allow and deny lists, an API key, a JWT (whose verified
//! subject and claims, and only they, reach the backend in the route's subject and claim
//! headers), the rate limit, then
//! basic auth (after the rate limit, as nginx's `limit_req` comes before `auth_basic`: guesses
//! are limited before they are hashed).
use std::{net::IpAddr, sync::Arc};

use hyper::{
    HeaderMap, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};

use crate::proxy::{basic_auth::BasicAuth, phase::Refusal, routes::CompiledRoute, runtime::Allowance};

/// Lets the request through or says why not; may set the JWT subject header. Let through: what
/// the route's rate limit tells the client with its answer (`headers = true`), if anything.
pub fn admit(
    route: &CompiledRoute,
    headers: &mut HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> Result<Option<Allowance>, Refusal> {
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
    let Some(allowance) = runtime.rate_limited(client, (api_key.as_deref(), subject.as_deref()), headers)
    else {
        return Ok(None);
    };
    if !allowance.allowed {
        let mut refusal = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        let fields = refusal.response.headers_mut();
        fields.insert(header::RETRY_AFTER, HeaderValue::from(allowance.reset_s));
        tell(fields, &allowance);
        return Err(refusal);
    }
    Ok(Some(allowance).filter(|a| a.told))
}

/// The client's bucket as the IETF draft's fields say it (`RateLimit-Limit`, `-Remaining`,
/// `-Reset`; Kong sends these), on a route whose limit tells.
pub fn tell(fields: &mut HeaderMap, allowance: &Allowance) {
    if allowance.told {
        fields.insert(RATELIMIT_LIMIT, HeaderValue::from(allowance.limit));
        fields.insert(RATELIMIT_REMAINING, HeaderValue::from(allowance.remaining));
        fields.insert(RATELIMIT_RESET, HeaderValue::from(allowance.reset_s));
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

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
    use crate::{config::Config, proxy::snapshot::Snapshot, state::State};

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

    /// A route limited to 1 request a second, bursts of 3, whose limit tells its clients or not.
    fn limited(told: bool) -> Snapshot {
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n\
             rate_limit = {{ requests_per_second = 1, burst = 3, headers = {told} }}\n"
        );
        Snapshot::build(&State::new(Config::parse(Path::new("t.toml"), &text).unwrap()), &Default::default())
    }

    #[test]
    fn a_limit_that_tells_gives_each_answer_the_clients_bucket() {
        let snapshot = limited(true);
        let route = &snapshot.routes["l"][0];
        let (uri, client) = ("/".parse::<Uri>().unwrap(), "192.0.2.1".parse().unwrap());
        for (remaining, reset_s) in [(2, 1), (1, 2), (0, 3)] {
            let allowance = admit(route, &mut HeaderMap::new(), &uri, client).ok().flatten().unwrap();
            assert_eq!((allowance.limit, allowance.remaining, allowance.reset_s), (3, remaining, reset_s));
            let mut fields = HeaderMap::new();
            tell(&mut fields, &allowance);
            let said = |name: &str| fields[name].to_str().unwrap().to_owned();
            let expected = (3.to_string(), remaining.to_string(), reset_s.to_string());
            assert_eq!(
                (said("ratelimit-limit"), said("ratelimit-remaining"), said("ratelimit-reset")),
                expected
            );
        }
        let refused = admit(route, &mut HeaderMap::new(), &uri, client).err().unwrap();
        let fields = refused.response.headers();
        assert_eq!(refused.response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (&fields["retry-after"], &fields["ratelimit-remaining"]),
            (&"1".parse::<HeaderValue>().unwrap(), &"0".parse::<HeaderValue>().unwrap())
        );
        // Another client's bucket is full.
        let other =
            admit(route, &mut HeaderMap::new(), &uri, "192.0.2.2".parse().unwrap()).ok().flatten().unwrap();
        assert_eq!(other.remaining, 2);
        // A limit that does not tell: nothing to add, and a 429 with Retry-After alone.
        let snapshot = limited(false);
        let route = &snapshot.routes["l"][0];
        assert!(matches!(admit(route, &mut HeaderMap::new(), &uri, client), Ok(None)));
        for _ in 0..2 {
            assert!(admit(route, &mut HeaderMap::new(), &uri, client).is_ok());
        }
        let refused = admit(route, &mut HeaderMap::new(), &uri, client).err().unwrap();
        assert!(refused.response.headers().contains_key("retry-after"));
        assert!(!refused.response.headers().contains_key("ratelimit-remaining"));
    }
}
