//! A listener's certificate from an ACME CA (RFC 8555), as Caddy, HAProxy 3.2 and nginx's
//! `acme` module get theirs: ordered when there is none (or it names other names) and again
//! two-thirds through its life, each name proved by TLS-ALPN-01 (RFC 8737) on the listener
//! itself, so nothing but its port 443 is needed, or by HTTP-01 on a plain listener's port 80.
//! TLS-ALPN-01's validation connects to the name with ALPN `acme-tls/1` alone; any listener
//! with `acme` answers it with a certificate made for that order ([`Challenges`], shared by
//! all: a CA may validate at a name's IPv4 or IPv6 address) and the connection closes after the
//! handshake. HTTP-01's asks for a token's path, which the pipeline answers from the same
//! [`Challenges`] before anything else. The certificate and its key are written into its state
//! folder (`<state>/<least name>`, one order however many listeners serve it), where each
//! listener's file watch finds them and serves them within a second; the account's key is kept
//! beside them.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use log::{info, warn};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{
    config::{Acme, AcmeChallenge},
    proxy::https_client::{self, HttpsClient},
};

/// The ALPN protocol of a TLS-ALPN-01 validation.
pub const ALPN: &[u8] = b"acme-tls/1";

/// How long one order may take, all its requests and waits together.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one request to the CA may wait for its answer's head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest answer body read from the CA (its largest, a certificate chain, is a few KiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// After a failed order, the first wait before the next; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// The longest sleep between two looks at the certificate (a clock moved, a file removed).
const LOOK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// Why an order failed (it is tried again later).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{doing} {path}: {error}")]
    File { doing: &'static str, path: PathBuf, error: std::io::Error },
    #[error("the challenge certificate: {0}")]
    Challenge(String),
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {}s", ORDER_TIMEOUT.as_secs())]
    Timeout,
}

type Result<T, E = AcmeError> = std::result::Result<T, E>;

/// Where an HTTP-01 validation asks (RFC 8555 §8.3): this, then the challenge's token.
pub const HTTP_PATH: &str = "/.well-known/acme-challenge/";

/// Answers to a CA's validations while an order waits for them: TLS-ALPN-01's certificates by
/// name, HTTP-01's key authorizations by token (with the name each is for).
#[derive(Debug, Default)]
pub struct Challenges {
    certificates: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    tokens: Mutex<HashMap<String, (String, String)>>,
    /// Whether `tokens` holds any: read on every plain request, without the lock.
    awaiting_http: AtomicBool,
}

impl Challenges {
    /// The certificate that answers a validation of `name` (none: no order asks for it).
    pub fn answer(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = name?.to_ascii_lowercase();
        self.certificates.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned()
    }

    /// The key authorization an HTTP-01 validation of `path` gets, if an order waits for it.
    pub fn http_answer(&self, path: &str) -> Option<String> {
        if !self.awaiting_http.load(Ordering::Relaxed) {
            return None;
        }
        let token = path.strip_prefix(HTTP_PATH)?;
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).map(|(_, answer)| answer.clone())
    }

    fn put(&self, name: String, answer: Arc<CertifiedKey>) {
        self.certificates.lock().unwrap_or_else(|p| p.into_inner()).insert(name, answer);
    }

    fn put_token(&self, name: String, token: String, key_authorization: String) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(token, (name, key_authorization));
        self.awaiting_http.store(true, Ordering::Relaxed);
    }

    /// Drops the answers for `names` (an order's, done).
    fn clear(&self, names: &[String]) {
        let mut answers = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            answers.remove(name);
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (name, _)| !names.contains(name));
        self.awaiting_http.store(!tokens.is_empty(), Ordering::Relaxed);
    }
}

/// Keeps an ACME certificate (for `listener` and any other listener that shares it): orders
/// one when it is due, sleeps until it is due again; a failed order is tried again after a
/// minute, then twice as long each time, up to six hours (a CA's rate limits count failures).
/// The wait is kept in the folder (`retry-after`), so a restarted lbd (a crash loop, an
/// operator's restarts) waits it out too.
pub async fn keep(listener: String, acme: Acme, challenges: Arc<Challenges>) {
    let mut retry = RETRY_FIRST;
    if let Some((at, next)) = held(&acme.folder) {
        retry = next;
        // At most the longest wait, whatever the note says (a clock set back since).
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default().min(RETRY_MAX);
        if !wait.is_zero() {
            info!("listener {}: the last ACME order failed: the next in {}s", listener, wait.as_secs());
            tokio::time::sleep(wait).await;
        }
    }
    loop {
        let due = due(&acme, SystemTime::now());
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(LOOK_EVERY)).await;
            continue;
        }
        info!(
            "listener {}: ordering a certificate for {} from {}",
            listener,
            acme.names.join(", "),
            acme.directory
        );
        let ordered = tokio::time::timeout(ORDER_TIMEOUT, order(&acme, &challenges)).await;
        challenges.clear(&acme.names);
        match ordered.unwrap_or(Err(AcmeError::Timeout)) {
            Ok(()) => {
                info!("listener {}: certificate ordered into {}", listener, acme.folder.display());
                let _ = std::fs::remove_file(acme.folder.join(RETRY_AFTER));
                retry = RETRY_FIRST;
            }
            Err(err) => {
                warn!("listener {}: ACME order failed, again in {}s: {err}", listener, retry.as_secs());
                let next = (retry * 2).min(RETRY_MAX);
                hold(&acme.folder, SystemTime::now() + retry, next);
                tokio::time::sleep(retry).await;
                retry = next;
            }
        }
    }
}

