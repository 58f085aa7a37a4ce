//! A listener certificate's OCSP response, stapled to its handshakes, checked as it is read:
//! it must be a successful OCSP response about this certificate (by its issuer's name and key
//! hashes and its serial), signed by its issuer or by a responder its issuer named for OCSP,
//! saying "good", before its next update. Anything else is not stapled and the listener says
//! why in its log; the certificate serves all the same (a rotated certificate whose response
//! has not come yet is served at once, its staple once the new file comes). A stale or forged
//! staple would fail clients that insist on one (must-staple), and tells the rest nothing.
//! The issuer comes from the certificate's file, as HAProxy and nginx find it: the chain after
//! the leaf.
use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;
use x509_cert::{
    Certificate,
    der::{Decode, Encode, asn1::ObjectIdentifier},
    ext::pkix::ExtendedKeyUsage,
    spki::AlgorithmIdentifierOwned,
};
use x509_ocsp::{BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus, ResponderId};

/// What a response file gives the certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum Staple {
    /// Staple these bytes until then (the response's next update; None: it names none).
    Good { der: Vec<u8>, until: Option<SystemTime> },
    /// Staple nothing, for this reason.
    Unusable(String),
}

/// Reads `file` and checks it against the chain's leaf (`chain[0]`, its issuer after it), as of
/// `now`.
pub fn read(file: &Path, chain: &[CertificateDer<'_>], now: SystemTime) -> Staple {
    let checked = std::fs::read(file).map_err(|e| e.to_string()).and_then(|der| {
        let until = check(&der, chain, now)?;
        Ok(Staple::Good { der, until })
    });
    checked.unwrap_or_else(Staple::Unusable)
}

/// `der` judged as a response about the chain's leaf: stapled until its next update (None: it
/// names none), or why not.
fn check(der: &[u8], chain: &[CertificateDer<'_>], now: SystemTime) -> Result<Option<SystemTime>, String> {
    let response = OcspResponse::from_der(der).map_err(|e| format!("not an OCSP response ({e})"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!("the responder said {:?}", response.response_status));
    }
    let bytes = response.response_bytes.ok_or("a successful response with no body")?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response ({e})"))?;
    let parse = |der: &CertificateDer<'_>| Certificate::from_der(der.as_ref());
    let leaf = parse(&chain[0]).map_err(|e| format!("its certificate does not parse ({e})"))?;
    let serial = &leaf.tbs_certificate.serial_number;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id.serial_number == *serial)
        .ok_or("it is about another certificate (no response for this one's serial number)")?;
    let (issuer, issuer_der) = chain[1..]
        .iter()
        .find_map(|der| parse(der).ok().filter(|c| c.tbs_certificate.subject == leaf.tbs_certificate.issuer).map(|c| (c, der)))
        .ok_or("the certificate's file holds no issuer to check it against (put the chain after the certificate)")?;
    if !names(&single.cert_id, &issuer)? {
        return Err("it is about another issuer's certificate (with the same serial number)".into());
    }
    signed_by_issuer(&basic, &issuer, issuer_der, now)?;
    if !matches!(single.cert_status, CertStatus::Good(_)) {
        let status = if matches!(single.cert_status, CertStatus::Revoked(_)) { "revoked" } else { "unknown" };
        return Err(format!("it says the certificate is {status}"));
    }
    let until = single.next_update.map(|t| SystemTime::UNIX_EPOCH + t.0.to_unix_duration());
    if until.is_some_and(|until| until <= now) {
        return Err("its next update has passed".into());
    }
    if SystemTime::UNIX_EPOCH + single.this_update.0.to_unix_duration() > now + Duration::from_secs(300) {
        return Err("it is dated in the future".into());
    }
    Ok(until)
}

/// Whether `id` names a certificate of `issuer`: its hashes of the issuer's name and key.
fn names(id: &CertId, issuer: &Certificate) -> Result<bool, String> {
    let name = issuer.tbs_certificate.subject.to_der().map_err(|e| e.to_string())?;
    let key = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    let hash = |bytes: &[u8]| digest(&id.hash_algorithm.oid, bytes);
    Ok(hash(&name)?.as_ref() == id.issuer_name_hash.as_bytes()
        && hash(key)?.as_ref() == id.issuer_key_hash.as_bytes())
}

/// The hashes a certificate ID may name (RFC 6960 and 5912); SHA-1 also names a responder by key.
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// `bytes` hashed by the algorithm `oid` names (those RFC 6960 and 5912 list for a CertId).
fn digest(oid: &ObjectIdentifier, bytes: &[u8]) -> Result<ring::digest::Digest, String> {
    let algorithm = match *oid {
        SHA1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        SHA256 => &ring::digest::SHA256,
        SHA384 => &ring::digest::SHA384,
        SHA512 => &ring::digest::SHA512,
        other => return Err(format!("its certificate ID is hashed by an unknown algorithm ({other})")),
    };
    Ok(ring::digest::digest(algorithm, bytes))
}

/// The response's signature checked: by the issuer itself, or by a responder certificate it
/// carries that the issuer signed for OCSP signing (RFC 6960 §4.2.2.2), valid now.
fn signed_by_issuer(
    basic: &BasicOcspResponse,
    issuer: &Certificate,
    issuer_der: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), String> {
    let responder = &basic.tbs_response_data.responder_id;
    let message = basic.tbs_response_data.to_der().map_err(|e| e.to_string())?;
    let signature = basic.signature.raw_bytes();
    if is(responder, issuer)? {
        return match verifies(issuer_der, &basic.signature_algorithm, &message, signature) {
            true => Ok(()),
            false => Err("its signature is not its issuer's".into()),
        };
    }
    let delegate = basic
        .certs
        .iter()
        .flatten()
        .find(|cert| is(responder, cert).unwrap_or(false))
        .ok_or("it is signed by neither the certificate's issuer nor a responder it carries")?;
    let delegate_der = CertificateDer::from(delegate.to_der().map_err(|e| e.to_string())?);
    let tbs = delegate.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    if !verifies(issuer_der, &delegate.signature_algorithm, &tbs, delegate.signature.raw_bytes()) {
        return Err("its responder's certificate is not signed by the certificate's issuer".into());
    }
    const OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
    let for_ocsp = delegate
        .tbs_certificate
        .get::<ExtendedKeyUsage>()
        .ok()
        .flatten()
        .is_some_and(|(_, usage)| usage.0.contains(&OCSP_SIGNING));
    if !for_ocsp {
        return Err("its responder's certificate is not for OCSP signing".into());
    }
    let (not_before, not_after) = crate::proxy::validity::of(delegate);
    if now < not_before || not_after < now {
        return Err("its responder's certificate is not valid now".into());
    }
    match verifies(&delegate_der, &basic.signature_algorithm, &message, signature) {
        true => Ok(()),
        false => Err("its signature is not its responder's".into()),
    }
}

/// Whether the response's responder ID names `cert`: by its subject, or by its key's SHA-1.
fn is(responder: &ResponderId, cert: &Certificate) -> Result<bool, String> {
    Ok(match responder {
        ResponderId::ByName(name) => *name == cert.tbs_certificate.subject,
        ResponderId::ByKey(hash) => {
            let key = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
            digest(&SHA1, key)?.as_ref() == hash.as_bytes()
        }
    })
}

/// Whether `signature` over `message` verifies with `signer`'s key by `algorithm`, with the
/// verifiers rustls checks handshakes with (ECDSA, Ed25519, RSA PKCS#1 and PSS; not SHA-1).
fn verifies(
    signer: &CertificateDer<'_>,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signer) = webpki::EndEntityCert::try_from(signer) else { return false };
    // pki-types names an algorithm by its identifier's contents (its SEQUENCE's inside).
    let Ok(mut id) = algorithm.oid.to_der() else { return false };
    if let Some(parameters) = &algorithm.parameters {
        let Ok(parameters) = parameters.to_der() else { return false };
        id.extend_from_slice(&parameters);
    }
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|verifier| verifier.signature_alg_id().as_ref() == id.as_slice())
        .any(|verifier| signer.verify_signature(*verifier, message, signature).is_ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{ffi::OsStr, path::PathBuf, process::Command};

    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    use super::*;

    /// A CA, a leaf it signed, and OCSP responses about the leaf made by `openssl ocsp` as a
    /// CA's responder writes them, in a folder of their own.
    pub struct Responder {
        pub dir: PathBuf,
        /// The leaf, then the CA.
        pub chain: Vec<CertificateDer<'static>>,
        /// The leaf and the CA, as a certificate file with its chain holds them.
        pub leaf_pem: PathBuf,
        pub leaf_key: PathBuf,
        issuer: Issuer<'static, KeyPair>,
    }

    /// Who makes a response: the issuer its request names, and the certificate and key that
    /// sign it.
    struct Signer {
        issuer: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        /// The response names its signer by key hash (else by name).
        by_key: bool,
    }

    impl Responder {
        pub fn new(tag: &str) -> Responder {
            let dir = std::env::temp_dir().join(format!("sluice-ocsp-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "OCSP test CA");
            let ca = params.self_signed(&ca_key).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
            let issuer = Issuer::new(params, ca_key);
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec!["stapled.test".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.join("leaf.pem"), leaf.pem() + &ca.pem()).unwrap();
            std::fs::write(dir.join("leaf.key"), key.serialize_pem()).unwrap();
            Responder {
                chain: vec![leaf.der().clone(), ca.der().clone()],
                leaf_pem: dir.join("leaf.pem"),
                leaf_key: dir.join("leaf.key"),
                issuer,
                dir,
            }
        }

        /// The CA itself as the responder.
        fn ca(&self) -> Signer {
            let ca = self.dir.join("ca.pem");
            Signer { issuer: ca.clone(), cert: ca, key: self.dir.join("ca.key"), by_key: false }
        }

        /// A responder certificate the CA signed, for OCSP signing or not.
        fn delegate(&self, name: &str, for_ocsp: bool) -> Signer {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            if for_ocsp {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
            }
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let (cert_path, key_path) =
                (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            Signer { issuer: self.dir.join("ca.pem"), cert: cert_path, key: key_path, by_key: true }
        }

        /// The responder's answer about the leaf, its CA database saying `status` (`V`alid or
        /// `R`evoked; None: the leaf is not in it), valid for `minutes` (0: no next update).
        pub fn respond(&self, name: &str, status: Option<char>, minutes: u32) -> PathBuf {
            self.respond_as(name, status, minutes, &self.ca())
        }

        /// The same, made by `signer`.
        fn respond_as(&self, name: &str, status: Option<char>, minutes: u32, signer: &Signer) -> PathBuf {
            let serial = Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(&self.leaf_pem)
                .output()
                .unwrap();
            let serial =
                String::from_utf8_lossy(&serial.stdout).trim().trim_start_matches("serial=").to_owned();
            let line = match status {
                Some('R') => {
                    format!("R\t300101000000Z\t240101000000Z\t{serial}\tunknown\t/CN=stapled.test\n")
                }
                Some(_) => format!("V\t300101000000Z\t\t{serial}\tunknown\t/CN=stapled.test\n"),
                None => String::new(),
            };
            let index = self.dir.join(format!("{name}.index"));
            std::fs::write(&index, line).unwrap();
            let request = self.dir.join(format!("{name}.req"));
            let ran = |args: &[&OsStr]| {
                let out = Command::new("openssl").arg("ocsp").args(args).output().unwrap();
                assert!(out.status.success(), "openssl ocsp: {}", String::from_utf8_lossy(&out.stderr));
            };
            ran(&[
                "-issuer".as_ref(),
                signer.issuer.as_os_str(),
                "-cert".as_ref(),
                self.leaf_pem.as_os_str(),
                "-reqout".as_ref(),
                request.as_os_str(),
            ]);
            let response = self.dir.join(format!("{name}.ocsp"));
            let ca = self.dir.join("ca.pem");
            let mut args: Vec<&OsStr> = vec![
                "-index".as_ref(),
                index.as_os_str(),
                "-CA".as_ref(),
                ca.as_os_str(),
                "-rsigner".as_ref(),
                signer.cert.as_os_str(),
                "-rkey".as_ref(),
                signer.key.as_os_str(),
                "-reqin".as_ref(),
                request.as_os_str(),
                "-respout".as_ref(),
                response.as_os_str(),
            ];
            if signer.by_key {
                args.push("-resp_key_id".as_ref());
            }
            let minutes = minutes.to_string();
            if minutes != "0" {
                args.extend::<[&OsStr; 2]>(["-nmin".as_ref(), minutes.as_ref()]);
            }
            ran(&args);
            response
        }
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_good_response_is_stapled_until_its_next_update() {
        let responder = Responder::new("good");
        let now = SystemTime::now();
        let file = responder.respond("good", Some('V'), 60);
        let Staple::Good { der, until } = read(&file, &responder.chain, now) else { panic!() };
        assert_eq!(der, std::fs::read(&file).unwrap());
        let left = until.unwrap().duration_since(now).unwrap();
        assert!(left > Duration::from_secs(58 * 60) && left <= Duration::from_secs(61 * 60), "{left:?}");
        // An hour on, it is stale.
        let later = now + Duration::from_secs(3601);
        assert_eq!(
            read(&file, &responder.chain, later),
            Staple::Unusable("its next update has passed".into())
        );
        // With no next update, it has no end.
        let endless = responder.respond("endless", Some('V'), 0);
        assert!(matches!(read(&endless, &responder.chain, later), Staple::Good { until: None, .. }));
    }

    #[test]
    fn a_revoked_or_unknown_certificate_or_a_wrong_file_gets_no_staple() {
        let responder = Responder::new("bad");
        let now = SystemTime::now();
        let revoked = responder.respond("revoked", Some('R'), 60);
        assert_eq!(
            read(&revoked, &responder.chain, now),
            Staple::Unusable("it says the certificate is revoked".into())
        );
        let unknown = responder.respond("unknown", None, 60);
        assert_eq!(
            read(&unknown, &responder.chain, now),
            Staple::Unusable("it says the certificate is unknown".into())
        );
        // About another certificate (another CA's leaf, another serial), no OCSP response at
        // all, no file: no staple either.
        let other = Responder::new("other");
        let unusable = |staple: Staple, start: &str| match staple {
            Staple::Unusable(why) => assert!(why.starts_with(start), "{why}"),
            good => panic!("{good:?}"),
        };
        unusable(read(&revoked, &other.chain, now), "it is about another certificate");
        unusable(read(&responder.leaf_pem, &responder.chain, now), "not an OCSP response");
        unusable(read(&responder.dir.join("none"), &responder.chain, now), "No such file");
    }

    #[test]
    fn only_a_response_the_issuer_or_its_ocsp_responder_signed_is_stapled() {
        let responder = Responder::new("signers");
        let now = SystemTime::now();
        let unusable = |staple: Staple, start: &str| match staple {
            Staple::Unusable(why) => assert!(why.starts_with(start), "{why}"),
            good => panic!("{good:?}"),
        };
        // A responder the CA named for OCSP signing (carried in the response, named by its key).
        let delegated = responder.delegate("ocsp-signer", true);
        let file = responder.respond_as("delegated", Some('V'), 60, &delegated);
        assert!(matches!(read(&file, &responder.chain, now), Staple::Good { .. }));
        // One the CA signed for something else.
        let file = responder.respond_as("tls-only", Some('V'), 60, &responder.delegate("tls-only", false));
        unusable(read(&file, &responder.chain, now), "its responder's certificate is not for OCSP signing");
        // Another CA of the same name signing: its key is not the issuer's.
        let other = Responder::new("forger");
        let forger =
            Signer { cert: other.dir.join("ca.pem"), key: other.dir.join("ca.key"), ..responder.ca() };
        let file = responder.respond_as("forged", Some('V'), 60, &forger);
        unusable(read(&file, &responder.chain, now), "its signature is not its issuer's");
        // The issuer's own signature on an ID naming the other CA's key with the leaf's serial.
        let about_other = Signer { issuer: other.dir.join("ca.pem"), ..responder.ca() };
        let file = responder.respond_as("about-other", Some('V'), 60, &about_other);
        unusable(read(&file, &responder.chain, now), "it is about another issuer's certificate");
        // A certificate file without its chain: nothing to check against.
        let good = responder.respond("good", Some('V'), 60);
        assert!(matches!(read(&good, &responder.chain, now), Staple::Good { .. }));
        unusable(read(&good, &responder.chain[..1], now), "the certificate's file holds no issuer");
    }
}
