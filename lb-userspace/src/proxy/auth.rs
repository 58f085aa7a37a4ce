//! Route access by credentials: API keys (header or query parameter, keys from a file that is
//! re-read when it changes) and JWTs (HS256, RS256, ES256; `exp`, `nbf`, `iss`, `aud` checked).
use std::collections::HashSet;
#[cfg(test)]
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{HeaderMap, StatusCode, Uri, header};
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};

use crate::{
    config::{ApiKeyConfig, JwtConfig},
    proxy::watched_file::WatchedFile,
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
        let keys = WatchedFile::new(config.file.clone(), "API keys", parse_keys);
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
    key: DecodingKey,
    validation: Validation,
    pub subject_header: Option<hyper::header::HeaderName>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Why a route's JWT check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(transparent)]
    Key(#[from] crate::config::JwtKeyError),
    #[error("subject_header `{0}` is not a header name")]
    SubjectHeader(String),
}

impl Jwt {
    /// The check `config` asks for; the error says what is wrong with it.
    pub fn new(config: &JwtConfig) -> Result<Jwt, JwtError> {
        let (algorithm, key) = config.decoding_key()?;
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 0;
        // `exp` is always required; `iss` and `aud` are required (not only checked when
        // present) once the route names them.
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        let subject_header = match &config.subject_header {
            Some(name) => Some(
                hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| JwtError::SubjectHeader(name.clone()))?,
            ),
            None => None,
        };
        Ok(Jwt { key, validation, subject_header })
    }

    /// The token's subject if the bearer token is valid.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or((StatusCode::UNAUTHORIZED, "bearer token required"))?;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(err) => Err(match err.kind() {
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
                ErrorKind::MissingRequiredClaim(_) => {
                    (StatusCode::UNAUTHORIZED, "token lacks a required claim")
                }
                _ => (StatusCode::UNAUTHORIZED, "token invalid"),
            }),
        }
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
        Jwt::new(&JwtConfig {
            algorithm: crate::config::JwtAlgorithm::HS256,
            secret: Some("s3cret".into()),
            key_file: None,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            subject_header: None,
        })
        .unwrap()
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
                verifier.check(&headers(&format!("{scheme} {t}"))),
                Ok(Some("ann".into())),
                "{scheme}"
            );
        }
        assert!(verifier.check(&headers(&format!("Basic {t}"))).is_err());
    }

    #[test]
    fn a_configured_issuer_or_audience_is_required() {
        let verifier = jwt(Some("idp"), Some("api"));
        let all = token(serde_json::json!({ "exp": exp(), "iss": "idp", "aud": "api" }));
        assert!(verifier.check(&headers(&format!("Bearer {all}"))).is_ok());
        let no_iss = token(serde_json::json!({ "exp": exp(), "aud": "api" }));
        assert_eq!(
            verifier.check(&headers(&format!("Bearer {no_iss}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let no_aud = token(serde_json::json!({ "exp": exp(), "iss": "idp" }));
        assert_eq!(
            verifier.check(&headers(&format!("Bearer {no_aud}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let wrong = token(serde_json::json!({ "exp": exp(), "iss": "other", "aud": "api" }));
        assert_eq!(
            verifier.check(&headers(&format!("Bearer {wrong}"))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn exp_is_required() {
        let verifier = jwt(None, None);
        let t = token(serde_json::json!({ "sub": "ann" }));
        assert_eq!(verifier.check(&headers(&format!("Bearer {t}"))).unwrap_err().0, StatusCode::UNAUTHORIZED);
    }
}
