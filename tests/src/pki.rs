//! A test PKI made at run time with rcgen (no private key is committed): a CA, and leaf
//! certificates signed by it, written as PEM files.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA that signs leaf certificates into a directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub dir: PathBuf,
    /// The CA certificate (for curl --cacert, openssl -CAfile).
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Sluice test CA");
        let cert = params.self_signed(&key)?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.pem())?;
        Ok(TestCa { issuer: Issuer::new(params, key), dir: dir.to_owned(), cert: path })
    }

    /// Signs a leaf for `names` (the first is also its CN) into `stem.pem` / `stem.key`.
    /// `rsa`: an RSA-2048 key (made by openssl), else ECDSA P-256.
    pub fn leaf(&self, stem: &str, names: &[&str], rsa: bool) -> Result<(PathBuf, PathBuf)> {
        let key = if rsa {
            let out = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
                .output()
                .context("openssl genpkey")?;
            KeyPair::from_pem(&String::from_utf8(out.stdout)?)?
        } else {
            KeyPair::generate()?
        };
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) =
            (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}.key")));
        // Written to temporary names and renamed, as an operator's deploy would.
        std::fs::write(cert_path.with_extension("pem.tmp"), cert.pem())?;
        std::fs::write(key_path.with_extension("key.tmp"), key.serialize_pem())?;
        std::fs::set_permissions(
            key_path.with_extension("key.tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        std::fs::rename(key_path.with_extension("key.tmp"), &key_path)?;
        std::fs::rename(cert_path.with_extension("pem.tmp"), &cert_path)?;
        Ok((cert_path, key_path))
    }
}
