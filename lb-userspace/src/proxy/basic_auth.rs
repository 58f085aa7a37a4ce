//! Basic auth on a route (RFC 7617): the request's user and password checked against an
//! htpasswd file. A login found right is remembered (by a SHA-256 of its `Authorization` value)
//! until the file changes, so a client's next requests cost no hashing. The hashing itself,
//! milliseconds by design, runs on tokio's blocking threads, a few at a time per route, so a
//! burst of logins (or of guesses) never stalls the worker's other connections. An unknown
//! user's login is hashed too, so the time an answer takes does not tell who exists.
use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use hyper::{
    HeaderMap, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use lru::LruCache;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::{
    config::BasicAuthConfig,
    htpasswd::Users,
    proxy::watched_file::{self, WatchedFile},
};

/// Why a request was refused: status and a body that says what to fix.
pub type Refusal = (StatusCode, &'static str);

/// Logins remembered per route (and per version of its file).
const REMEMBERED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// How long a login waits for a free check before it is answered 503.
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// One version of the file: its users, and the logins found right against them.
struct Logins {
    users: Users,
    verified: Mutex<LruCache<[u8; 32], Arc<str>>>,
}

impl Default for Logins {
    fn default() -> Logins {
        Logins { users: Users::default(), verified: Mutex::new(LruCache::new(REMEMBERED)) }
    }
}

fn parse(text: &str) -> Result<Logins, String> {
    let users = Users::parse(text).map_err(|e| e.to_string())?;
    Ok(Logins { users, ..Logins::default() })
}

/// A route's basic auth.
pub struct BasicAuth {
    logins: WatchedFile<Logins>,
    /// `WWW-Authenticate` on every 401.
    pub challenge: HeaderValue,
    /// Where the user's name goes to the backend.
    pub user_header: Option<HeaderName>,
    /// Hashes being checked at once, at most one per core.
    checks: Semaphore,
}

impl BasicAuth {
    pub fn new(config: &BasicAuthConfig) -> BasicAuth {
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        BasicAuth {
            logins: WatchedFile::new(config.file.clone(), "basic_auth users", parse, watched_file::REFUSING),
            challenge: HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Basic")),
            user_header: config
                .user_header
                .as_deref()
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            checks: Semaphore::new(cores),
        }
    }

    /// The request's user if its credentials are right.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Arc<str>, Refusal> {
        let mut presented = headers.get_all(header::AUTHORIZATION).iter();
        let value = presented.next().ok_or((StatusCode::UNAUTHORIZED, "credentials required"))?;
        if presented.next().is_some() {
            return Err((StatusCode::BAD_REQUEST, "Authorization sent more than once"));
        }
        let (user, password) =
            credentials(value.as_bytes()).ok_or((StatusCode::UNAUTHORIZED, "credentials malformed"))?;
        let refused = (StatusCode::UNAUTHORIZED, "credentials not accepted");
        let logins = self.logins.current();
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = lock(&logins.verified).get(&key) {
            return Ok(user.clone());
        }
        // An unknown user is checked too, against another user's hash, and refused whatever it
        // says: the answer takes as long as a known user's, so it does not tell who exists.
        let (known, hash) = match logins.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, logins.users.any().ok_or(refused)?.clone()),
        };
        let _permit = tokio::time::timeout(CHECK_WAIT, self.checks.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or((StatusCode::SERVICE_UNAVAILABLE, "too many logins being checked"))?;
        let right = tokio::task::spawn_blocking(move || hash.verify(&password)).await.unwrap_or(false);
        if !(known && right) {
            return Err(refused);
        }
        let user: Arc<str> = String::from_utf8_lossy(&user).into();
        lock(&logins.verified).put(key, user.clone());
        Ok(user)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The user and password of a `Basic` value (the scheme in any case, RFC 9110 §11.1).
fn credentials(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = value.trim_ascii();
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Basic {encoded}").parse().unwrap());
        headers
    }

    fn route(file: &str) -> (BasicAuth, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sluice-basic-{}-{file}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        // htpasswd -nbB -C 4 ann 'open sesame'; a password with a colon: bcrypt::hash("a:b", 4).
        let colon = bcrypt::hash("a:b", 4).unwrap();
        let text =
            format!("ann:$2y$04$o2bVFVIz.Iqlx6PNV0I.qOGGW6y7kqYhqXMCrf2OkVxyZOmEg/qBa\ncolon:{colon}\n");
        std::fs::write(&path, text).unwrap();
        let config =
            BasicAuthConfig { file: path.clone(), realm: "staff".into(), user_header: Some("x-user".into()) };
        (BasicAuth::new(&config), dir)
    }

    #[tokio::test]
    async fn right_credentials_pass_and_wrong_ones_say_why() {
        let (auth, dir) = route("users");
        assert_eq!(auth.challenge, "Basic realm=\"staff\", charset=\"UTF-8\"");
        assert_eq!(auth.check(&basic("ann", "open sesame")).await.as_deref(), Ok("ann"));
        assert_eq!(
            auth.check(&basic("colon", "a:b")).await.as_deref(),
            Ok("colon"),
            "split at the first colon"
        );
        let refused = |status, why| Err((status, why));
        let unauthorized = StatusCode::UNAUTHORIZED;
        assert_eq!(
            auth.check(&basic("ann", "open")).await,
            refused(unauthorized, "credentials not accepted")
        );
        assert_eq!(
            auth.check(&basic("bob", "open sesame")).await,
            refused(unauthorized, "credentials not accepted")
        );
        assert_eq!(auth.check(&HeaderMap::new()).await, refused(unauthorized, "credentials required"));
        for value in ["Bearer abc", "Basic !!!", "Basic", "Basic YW5u"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(auth.check(&headers).await, refused(unauthorized, "credentials malformed"), "{value}");
        }
        let mut lower = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("ann:open sesame");
        lower.insert(header::AUTHORIZATION, format!("bAsIc  {encoded} ").parse().unwrap());
        assert_eq!(auth.check(&lower).await.as_deref(), Ok("ann"), "the scheme in any case");
        let mut twice = basic("ann", "open sesame");
        twice.append(header::AUTHORIZATION, "Bearer forged".parse().unwrap());
        assert_eq!(
            auth.check(&twice).await,
            refused(StatusCode::BAD_REQUEST, "Authorization sent more than once")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_user_is_hashed_like_a_known_one() {
        let (auth, dir) = route("unknown");
        // Every check taken: a login that needs one waits, then is answered 503. An unknown
        // user's does too (refused at once, it would tell that the user does not exist).
        let _all = auth.checks.acquire_many(auth.checks.available_permits() as u32).await.unwrap();
        let busy = Err((StatusCode::SERVICE_UNAVAILABLE, "too many logins being checked"));
        assert_eq!(auth.check(&basic("bob", "open sesame")).await, busy);
        assert_eq!(auth.check(&basic("ann", "guess")).await, busy);
        drop(_all);
        // With a check free, it is refused as a wrong password is, even with another user's.
        let refused = Err((StatusCode::UNAUTHORIZED, "credentials not accepted"));
        assert_eq!(auth.check(&basic("bob", "open sesame")).await, refused);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_login_is_remembered_until_the_file_changes() {
        let (auth, dir) = route("remembered");
        let ann = basic("ann", "open sesame");
        assert!(auth.check(&ann).await.is_ok());
        assert_eq!(lock(&auth.logins.current().verified).len(), 1);
        // Remembered: no hashing (no permit needed) on the next request.
        let _all = auth.checks.acquire_many(auth.checks.available_permits() as u32).await.unwrap();
        assert!(auth.check(&ann).await.is_ok());
        drop(_all);
        // A new file (ann removed) forgets every login.
        let path = dir.join("remembered");
        std::fs::write(&path, "bob:$5$AZf30sOQFjfG2Dd3$M65Ga16cnFYP7iBfK7q6XxwDR85TQ.kuABw5RO1rzG4\n")
            .unwrap();
        let past = std::time::SystemTime::now() - Duration::from_secs(100);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(past).unwrap();
        auth.logins.look_again();
        assert_eq!(auth.check(&ann).await, Err((StatusCode::UNAUTHORIZED, "credentials not accepted")));
        assert_eq!(auth.check(&basic("bob", "hunter2")).await.as_deref(), Ok("bob"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
