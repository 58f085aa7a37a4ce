//! lbd's own HTTPS requests (ACME orders, JWK Sets): hyper's client over rustls, https only,
//! the server checked against the system's roots or against a CA file the operator names.
use std::{path::Path, sync::Arc};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// A client whose requests carry bodies of type `B`.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A client that trusts the system's roots, or only the certificates in `ca` (a company's own
/// CA, a test CA); the error says what is wrong with them.
pub fn build<B>(ca: Option<&Path>) -> Result<HttpsClient<B>, String>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        None => builder.try_with_platform_verifier().map_err(|e| e.to_string())?,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}
