//! Route access by credentials: API keys (header or query parameter, keys from a file that is
//! re-read when it changes) and JWTs (HS256, RS256, ES256; `exp`, `nbf`, `iss`, `aud` checked).
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use hyper::{HeaderMap, StatusCode, Uri, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};

use crate::config::{ApiKeyConfig, JwtConfig};

/// Why a request was refused: status and a body that says what to fix.
pub type Refusal = (StatusCode, &'static str);

/// API keys from a file, one per line (`#` comments), re-read at most once a second when its
/// modification time changes.
pub struct ApiKeys {
    config: ApiKeyConfig,
    keys: ArcSwap<HashSet<String>>,
    modified: Mutex<Option<SystemTime>>,
    checked_at: AtomicU64,
}

fn read_keys(file: &PathBuf) -> std::io::Result<HashSet<String>> {
    Ok(std::fs::read_to_string(file)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

impl ApiKeys {
    pub fn new(config: ApiKeyConfig) -> ApiKeys {
        let keys = read_keys(&config.file).unwrap_or_default();
        let modified = std::fs::metadata(&config.file).and_then(|m| m.modified()).ok();
        ApiKeys {
            config,
            keys: ArcSwap::from_pointee(keys),
            modified: Mutex::new(modified),
            checked_at: AtomicU64::new(0),
        }
    }

    fn refresh(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if self.checked_at.swap(now, Ordering::Relaxed) == now {
            return;
        }
        let modified = std::fs::metadata(&self.config.file).and_then(|m| m.modified()).ok();
        let mut last = self.modified.lock().unwrap_or_else(|p| p.into_inner());
        if modified != *last {
            *last = modified;
            match read_keys(&self.config.file) {
                Ok(keys) => {
                    log::info!("API keys reloaded from {} ({} keys)", self.config.file.display(), keys.len());
                    self.keys.store(keys.into());
                }
                Err(err) => {
                    log::error!("API keys {}: {err}; keeping the previous keys", self.config.file.display())
                }
            }
        }
    }

    /// The request's key if it is known.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<String, Refusal> {
        self.refresh();
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
        if self.keys.load().contains(&key) {
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

impl Jwt {
    pub fn new(config: &JwtConfig) -> anyhow::Result<Jwt> {
        let (algorithm, key) = match config.algorithm.as_str() {
            "HS256" => (
                Algorithm::HS256,
                DecodingKey::from_secret(config.secret.as_deref().unwrap_or_default().as_bytes()),
            ),
            "RS256" | "ES256" => {
                let pem = std::fs::read(
                    config.key_file.as_ref().ok_or_else(|| anyhow::anyhow!("key_file required"))?,
                )?;
                if config.algorithm == "RS256" {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)?)
                } else {
                    (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)?)
                }
            }
            other => anyhow::bail!("algorithm {other}: expected HS256, RS256 or ES256"),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 0;
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let subject_header = match &config.subject_header {
            Some(name) => Some(hyper::header::HeaderName::from_bytes(name.as_bytes())?),
            None => None,
        };
        Ok(Jwt { key, validation, subject_header })
    }

    /// The token's subject if the bearer token is valid.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or((StatusCode::UNAUTHORIZED, "bearer token required"))?;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(err) => Err(match err.kind() {
                ErrorKind::ExpiredSignature => (StatusCode::UNAUTHORIZED, "token expired"),
                ErrorKind::ImmatureSignature => (StatusCode::UNAUTHORIZED, "token not valid yet"),
                ErrorKind::InvalidIssuer => (StatusCode::FORBIDDEN, "token issuer not accepted"),
                ErrorKind::InvalidAudience => (StatusCode::FORBIDDEN, "token audience not accepted"),
                ErrorKind::InvalidSignature => (StatusCode::UNAUTHORIZED, "token signature invalid"),
                ErrorKind::MissingRequiredClaim(_) => {
                    (StatusCode::UNAUTHORIZED, "token lacks a required claim")
                }
                _ => (StatusCode::UNAUTHORIZED, "token invalid"),
            }),
        }
    }
}
