//! A listener certificate's OCSP response, stapled to its handshakes, checked as it is read:
//! it must be a successful OCSP response about this certificate (by serial), saying "good",
//! before its next update. Anything else is not stapled and the listener says why in its log;
//! the certificate serves all the same (a rotated certificate whose response has not come yet
//! is served at once, its staple once the new file comes). A stale staple would fail clients
//! that insist on one, and tells the rest nothing. The signature is the client's to check.
use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;
use x509_cert::{Certificate, der::Decode};
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

/// What a response file gives the certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum Staple {
    /// Staple these bytes until then (the response's next update; None: it names none).
    Good { der: Vec<u8>, until: Option<SystemTime> },
    /// Staple nothing, for this reason.
    Unusable(String),
}

/// Reads `file` and checks it against the chain's leaf, as of `now`.
pub fn read(file: &Path, leaf: &CertificateDer<'_>, now: SystemTime) -> Staple {
    let checked = std::fs::read(file).map_err(|e| e.to_string()).and_then(|der| {
        let until = check(&der, leaf, now)?;
        Ok(Staple::Good { der, until })
    });
    checked.unwrap_or_else(Staple::Unusable)
}

/// `der` judged as a response about `leaf`: stapled until its next update (None: it names
/// none), or why not.
fn check(der: &[u8], leaf: &CertificateDer<'_>, now: SystemTime) -> Result<Option<SystemTime>, String> {
    let response = OcspResponse::from_der(der).map_err(|e| format!("not an OCSP response ({e})"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!("the responder said {:?}", response.response_status));
    }
    let bytes = response.response_bytes.ok_or("a successful response with no body")?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response ({e})"))?;
    let leaf =
        Certificate::from_der(leaf.as_ref()).map_err(|e| format!("its certificate does not parse ({e})"))?;
    let serial = &leaf.tbs_certificate.serial_number;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id.serial_number == *serial)
        .ok_or("it is about another certificate (no response for this one's serial number)")?;
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

#[cfg(test)]
pub(crate) mod tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

    /// A CA, a leaf it signed, and OCSP responses about the leaf made by `openssl ocsp` as a
    /// CA's responder writes them, in a folder of their own.
    pub struct Responder {
        pub dir: PathBuf,
        pub leaf: CertificateDer<'static>,
        pub leaf_pem: PathBuf,
        pub leaf_key: PathBuf,
    }

    impl Responder {
        pub fn new(tag: &str) -> Responder {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
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
            std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
            std::fs::write(dir.join("leaf.key"), key.serialize_pem()).unwrap();
            Responder {
                leaf: leaf.der().clone(),
                leaf_pem: dir.join("leaf.pem"),
                leaf_key: dir.join("leaf.key"),
                dir,
            }
        }

        /// The responder's answer about the leaf, its CA database saying `status` (`V`alid or
        /// `R`evoked; None: the leaf is not in it), valid for `minutes` (0: no next update).
        pub fn respond(&self, name: &str, status: Option<char>, minutes: u32) -> PathBuf {
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
            let ran = |args: &[&std::ffi::OsStr]| {
                let out = Command::new("openssl").arg("ocsp").args(args).output().unwrap();
                assert!(out.status.success(), "openssl ocsp: {}", String::from_utf8_lossy(&out.stderr));
            };
            let (ca, key) = (self.dir.join("ca.pem"), self.dir.join("ca.key"));
            ran(&[
                "-issuer".as_ref(),
                ca.as_os_str(),
                "-cert".as_ref(),
                self.leaf_pem.as_os_str(),
                "-reqout".as_ref(),
                request.as_os_str(),
            ]);
            let response = self.dir.join(format!("{name}.ocsp"));
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "-index".as_ref(),
                index.as_os_str(),
                "-CA".as_ref(),
                ca.as_os_str(),
                "-rsigner".as_ref(),
                ca.as_os_str(),
                "-rkey".as_ref(),
                key.as_os_str(),
                "-reqin".as_ref(),
                request.as_os_str(),
                "-respout".as_ref(),
                response.as_os_str(),
            ];
            let minutes = minutes.to_string();
            if minutes != "0" {
                args.extend::<[&std::ffi::OsStr; 2]>(["-nmin".as_ref(), minutes.as_ref()]);
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
        let Staple::Good { der, until } = read(&file, &responder.leaf, now) else { panic!() };
        assert_eq!(der, std::fs::read(&file).unwrap());
        let left = until.unwrap().duration_since(now).unwrap();
        assert!(left > Duration::from_secs(58 * 60) && left <= Duration::from_secs(61 * 60), "{left:?}");
        // An hour on, it is stale.
        let later = now + Duration::from_secs(3601);
        assert_eq!(
            read(&file, &responder.leaf, later),
            Staple::Unusable("its next update has passed".into())
        );
        // With no next update, it has no end.
        let endless = responder.respond("endless", Some('V'), 0);
        assert!(matches!(read(&endless, &responder.leaf, later), Staple::Good { until: None, .. }));
    }

    #[test]
    fn a_revoked_or_unknown_certificate_or_a_wrong_file_gets_no_staple() {
        let responder = Responder::new("bad");
        let now = SystemTime::now();
        let revoked = responder.respond("revoked", Some('R'), 60);
        assert_eq!(
            read(&revoked, &responder.leaf, now),
            Staple::Unusable("it says the certificate is revoked".into())
        );
        let unknown = responder.respond("unknown", None, 60);
        assert_eq!(
            read(&unknown, &responder.leaf, now),
            Staple::Unusable("it says the certificate is unknown".into())
        );
        // About another certificate (another CA's leaf, another serial), no OCSP response at
        // all, no file: no staple either.
        let other = Responder::new("other");
        let unusable = |staple: Staple, start: &str| match staple {
            Staple::Unusable(why) => assert!(why.starts_with(start), "{why}"),
            good => panic!("{good:?}"),
        };
        unusable(read(&revoked, &other.leaf, now), "it is about another certificate");
        unusable(read(&responder.leaf_pem, &responder.leaf, now), "not an OCSP response");
        unusable(read(&responder.dir.join("none"), &responder.leaf, now), "No such file");
    }
}
