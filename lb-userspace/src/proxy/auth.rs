//! Route access by credentials: API keys (header or query parameter, keys from a file that is
//! re-read when it changes) and JWTs (HMAC, RSA, PSS, ECDSA, Ed25519; `exp`, `nbf`, `iss`,
//! `aud` checked; one key, or a JWK Set from a file or an identity provider's URL, chosen by
//! the token's `kid`).
use std::collections::HashSet;
#[cfg(test)]
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{
    HeaderMap, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};

use crate::{
    config::{ApiKeyConfig, JwtConfig},
    jwk_set::KeySet,
    proxy::{
        jwks_fetch::{RemoteKeys, RemoteKeysError},
        watched_file::{self, WatchedFile},
    },
};

/// Why a request was refused: status and a body that says what to fix.
pub type Refusal = (StatusCode, &'static str);

/// API keys from a file, one per line (`#` comments), read again when it changes.
pub struct ApiKeys {
    config: ApiKeyConfig,
    keys: WatchedFile<HashSet<String>>,
}

fn parse_keys(text: &str) -> Result<HashSet<String>, String> {
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

impl ApiKeys {
    pub fn new(config: ApiKeyConfig) -> ApiKeys {
        let keys = WatchedFile::new(config.file.clone(), "API keys", parse_keys, watched_file::REFUSING);
        ApiKeys { config, keys }
    }

    /// The query parameter keys are presented in, if not a header.
    pub fn query_param(&self) -> Option<&str> {
        match (&self.config.header, &self.config.query) {
            (None, Some(param)) => Some(param),
            _ => None,
        }
    }

    /// The request's key if it is known.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<String, Refusal> {
        let presented = match (&self.config.header, &self.config.query) {
            (Some(name), _) => headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned),
            (None, Some(param)) => uri.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    pair.split_once('=').filter(|(k, _)| k == param).map(|(_, v)| v.to_owned())
                })
            }),
            (None, None) => None,
        };
        let Some(key) = presented else { return Err((StatusCode::UNAUTHORIZED, "API key required")) };
        if self.keys.current().contains(&key) {
            Ok(key)
        } else {
            Err((StatusCode::FORBIDDEN, "API key not accepted"))
        }
    }
}

/// A JWT verifier for one route.
pub struct Jwt {
    keys: Keys,
    algorithm: Algorithm,
    validation: Validation,
    subject_header: Option<hyper::header::HeaderName>,
    /// The claims passed to the backend, each in its header (`claim_headers`).
    claim_headers: Vec<(String, HeaderName)>,
}

/// What a verified token tells the backend: its subject, and the fields it sets (the subject's
/// header, then those of `claim_headers`; each a client may not set itself).
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub subject: Option<String>,
    /// Each field's name, and its value: the subject, or the claim where the token has it as
    /// text, a number, a boolean, or a list of those (joined with `,`); None: the field is only
    /// taken away.
    pub fields: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// Where a route's JWT keys come from.
