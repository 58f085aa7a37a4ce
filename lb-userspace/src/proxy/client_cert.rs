//! The client's certificate as a backend is told it, once per mTLS connection: Envoy's
//! `X-Forwarded-Client-Cert` (`Hash=…;Cert="…";Chain="…";Subject="…";URI=…;DNS=…`, the PEMs
//! as `forward_client_cert_details` asks), for a listener with `forward_client_cert`. A client's
//! own field of that name never reaches a backend.
use crate::config::ClientCertDetails;
use hyper::header::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_cert::{
    Certificate,
    der::{Decode, oid::AssociatedOid},
    ext::pkix::{SubjectAltName, name::GeneralName},
};

pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The field's value for the chain a client showed (its leaf first): the leaf's SHA-256 in hex,
/// with `with` the leaf's PEM and the chain's, URL-encoded, then the leaf's subject as RFC 4514
/// writes it, and its URI and DNS names, each `key=value`, joined with `;` (Envoy's order and
/// keys). None for a certificate that does not parse (rustls verified it, so only a
/// certificate with extensions x509-cert does not know).
pub fn details(chain: &[CertificateDer<'_>], with: ClientCertDetails) -> Option<HeaderValue> {
    let cert = chain.first()?;
    let parsed = Certificate::from_der(cert.as_ref()).ok()?;
    let mut out = String::from("Hash=");
    for byte in Sha256::digest(cert.as_ref()) {
        out.push_str(&format!("{byte:02x}"));
    }
    if with.cert {
        pair(&mut out, "Cert", &url_encoded_pem(std::slice::from_ref(cert)), true);
    }
    if with.chain {
        pair(&mut out, "Chain", &url_encoded_pem(chain), true);
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

/// Certificates as PEM, URL-encoded (every byte but RFC 3986's unreserved ones as `%XX`, as
/// Envoy and nginx's `$ssl_client_escaped_cert` write them).
fn url_encoded_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let mut out = String::with_capacity(pem.len() * 5 / 4);
    for byte in pem.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
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
        let value = details(std::slice::from_ref(cert.der()), ClientCertDetails::default()).unwrap();
        let hash: String = Sha256::digest(cert.der().as_ref()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            value.to_str().unwrap(),
            format!(
                "Hash={hash};Subject=\"O=Shop,CN=orders\\\\, \\\\\\\"eu\\\\\\\"\";URI=spiffe://shop/orders;DNS=client.test;DNS=b.test"
            )
        );
    }

    #[test]
    fn the_certificate_and_its_chain_go_as_url_encoded_pem_when_asked() {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["client.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other =
            rcgen::CertificateParams::new(vec!["ca.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let chain = [leaf.der().clone(), other.der().clone()];
        let decode = |encoded: &str| {
            let mut out = Vec::new();
            let mut bytes = encoded.bytes();
            while let Some(b) = bytes.next() {
                match b {
                    b'%' => {
                        let hex: String = [bytes.next().unwrap(), bytes.next().unwrap()]
                            .iter()
                            .map(|&c| c as char)
                            .collect();
                        out.push(u8::from_str_radix(&hex, 16).unwrap());
                    }
                    b => out.push(b),
                }
            }
            String::from_utf8(out).unwrap()
        };
        let field = |with| details(&chain, with).unwrap().to_str().unwrap().to_owned();
        let value = |field: &str, key: &str| {
            let start = field.find(&format!(";{key}=\"")).unwrap() + key.len() + 3;
            field[start..].split('"').next().unwrap().to_owned()
        };
        let both = field(ClientCertDetails { cert: true, chain: true });
        // rcgen's PEM is the same text: 64-column base64 between the markers.
        assert_eq!(decode(&value(&both, "Cert")), leaf.pem().replace("\r\n", "\n"));
        assert_eq!(
            decode(&value(&both, "Chain")),
            leaf.pem().replace("\r\n", "\n") + &other.pem().replace("\r\n", "\n")
        );
        assert!(value(&both, "Cert").starts_with("-----BEGIN%20CERTIFICATE-----%0A"));
        // Envoy's order: Hash, Cert, Chain, Subject, names.
        let (cert_at, chain_at, subject_at) =
            (both.find(";Cert=").unwrap(), both.find(";Chain=").unwrap(), both.find(";Subject=").unwrap());
        assert!(both.starts_with("Hash=") && cert_at < chain_at && chain_at < subject_at, "{both}");
        // Not asked: neither.
        let plain = field(ClientCertDetails::default());
        assert!(!plain.contains("Cert=") && !plain.contains("Chain="), "{plain}");
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
