//! The client's certificate as a backend is told it, once per mTLS connection: Envoy's
//! `X-Forwarded-Client-Cert` (`Hash=…;Subject="…";URI=…;DNS=…`), for a listener with
//! `forward_client_cert`. A client's own field of that name never reaches a backend.
use hyper::header::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_cert::{
    Certificate,
    der::{Decode, oid::AssociatedOid},
    ext::pkix::{SubjectAltName, name::GeneralName},
};

pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The field's value for the client's (leaf) certificate: its SHA-256 in hex, its subject as
/// RFC 4514 writes it, and its URI and DNS names, each `key=value`, joined with `;` (Envoy's
/// order and keys). None for a certificate that does not parse (rustls verified it, so only a
/// certificate with extensions x509-cert does not know).
pub fn details(cert: &CertificateDer<'_>) -> Option<HeaderValue> {
    let parsed = Certificate::from_der(cert.as_ref()).ok()?;
    let mut out = String::from("Hash=");
    for byte in Sha256::digest(cert.as_ref()) {
        out.push_str(&format!("{byte:02x}"));
    }
    pair(&mut out, "Subject", &parsed.tbs_certificate.subject.to_string(), true);
    let names = parsed
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|ext| ext.extn_id == SubjectAltName::OID)
        .filter_map(|ext| SubjectAltName::from_der(ext.extn_value.as_bytes()).ok())
        .flat_map(|names| names.0);
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    for name in names {
        match name {
            GeneralName::UniformResourceIdentifier(uri) => uris.push(uri.to_string()),
            GeneralName::DnsName(name) => dns.push(name.to_string()),
            _ => {}
        }
    }
    for uri in &uris {
        pair(&mut out, "URI", uri, false);
    }
    for name in &dns {
        pair(&mut out, "DNS", name, false);
    }
    HeaderValue::from_bytes(out.as_bytes()).ok()
}

/// Appends `;key=value`: quoted when `quote`, or when the value holds a separator or a quote
/// (`"` and `\` escaped inside); control characters as `\xNN`, so the field stays one value.
fn pair(out: &mut String, key: &str, value: &str, quote: bool) {
    let quote = quote || value.contains([',', ';', '=', '"', '\\', ' ']);
    out.push(';');
    out.push_str(key);
    out.push('=');
    if quote {
        out.push('"');
    }
    for c in value.chars() {
        match c {
            '"' | '\\' if quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_has_the_hash_the_subject_and_the_names() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["client.test".to_string(), "b.test".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI("spiffe://shop/orders".try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "orders, \"eu\"");
        params.distinguished_name.push(DnType::OrganizationName, "Shop");
        let cert = params.self_signed(&key).unwrap();
        let value = details(cert.der()).unwrap();
        let hash: String = Sha256::digest(cert.der().as_ref()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            value.to_str().unwrap(),
            format!(
                "Hash={hash};Subject=\"O=Shop,CN=orders\\\\, \\\\\\\"eu\\\\\\\"\";URI=spiffe://shop/orders;DNS=client.test;DNS=b.test"
            )
        );
    }

    #[test]
    fn values_are_quoted_and_escaped_as_needed() {
        let mut out = String::new();
        pair(&mut out, "DNS", "a.test", false);
        pair(&mut out, "URI", "x;y=\"z\"", false);
        pair(&mut out, "Subject", "CN=a\nb", true);
        assert_eq!(out, ";DNS=a.test;URI=\"x;y=\\\"z\\\"\";Subject=\"CN=a\\x0ab\"");
        assert!(HeaderValue::from_bytes(out.as_bytes()).is_ok());
    }
}