enum Keys {
    /// `secret` or `key_file`.
    One(DecodingKey),
    /// `jwks_file`, re-read when it changes.
    File(WatchedFile<KeySet>),
    /// `jwks_url`.
    Remote(std::sync::Arc<RemoteKeys>),
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// A token's claims, all of them (read only for a route with `claim_headers`).
#[derive(serde::Deserialize)]
struct AllClaims {
    sub: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Why a route's JWT check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(transparent)]
    Key(#[from] crate::config::JwtKeyError),
    #[error("`{0}` is not a header name")]
    HeaderName(String),
    #[error(transparent)]
    Remote(#[from] RemoteKeysError),
}

impl Jwt {
    /// The check `config` asks for; the error says what is wrong with it.
    pub fn new(config: &JwtConfig) -> Result<Jwt, JwtError> {
        let algorithm = config.algorithm.library();
        let keys = match (&config.jwks_file, &config.jwks_url) {
            (Some(file), _) => {
                Keys::File(WatchedFile::new(file.clone(), "JWK Set", KeySet::parse, watched_file::REFUSING))
            }
            (None, Some(url)) => {
                Keys::Remote(RemoteKeys::new(url, config.jwks_ca.as_deref(), config.jwks_refresh())?)
            }
            (None, None) => Keys::One(config.decoding_key()?),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 0;
        // `exp` is always required; `iss` and `aud` are required (not only checked when
        // present) once the route names them.
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match config.audience.is_empty() {
            false => {
                validation.set_audience(&config.audience);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            true => validation.validate_aud = false,
        }
        let header = |name: &String| {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| JwtError::HeaderName(name.clone()))
        };
        let subject_header = config.subject_header.as_ref().map(header).transpose()?;
        let claim_headers = config
            .claim_headers
            .iter()
            .map(|(claim, name)| Ok((claim.clone(), header(name)?)))
            .collect::<Result<_, JwtError>>()?;
        Ok(Jwt { keys, algorithm, validation, subject_header, claim_headers })
    }

    /// What the bearer token tells the backend, if it is valid.
    pub fn check(&self, headers: &HeaderMap) -> Result<Verified, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or((StatusCode::UNAUTHORIZED, "bearer token required"))?;
        let set = match &self.keys {
            Keys::One(key) => return self.verify(token, [key]),
            Keys::File(file) => file.current(),
            Keys::Remote(remote) => {
                let set = remote.current();
                if !remote.fetched() {
                    return Err((StatusCode::SERVICE_UNAVAILABLE, "token keys not fetched yet"));
                }
                set
            }
        };
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|header| header.kid);
        let mut keys = set.candidates(self.algorithm, kid.as_deref()).peekable();
        if keys.peek().is_none() {
            if let (Keys::Remote(remote), Some(_)) = (&self.keys, &kid) {
                remote.unknown_key();
            }
            return Err((StatusCode::UNAUTHORIZED, "token key unknown"));
        }
        self.verify(token, keys)
    }

    /// What the token tells if one of `keys` verifies it (a bad signature tries the next key: a
    /// token without a `kid` may be any key's); else why not, as the last key said.
    fn verify<'a>(
        &self,
        token: &str,
        keys: impl IntoIterator<Item = &'a DecodingKey>,
    ) -> Result<Verified, Refusal> {
        let mut refused = (StatusCode::UNAUTHORIZED, "token key unknown");
        for key in keys {
            let verified = match self.claim_headers.is_empty() {
                true => jsonwebtoken::decode::<Claims>(token, key, &self.validation)
                    .map(|data| Verified { subject: data.claims.sub, fields: Vec::new() }),
                false => jsonwebtoken::decode::<AllClaims>(token, key, &self.validation).map(|data| {
                    let fields = self
                        .claim_headers
                        .iter()
                        .map(|(claim, name)| {
                            (name.clone(), data.claims.rest.get(claim).and_then(claim_value))
                        })
                        .collect();
                    Verified { subject: data.claims.sub, fields }
                }),
            };
            match verified {
                Ok(mut verified) => {
                    if let Some(name) = &self.subject_header {
                        let value = verified.subject.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
                        verified.fields.push((name.clone(), value));
                    }
                    return Ok(verified);
                }
                Err(err) if *err.kind() == ErrorKind::InvalidSignature => refused = refusal(&err),
                Err(err) => return Err(refusal(&err)),
            }
        }
        Err(refused)
    }
}

/// A claim as a header value: text as it is, a number or a boolean as JSON writes it, a list
/// of those joined with `,`; None for anything else (an object, null) or a value no header
/// may carry (a control character).
fn claim_value(claim: &serde_json::Value) -> Option<HeaderValue> {
    use serde_json::Value;
    let scalar = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    };
    let text = match claim {
        Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        other => scalar(other)?,
    };
    HeaderValue::from_str(&text).ok()
}

