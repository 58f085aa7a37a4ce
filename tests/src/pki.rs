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
        // The CA's key too, for its OCSP responder (`ocsp_response`).
        std::fs::write(dir.join("ca.key"), key.serialize_pem())?;
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

    /// Puts the CA after the leaf in its certificate file, as a full chain holds them (lbd
    /// checks a stapled OCSP response against the issuer it finds there).
    pub fn chain(&self, leaf: &Path) -> Result<()> {
        let chain = std::fs::read_to_string(leaf)? + &std::fs::read_to_string(&self.cert)?;
        std::fs::write(leaf.with_extension("pem.tmp"), chain)?;
        std::fs::rename(leaf.with_extension("pem.tmp"), leaf)?;
        Ok(())
    }

    /// The CA's OCSP responder's answer (`openssl ocsp`, DER) that `leaf` (a PEM this CA
    /// signed) is good, for `minutes`, written to `out`.
    pub fn ocsp_response(&self, leaf: &Path, minutes: u32, out: &Path) -> Result<()> {
        let openssl = |args: &[&str]| -> Result<String> {
            let ran = std::process::Command::new("openssl").args(args).output().context("openssl")?;
            anyhow::ensure!(
                ran.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&ran.stderr)
            );
            Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
        };
        let path = |p: &Path| p.to_str().unwrap_or_default().to_owned();
        let serial = openssl(&["x509", "-noout", "-serial", "-in", &path(leaf)])?;
        let serial = serial.trim().trim_start_matches("serial=");
        let (index, request) = (out.with_extension("index"), out.with_extension("req"));
        std::fs::write(&index, format!("V\t300101000000Z\t\t{serial}\tunknown\t/CN=leaf\n"))?;
        let (ca, key) = (path(&self.cert), path(&self.dir.join("ca.key")));
        openssl(&["ocsp", "-issuer", &ca, "-cert", &path(leaf), "-reqout", &path(&request)])?;
        openssl(&[
            "ocsp",
            "-index",
            &path(&index),
            "-CA",
            &ca,
            "-rsigner",
            &ca,
            "-rkey",
            &key,
            "-reqin",
            &path(&request),
            "-respout",
            &path(out),
            "-nmin",
            &minutes.to_string(),
        ])?;
        Ok(())
    }
}