/// The file that holds the next order back after a failure: when, and the wait after it.
const RETRY_AFTER: &str = "retry-after";

/// Notes that no order is to be made before `at`, and to wait `next` after the next failure.
fn hold(folder: &Path, at: SystemTime, next: Duration) {
    let at = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let _ = std::fs::create_dir_all(folder);
    if let Err(err) = std::fs::write(folder.join(RETRY_AFTER), format!("{at} {}\n", next.as_secs())) {
        warn!("ACME: keeping the retry time in {}: {err}", folder.display());
    }
}

/// The time and next wait `hold` noted, if any (a garbled note counts for none).
fn held(folder: &Path) -> Option<(SystemTime, Duration)> {
    let text = std::fs::read_to_string(folder.join(RETRY_AFTER)).ok()?;
    let (at, next) = text.trim().split_once(' ')?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at.parse().ok()?);
    let next = Duration::from_secs(next.parse().ok()?).clamp(RETRY_FIRST, RETRY_MAX);
    Some((at, next))
}

/// When the certificate kept in `acme`'s folder is due: now if there is none, it does not
/// parse or it names other names than `acme.names`; else two-thirds through its life
/// (Let's Encrypt's advice: certbot's 30 days before the end of 90).
pub fn due(acme: &Acme, now: SystemTime) -> SystemTime {
    let Ok(chain) = crate::proxy::tls::read_chain(&acme.files().cert) else { return now };
    let Ok(leaf) = webpki::EndEntityCert::try_from(&chain[0]) else { return now };
    let mut names: Vec<String> = leaf.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
    let mut wanted = acme.names.clone();
    names.sort();
    wanted.sort();
    if names != wanted {
        return now;
    }
    let Some((from, until)) = crate::proxy::validity::of_der(&chain[0]) else { return now };
    from + until.duration_since(from).unwrap_or_default() * 2 / 3
}

/// One order: the account, each name's TLS-ALPN-01 answer put in `challenges` and the CA told
/// to look, the order finalized with a new key, the chain and key written.
async fn order(acme: &Acme, challenges: &Challenges) -> Result<()> {
    std::fs::create_dir_all(&acme.folder).map_err(file("making", &acme.folder))?;
    let account = account(acme).await?;
    let identifiers: Vec<Identifier> = acme.names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Refused(format!("an authorization is {other:?}"))),
        }
        let (kind, named) = match acme.challenge {
            AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
            AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
        };
        let mut challenge = authorization
            .challenge(kind)
            .ok_or_else(|| AcmeError::Refused(format!("the CA offers no {named} challenge")))?;
        let name = challenge.identifier().to_string().to_ascii_lowercase();
        let key_authorization = challenge.key_authorization();
        match acme.challenge {
            AcmeChallenge::TlsAlpn01 => {
                challenges.put(name.clone(), answer(&name, key_authorization.digest().as_ref())?)
            }
            AcmeChallenge::Http01 => {
                challenges.put_token(name, challenge.token.clone(), key_authorization.as_str().to_owned())
            }
        }
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Refused(format!("the order is {status:?}, not ready")));
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&retries).await?;
    write(&acme.folder, &key, &chain)
}