/// What a client is told of a token the library refused.
fn refusal(err: &jsonwebtoken::errors::Error) -> Refusal {
    match err.kind() {
        ErrorKind::ExpiredSignature => (StatusCode::UNAUTHORIZED, "token expired"),
        ErrorKind::ImmatureSignature => (StatusCode::UNAUTHORIZED, "token not valid yet"),
        ErrorKind::InvalidIssuer => (StatusCode::FORBIDDEN, "token issuer not accepted"),
        ErrorKind::InvalidAudience => (StatusCode::FORBIDDEN, "token audience not accepted"),
        ErrorKind::InvalidSignature => (StatusCode::UNAUTHORIZED, "token signature invalid"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
            (StatusCode::FORBIDDEN, "token has no issuer")
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            (StatusCode::FORBIDDEN, "token has no audience")
        }
        ErrorKind::MissingRequiredClaim(_) => (StatusCode::UNAUTHORIZED, "token lacks a required claim"),
        _ => (StatusCode::UNAUTHORIZED, "token invalid"),
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(issuer: Option<&str>, audience: Option<&str>) -> Jwt {
        let (issuer, audience) =
            (issuer.map(str::to_owned), audience.into_iter().map(str::to_owned).collect());
        Jwt::new(&JwtConfig { issuer, audience, ..jwt_config() }).unwrap()
    }

    /// The subject of a token `verifier` lets in.
    fn subject(verifier: &Jwt, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        verifier.check(headers).map(|verified| verified.subject)
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
            .unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn exp() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let verifier = jwt(None, None);
        let t = token(serde_json::json!({ "sub": "ann", "exp": exp() }));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(
                subject(&verifier, &headers(&format!("{scheme} {t}"))),
                Ok(Some("ann".into())),
                "{scheme}"
            );
        }
        assert!(subject(&verifier, &headers(&format!("Basic {t}"))).is_err());
    }

    #[test]
    fn a_configured_issuer_or_audience_is_required() {
        let verifier = jwt(Some("idp"), Some("api"));
        let all = token(serde_json::json!({ "exp": exp(), "iss": "idp", "aud": "api" }));
        assert!(subject(&verifier, &headers(&format!("Bearer {all}"))).is_ok());
        let no_iss = token(serde_json::json!({ "exp": exp(), "aud": "api" }));
        assert_eq!(
            subject(&verifier, &headers(&format!("Bearer {no_iss}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let no_aud = token(serde_json::json!({ "exp": exp(), "iss": "idp" }));
        assert_eq!(
            subject(&verifier, &headers(&format!("Bearer {no_aud}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let wrong = token(serde_json::json!({ "exp": exp(), "iss": "other", "aud": "api" }));
        assert_eq!(
            subject(&verifier, &headers(&format!("Bearer {wrong}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_token_for_any_of_the_routes_audiences_passes() {
        let verifier =
            Jwt::new(&JwtConfig { audience: vec!["api".into(), "admin".into()], ..jwt_config() }).unwrap();
        for aud in [serde_json::json!("admin"), serde_json::json!(["web", "api"])] {
            let t = token(serde_json::json!({ "exp": exp(), "aud": aud }));
            assert!(subject(&verifier, &headers(&format!("Bearer {t}"))).is_ok(), "{aud}");
        }
        let t = token(serde_json::json!({ "exp": exp(), "aud": ["web"] }));
        let refused = subject(&verifier, &headers(&format!("Bearer {t}")));
        assert_eq!(refused, Err((StatusCode::FORBIDDEN, "token audience not accepted")));
    }

    #[test]
    fn exp_is_required() {
        let verifier = jwt(None, None);
        let t = token(serde_json::json!({ "sub": "ann" }));
        assert_eq!(
            subject(&verifier, &headers(&format!("Bearer {t}"))).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }

    /// A new ES256 key: its signing key, and its public half as a JWK named `kid`.
    fn es256(kid: &str) -> (jsonwebtoken::EncodingKey, String) {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let point = key.public_key_raw(); // 0x04, then x and y
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}}"#,
            b64(&point[1..33]),
            b64(&point[33..65])
        );
        (jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(), jwk)
    }

    /// A bearer token for `sub`, signed with `key`, its header naming `kid`.
    fn bearer(key: &jsonwebtoken::EncodingKey, kid: Option<&str>, sub: &str) -> HeaderMap {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({ "sub": sub, "exp": exp() });
        headers(&format!("Bearer {}", jsonwebtoken::encode(&header, &claims, key).unwrap()))
    }

    fn jwks(keys: &[&str]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    fn es256_config() -> JwtConfig {
        JwtConfig { algorithm: crate::config::JwtAlgorithm::ES256, secret: None, ..jwt_config() }
    }

    fn jwt_config() -> JwtConfig {
        JwtConfig {
            algorithm: crate::config::JwtAlgorithm::HS256,
            secret: Some("s3cret".into()),
            key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh_s: None,
            issuer: None,
            audience: Vec::new(),
            subject_header: None,
            claim_headers: Default::default(),
        }
    }

    /// A key pair of `kind` made now: its signing key, and its public key's PEM file in `dir`.
    fn key_pair(
        kind: &'static rcgen::SignatureAlgorithm,
        dir: &std::path::Path,
        name: &str,
    ) -> (jsonwebtoken::EncodingKey, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate_for(kind).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, key.public_key_pem()).unwrap();
        let der = key.serialize_der();
        let signing = if kind == &rcgen::PKCS_ED25519 {
            jsonwebtoken::EncodingKey::from_ed_der(&der)
        } else {
            jsonwebtoken::EncodingKey::from_ec_der(&der)
        };
        (signing, file)
    }

    /// A bearer token for `ann` of `algorithm`, signed with `key`.
    fn signed(algorithm: Algorithm, key: &jsonwebtoken::EncodingKey) -> HeaderMap {
        let claims = serde_json::json!({ "sub": "ann", "exp": exp() });
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, key).unwrap();
        headers(&format!("Bearer {token}"))
    }

    #[test]
    fn each_algorithm_lets_in_tokens_of_its_own_key_alone() {
        use crate::config::JwtAlgorithm as J;
        let dir = std::env::temp_dir().join(format!("sluice-jwt-algorithms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p384, p384_pem) = key_pair(&rcgen::PKCS_ECDSA_P384_SHA384, &dir, "p384");
        let (other384, _) = key_pair(&rcgen::PKCS_ECDSA_P384_SHA384, &dir, "other384");
        let (ed, ed_pem) = key_pair(&rcgen::PKCS_ED25519, &dir, "ed");
        let (other_ed, _) = key_pair(&rcgen::PKCS_ED25519, &dir, "other-ed");
        let secret = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let wrong_secret = jsonwebtoken::EncodingKey::from_secret(b"guess");
        let with_file = |algorithm, file: &std::path::PathBuf| JwtConfig {
            algorithm,
            secret: None,
            key_file: Some(file.clone()),
            ..jwt_config()
        };
        let cases = [
            (with_file(J::ES384, &p384_pem), Algorithm::ES384, &p384, &other384),
            (with_file(J::EdDSA, &ed_pem), Algorithm::EdDSA, &ed, &other_ed),
            (JwtConfig { algorithm: J::HS384, ..jwt_config() }, Algorithm::HS384, &secret, &wrong_secret),
            (JwtConfig { algorithm: J::HS512, ..jwt_config() }, Algorithm::HS512, &secret, &wrong_secret),
        ];
        let invalid = Err((StatusCode::UNAUTHORIZED, "token signature invalid"));
        for (config, algorithm, key, other) in cases {
            let verifier = Jwt::new(&config).unwrap();
            assert_eq!(subject(&verifier, &signed(algorithm, key)), Ok(Some("ann".into())), "{algorithm:?}");
            assert_eq!(subject(&verifier, &signed(algorithm, other)), invalid, "{algorithm:?}: another key");
            // A token of another algorithm (HS256 with the route's own secret, for the HMAC
            // ones) is refused whatever its signature.
            let refused = subject(&verifier, &signed(Algorithm::HS256, &secret));
            assert_eq!(refused.unwrap_err().0, StatusCode::UNAUTHORIZED, "{algorithm:?}: HS256");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_jwk_set_files_keys_are_chosen_by_kid_and_its_changes_read() {
        let dir = std::env::temp_dir().join(format!("sluice-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.json");
        let ((a, a_jwk), (b, b_jwk), (c, c_jwk)) = (es256("a"), es256("b"), es256("c"));
        std::fs::write(&file, jwks(&[&a_jwk, &b_jwk])).unwrap();
        let verifier = Jwt::new(&JwtConfig { jwks_file: Some(file.clone()), ..es256_config() }).unwrap();
        assert_eq!(subject(&verifier, &bearer(&a, Some("a"), "ann")), Ok(Some("ann".into())));
        assert_eq!(subject(&verifier, &bearer(&b, Some("b"), "bob")), Ok(Some("bob".into())));
        // Without a kid, any key of the set; with another key's kid, that key alone.
        assert_eq!(subject(&verifier, &bearer(&b, None, "bob")), Ok(Some("bob".into())));
        let refused = subject(&verifier, &bearer(&a, Some("b"), "ann"));
        assert_eq!(refused, Err((StatusCode::UNAUTHORIZED, "token signature invalid")));
        assert_eq!(
            subject(&verifier, &bearer(&c, None, "cy")),
            Err((StatusCode::UNAUTHORIZED, "token signature invalid"))
        );
        let unknown = subject(&verifier, &bearer(&c, Some("c"), "cy"));
        assert_eq!(unknown, Err((StatusCode::UNAUTHORIZED, "token key unknown")));
        // The provider rotated: a replaced file is read again (as API key files are).
        let staged = dir.join("keys.new");
        std::fs::write(&staged, jwks(&[&b_jwk, &c_jwk])).unwrap();
        std::fs::rename(&staged, &file).unwrap();
        let Keys::File(watched) = &verifier.keys else { panic!("a file's keys") };
        watched.look_again();
        assert_eq!(subject(&verifier, &bearer(&c, Some("c"), "cy")), Ok(Some("cy".into())));
        assert_eq!(subject(&verifier, &bearer(&a, Some("a"), "ann")).unwrap_err().1, "token key unknown");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An identity provider's key set over HTTPS, counting its fetches; answers 500 while
    /// `broken`.
    struct Provider {
        url: String,
        keys: std::sync::Arc<std::sync::Mutex<String>>,
        fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
        pki: crate::proxy::test_bed::Pki,
    }

    impl Provider {
        async fn start(keys: String) -> Provider {
            use std::sync::{Arc, Mutex, atomic::*};
            let pki = crate::proxy::test_bed::Pki::new("jwks");
            let acceptor = tokio_rustls::TlsAcceptor::from(pki.backend_config(&[b"http/1.1"], false));
            let (keys, fetches, broken) =
                (Arc::new(Mutex::new(keys)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
            let served = (keys.clone(), fetches.clone(), broken.clone());
            let address = crate::proxy::test_bed::listening(move |stream| {
                let (acceptor, served) = (acceptor.clone(), served.clone());
                async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service =
                        hyper::service::service_fn(move |_: hyper::Request<hyper::body::Incoming>| {
                            let (keys, fetches, broken) = served.clone();
                            async move {
                                fetches.fetch_add(1, Ordering::SeqCst);
                                let mut answer = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(keys.lock().unwrap().clone()),
                                ));
                                if broken.load(Ordering::SeqCst) {
                                    *answer.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                }
                                Ok::<_, hyper::Error>(answer)
                            }
                        });
                    crate::proxy::test_bed::serve(stream, false, service).await;
                }
            })
            .await;
            Provider { url: format!("https://{address}/jwks.json"), keys, fetches, broken, pki }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Checks `headers` until the answer is not `until` (a fetch apart ended), for up to 5 s.
    async fn checked_after(
        verifier: &Jwt,
        headers: &HeaderMap,
        until: Refusal,
    ) -> Result<Option<String>, Refusal> {
        for _ in 0..250 {
            match subject(verifier, headers) {
                Err(refusal) if refusal == until => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
        subject(verifier, headers)
    }

    #[tokio::test]
    async fn a_jwk_set_url_is_fetched_and_fetched_again_for_an_unknown_key() {
        let ((a, a_jwk), (b, b_jwk)) = (es256("a"), es256("b"));
        let provider = Provider::start(jwks(&[&a_jwk])).await;
        let config = JwtConfig {
            jwks_url: Some(provider.url.clone()),
            jwks_ca: Some(provider.pki.ca.clone()),
            ..es256_config()
        };
        let verifier = Jwt::new(&config).unwrap();
        // Fetched when made; until then a token cannot be checked (503, not the client's fault).
        let not_yet = (StatusCode::SERVICE_UNAVAILABLE, "token keys not fetched yet");
        let ann = bearer(&a, Some("a"), "ann");
        assert_eq!(checked_after(&verifier, &ann, not_yet).await, Ok(Some("ann".into())));
        assert_eq!(provider.fetches(), 1);
        // A token of a key the set lacks: refused, and the set fetched again at once.
        *provider.keys.lock().unwrap() = jwks(&[&a_jwk, &b_jwk]);
        let bob = bearer(&b, Some("b"), "bob");
        let unknown = (StatusCode::UNAUTHORIZED, "token key unknown");
        assert_eq!(subject(&verifier, &bob), Err(unknown));
        assert_eq!(checked_after(&verifier, &bob, unknown).await, Ok(Some("bob".into())));
        assert_eq!(provider.fetches(), 2);
        // Forged kids cannot make lbd fetch on every request: once per 30 s at most.
        let (c, _) = es256("c");
        for _ in 0..20 {
            assert_eq!(subject(&verifier, &bearer(&c, Some("c"), "cy")), Err(unknown));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(provider.fetches(), 2);
        // A provider that fails keeps the keys held.
        provider.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        let Keys::Remote(remote) = &verifier.keys else { panic!("remote keys") };
        remote.fetch_now();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(provider.fetches(), 3);
        assert_eq!(subject(&verifier, &bob), Ok(Some("bob".into())));
    }

    #[tokio::test]
    async fn a_jwk_set_url_whose_server_another_ca_signed_is_never_trusted() {
        let (a, a_jwk) = es256("a");
        let provider = Provider::start(jwks(&[&a_jwk])).await;
        let config = JwtConfig {
            jwks_url: Some(provider.url.clone()),
            jwks_ca: Some(provider.pki.other_ca.clone()),
            ..es256_config()
        };
        let verifier = Jwt::new(&config).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let refused = subject(&verifier, &bearer(&a, Some("a"), "ann"));
        assert_eq!(refused, Err((StatusCode::SERVICE_UNAVAILABLE, "token keys not fetched yet")));
        assert_eq!(provider.fetches(), 0, "the handshake failed before any request");
    }

    #[test]
    fn claims_go_in_their_headers_as_text() {
        let claim_headers =
            [("email", "X-Email"), ("groups", "x-groups"), ("level", "x-level"), ("org", "x-org")];
        let claim_headers = claim_headers.into_iter().map(|(c, h)| (c.to_owned(), h.to_owned())).collect();
        let verifier = Jwt::new(&JwtConfig { claim_headers, ..jwt_config() }).unwrap();
        let t = token(serde_json::json!({
            "sub": "ann", "exp": exp(), "email": "ann@example.test", "groups": ["ops", "dev", 7],
            "level": 3, "org": { "id": 1 }
        }));
        let verified = verifier.check(&headers(&format!("Bearer {t}"))).unwrap();
        let fields: Vec<(String, Option<String>)> = verified
            .fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_ref().map(|v| v.to_str().unwrap().to_owned())))
            .collect();
        let text = |s: &str| Some(s.to_owned());
        assert_eq!(
            fields,
            [
                ("x-email".to_owned(), text("ann@example.test")),
                ("x-groups".to_owned(), text("ops,dev,7")),
                ("x-level".to_owned(), text("3")),
                ("x-org".to_owned(), None),
            ],
            "an object is no header's value"
        );
        assert_eq!(verified.subject.as_deref(), Some("ann"));
        // A claim the token lacks, or one no header may carry: the field is named, without a value
        // (so the client's own is still taken away).
        let t = token(serde_json::json!({ "sub": "bob", "exp": exp(), "email": "bob\r\nx-admin: 1" }));
        let verified = verifier.check(&headers(&format!("Bearer {t}"))).unwrap();
        assert!(verified.fields.iter().all(|(_, value)| value.is_none()), "{:?}", verified.fields);
    }
}
