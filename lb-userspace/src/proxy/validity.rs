//! A certificate's validity period (not before, not after) as system times: a listener's
//! certificate's expiry (`tls`), when an ACME certificate is due (`acme`), and whether an OCSP
//! responder's certificate is valid now (`ocsp`).
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_cert::{Certificate, der::Decode as _};

/// A parsed certificate's not-before and not-after.
pub fn of(cert: &Certificate) -> (SystemTime, SystemTime) {
    let at = |t: x509_cert::time::Time| SystemTime::UNIX_EPOCH + t.to_unix_duration();
    let validity = &cert.tbs_certificate.validity;
    (at(validity.not_before), at(validity.not_after))
}

/// A certificate's not-before and not-after; None when it does not parse.
pub fn of_der(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    Certificate::from_der(cert.as_ref()).ok().as_ref().map(of)
}