/// The listener's ACME account: the one kept in its folder for this directory, else a new one
/// (its credentials then kept, readable by root alone).
async fn account(acme: &Acme) -> Result<Account> {
    let builder = || client(acme).map(Account::builder_with_http);
    let path = acme.folder.join("account.json");
    if let Ok(kept) = std::fs::read(&path)
        && let Ok(kept) = serde_json::from_slice::<KeptAccount>(&kept)
        && kept.directory == acme.directory
    {
        return Ok(builder()?.from_credentials(kept.credentials).await?);
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let binding = acme
        .external_account
        .as_ref()
        .map(|eab| instant_acme::ExternalAccountKey::new(eab.kid.clone(), &eab.hmac_key));
    let (account, credentials) = builder()?.create(&new, acme.directory.clone(), binding.as_ref()).await?;
    let kept = serde_json::to_vec(&KeptAccount { directory: acme.directory.clone(), credentials })
        .map_err(|e| AcmeError::Refused(format!("the account's credentials: {e}")))?;
    write_private(&path, &kept)?;
    Ok(account)
}

/// The HTTP client of the orders: hyper's over rustls, https only, the server checked against
/// the system's roots or the directory's own CA; each request waits at most
/// `REQUEST_TIMEOUT` for its answer and reads at most `MAX_ANSWER_BYTES` of it.
struct Bounded(HttpsClient<BodyWrapper<bytes::Bytes>>);

fn client(acme: &Acme) -> Result<Box<dyn HttpClient>> {
    let client = https_client::build(acme.directory_ca.as_deref())
        .map_err(|e| AcmeError::Refused(format!("the directory's TLS: {e}")))?;
    Ok(Box::new(Bounded(client)))
}

impl HttpClient for Bounded {
    fn request(
        &self,
        request: hyper::Request<BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.0.request(request);
        Box::pin(async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, sent)
                .await
                .map_err(|_| instant_acme::Error::Str("the CA did not answer within 30 s"))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(answer.map(|body| http_body_util::Limited::new(body, MAX_ANSWER_BYTES))))
        })
    }
}

/// An account's credentials with the directory they belong to.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The TLS-ALPN-01 answer for `name`: a self-signed certificate for it alone that carries the
/// SHA-256 of the key authorization in its critical acmeIdentifier extension.
fn answer(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    let failed = |e: rcgen::Error| AcmeError::Challenge(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(failed)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its check that the key matches parses the certificate with
    // webpki, which refuses the critical extension it does not know.
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| AcmeError::Challenge(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], key)))
}

/// The new key and chain put in place: each written beside its name and renamed over it, the
/// key first, so the file watch sees the pair change within one look.
fn write(folder: &Path, key: &str, chain: &str) -> Result<()> {
    CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .and_then(|first| first.ok())
        .ok_or_else(|| AcmeError::Refused("the CA sent no certificate".into()))?;
    let (key_path, cert_path) = (folder.join("key.pem"), folder.join("cert.pem"));
    let (key_new, cert_new) = (folder.join("key.pem.new"), folder.join("cert.pem.new"));
    write_private(&key_new, key.as_bytes())?;
    std::fs::write(&cert_new, chain).map_err(file("writing", &cert_new))?;
    std::fs::rename(&key_new, &key_path).map_err(file("renaming", &key_new))?;
    std::fs::rename(&cert_new, &cert_path).map_err(file("renaming", &cert_new))?;
    Ok(())
}

/// `bytes` into a new file at `path` that only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let _ = std::fs::remove_file(path);
    let mut out = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file("creating", path))?;
    out.write_all(bytes).and_then(|()| out.sync_all()).map_err(file("writing", path))
}

