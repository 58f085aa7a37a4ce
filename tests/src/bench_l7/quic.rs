//! Memory per idle HTTP/3 connection: QUIC connections from the bench's namespace, one request
//! each over h3 (quinn's client), then left open and idle while the proxy's resident memory is
//! read. No peer on this bed serves HTTP/3 (Debian's nginx 1.22 and HAProxy 2.6 are built
//! without QUIC), so the figure stands alone.
use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, Bytes};

use super::NS;

/// How many idle QUIC connections the probe holds.
pub const IDLE_QUIC_CONNECTIONS: usize = 1_000;

/// Opens `n` HTTP/3 connections to the proxy's UDP `port`, makes one request on each and keeps
/// them idle; the growth of the proxy's resident memory per connection.
pub fn idle_memory_per_connection(pid: u32, port: u16, n: usize, ca: &Path) -> Result<f64> {
    let before = crate::rss_bytes(pid);
    let path = format!("/run/netns/{NS}");
    let (done, hold) = std::sync::mpsc::channel::<()>();
    let (measured, measure) = std::sync::mpsc::channel::<Result<()>>();
    let ca = ca.to_owned();
    let client = std::thread::spawn(move || -> Result<()> {
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let opened = tokio::time::timeout(Duration::from_secs(60), open(port, n, &ca)).await;
            let held = match opened {
                Ok(Ok(held)) => {
                    let _ = measured.send(Ok(()));
                    held
                }
                Ok(Err(err)) => {
                    let _ = measured.send(Err(err));
                    return Ok(());
                }
                Err(_) => {
                    let _ =
                        measured.send(Err(anyhow::anyhow!("{n} HTTP/3 connections not open within 60 s")));
                    return Ok(());
                }
            };
            // Held (their drivers running) until the memory is read.
            let _ = tokio::task::spawn_blocking(move || hold.recv_timeout(Duration::from_secs(60))).await;
            drop(held);
            Ok(())
        })
    });
    let opened = measure.recv_timeout(Duration::from_secs(70)).context("the HTTP/3 probe said nothing")?;
    let result = opened.map(|()| {
        std::thread::sleep(Duration::from_secs(1));
        crate::rss_bytes(pid).saturating_sub(before) as f64 / n as f64
    });
    let _ = done.send(());
    client.join().map_err(|_| anyhow::anyhow!("the HTTP/3 probe's thread panicked"))??;
    result
}

/// What keeps a connection open: its request sender, its QUIC connection and its endpoint.
type Held = (h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>, quinn::Connection);

/// `n` connections with one answered request each, from one client endpoint.
async fn open(port: u16, n: usize, ca: &Path) -> Result<(quinn::Endpoint, Vec<Held>)> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("reading the bench CA")? {
        roots.add(cert.context("parsing the bench CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let quic = endpoint.connect(([127, 0, 0, 1], port).into(), "bench.test")?.await?;
        let (mut driver, mut client) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let request = hyper::Request::get("https://bench.test/").body(())?;
        let mut stream = client.send_request(request).await?;
        stream.finish().await?;
        let status = stream.recv_response().await?.status();
        while let Some(mut chunk) = stream.recv_data().await? {
            chunk.advance(chunk.remaining());
        }
        if status != 200 {
            bail!("an idle HTTP/3 probe got {status}");
        }
        held.push((client, quic));
    }
    Ok((endpoint, held))
}