fn file(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError {
    let path = path.to_path_buf();
    move |error| AcmeError::File { doing, path, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(folder: &Path, names: &[&str]) -> Acme {
        Acme {
            directory: "https://acme.test/directory".into(),
            contact: Vec::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            folder: folder.to_path_buf(),
            directory_ca: None,
            external_account: None,
            challenge: AcmeChallenge::TlsAlpn01,
        }
    }

    /// A certificate for `names` valid from `from` for `days`, written as the folder's own.
    fn kept(folder: &Path, names: &[&str], from: SystemTime, days: u64) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = from.into();
        params.not_after = (from + Duration::from_secs(days * 86400)).into();
        let cert = params.self_signed(&key).unwrap();
        write(folder, &key.serialize_pem(), &cert.pem()).unwrap();
    }

    #[test]
    fn a_certificate_is_due_when_missing_for_other_names_or_two_thirds_through_its_life() {
        let folder = std::env::temp_dir().join(format!("sluice-acme-due-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let now = SystemTime::now();
        let config = acme(&folder, &["b.test", "a.test"]);
        assert_eq!(due(&config, now), now, "none yet");
        let from = SystemTime::UNIX_EPOCH
            + Duration::from_secs(now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() - 86400);
        kept(&folder, &["a.test", "b.test"], from, 90);
        assert_eq!(due(&config, now), from + Duration::from_secs(60 * 86400));
        // The key is the owner's alone.
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(folder.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        // Another name set (the config changed): due now.
        assert_eq!(due(&acme(&folder, &["a.test"]), now), now);
        assert_eq!(due(&acme(&folder, &["a.test", "b.test", "c.test"]), now), now);
        // A file that is no certificate: due now.
        std::fs::write(folder.join("cert.pem"), "junk").unwrap();
        assert_eq!(due(&config, now), now);
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn a_failed_order_s_wait_outlives_a_restart() {
        let folder = std::env::temp_dir().join(format!("sluice-acme-hold-{}", std::process::id()));
        assert_eq!(held(&folder), None, "no note: order at once");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        hold(&folder, at, Duration::from_secs(240));
        assert_eq!(held(&folder), Some((at, Duration::from_secs(240))));
        // A wait out of bounds is brought within them; a garbled note is none.
        hold(&folder, at, Duration::from_secs(100_000_000));
        assert_eq!(held(&folder), Some((at, RETRY_MAX)));
        std::fs::write(folder.join(RETRY_AFTER), "soon").unwrap();
        assert_eq!(held(&folder), None);
        let _ = std::fs::remove_dir_all(&folder);
    }

    /// The orders' client checks the directory's server against its CA and reads at most
    /// `MAX_ANSWER_BYTES` of an answer: a CA (or what poses as one) cannot fill lbd's memory.
    #[tokio::test]
    async fn the_ca_s_answers_are_read_within_a_bound_from_a_server_its_ca_signed() {
        use http_body_util::Full;
        let pki = crate::proxy::test_bed::Pki::new("acme-client");
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.backend_config(&[b"http/1.1"], false));
        let server = crate::proxy::test_bed::listening(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service =
                    hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                        let size = if request.uri().path() == "/huge" { MAX_ANSWER_BYTES + 1 } else { 10 };
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(bytes::Bytes::from(vec![
                            b'x';
                            size
                        ]))))
                    });
                crate::proxy::test_bed::serve(stream, false, service).await;
            }
        })
        .await;
        let ask = |ca: &Path, path: &str| {
            let mut config = acme(Path::new("/nonexistent"), &["a.test"]);
            config.directory_ca = Some(ca.to_path_buf());
            let client = client(&config).unwrap();
            let request =
                hyper::Request::get(format!("https://{server}{path}")).body(BodyWrapper::default()).unwrap();
            async move {
                let mut answer = client.request(request).await.map_err(|e| e.to_string())?;
                answer.body.into_bytes().await.map(|body| body.len()).map_err(|e| e.to_string())
            }
        };
        assert_eq!(ask(&pki.ca, "/small").await, Ok(10));
        let huge = ask(&pki.ca, "/huge").await;
        assert!(huge.as_ref().is_err_and(|e| e.contains("length limit")), "{huge:?}");
        // A server the CA did not sign is refused.
        assert!(ask(&pki.other_ca, "/small").await.is_err());
    }

    #[test]
    fn an_http_validation_gets_its_tokens_answer_while_its_order_waits() {
        let challenges = Challenges::default();
        let path = |token: &str| format!("{HTTP_PATH}{token}");
        assert_eq!(challenges.http_answer(&path("t1")), None);
        challenges.put_token("a.test".into(), "t1".into(), "t1.thumbprint".into());
        challenges.put_token("b.test".into(), "t2".into(), "t2.thumbprint".into());
        assert_eq!(challenges.http_answer(&path("t1")).as_deref(), Some("t1.thumbprint"));
        assert_eq!(challenges.http_answer("/t1"), None, "only under the challenge path");
        assert_eq!(challenges.http_answer(&path("t3")), None);
        challenges.clear(&["a.test".to_owned()]);
        assert_eq!(challenges.http_answer(&path("t1")), None, "its order is done");
        assert_eq!(challenges.http_answer(&path("t2")).as_deref(), Some("t2.thumbprint"));
        challenges.clear(&["b.test".to_owned()]);
        assert!(!challenges.awaiting_http.load(Ordering::Relaxed), "no order waits: one load a request");
    }

    #[test]
    fn a_validation_gets_the_answer_for_its_name_only() {
        let challenges = Challenges::default();
        assert!(challenges.answer(Some("a.test")).is_none());
        let digest = [7u8; 32];
        challenges.put("a.test".into(), answer("a.test", &digest).unwrap());
        let answered = challenges.answer(Some("A.test")).unwrap();
        assert!(challenges.answer(Some("b.test")).is_none() && challenges.answer(None).is_none());
        // The certificate names the name and carries the digest in the acmeIdentifier
        // extension (1.3.6.1.5.5.7.1.31), critical, as an OCTET STRING.
        let cert = x509_cert::Certificate::from_der(answered.cert[0].as_ref()).unwrap();
        let extensions = cert.tbs_certificate.extensions.unwrap();
        let id = extensions.iter().find(|e| e.extn_id.to_string() == "1.3.6.1.5.5.7.1.31").unwrap();
        assert!(id.critical);
        assert_eq!(id.extn_value.as_bytes(), [&[0x04, 32][..], &digest].concat());
        challenges.clear(&["a.test".to_owned()]);
        assert!(challenges.answer(Some("a.test")).is_none());
    }

    use x509_cert::der::Decode as _;
}
