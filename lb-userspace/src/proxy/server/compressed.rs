//! A route's compression through a listener: an HTTP/1.1 client that accepts gzip gets a
//! backend's whole answer gzipped with its coded length, a streamed one gzipped and chunked;
//! an HTTP/2 client gets it gzipped too; a client that does not accept gzip gets it as it was.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy::test_bed::{self, gunzip};

const PAGE: &str = "<html><body><p>The same words again and again and again and again.</p></body></html>";

/// A backend answering `/whole` with a page and its length, `/streamed` with the page in two
/// chunks, 50 ms apart.
async fn backend() -> SocketAddr {
    test_bed::listening(|mut stream| async move {
        let mut read = Vec::new();
        while let Some(end) = test_bed::head_read(&mut stream, &mut read).await {
            let streamed = read.starts_with(b"GET /streamed ");
            read.drain(..end);
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n";
            if streamed {
                let half = PAGE.len() / 2;
                let first =
                    format!("{head}Transfer-Encoding: chunked\r\n\r\n{half:x}\r\n{}\r\n", &PAGE[..half]);
                if stream.write_all(first.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let rest = format!("{:x}\r\n{}\r\n0\r\n\r\n", PAGE.len() - half, &PAGE[half..]);
                let _ = stream.write_all(rest.as_bytes()).await;
            } else {
                let whole = format!("{head}Content-Length: {}\r\n\r\n{PAGE}", PAGE.len());
                let _ = stream.write_all(whole.as_bytes()).await;
            }
        }
    })
    .await
}

async fn listener() -> SocketAddr {
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\ncompress = {{ min_bytes = 32 }}\n",
        backend().await.port()
    );
    super::mutations::start_listener(listener, &routes).await.0
}

/// One HTTP/1.1 exchange on a new connection that closes after it: the answer's head
/// (lowercase) and its body as sent (chunks undone).
async fn get(address: SocketAddr, path: &str, accept: &str) -> (String, Vec<u8>) {
    let mut client = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.unwrap().unwrap();
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let mut body = got[end..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let (mut data, mut rest) = (Vec::new(), &body[..]);
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            data.extend_from_slice(&rest[line + 2..line + 2 + size]);
            rest = &rest[line + 4 + size..];
        }
        body = data;
    }
    (head, body)
}

#[tokio::test]
async fn an_http1_client_that_takes_gzip_gets_it_whole_or_streamed() {
    let address = listener().await;
    let (head, body) = get(address, "/whole", "br, gzip").await;
    assert!(head.contains("\r\ncontent-encoding: gzip\r\n"), "{head}");
    assert!(head.contains("\r\nvary: accept-encoding\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "a whole answer has its coded length: {head}"
    );
    assert!(body.len() < PAGE.len(), "{} bytes coded, {} plain", body.len(), PAGE.len());
    assert_eq!(gunzip(&body), PAGE);

    let (head, body) = get(address, "/streamed", "gzip").await;
    assert!(
        head.contains("\r\ncontent-encoding: gzip\r\n") && head.contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(gunzip(&body), PAGE);

    for accept in ["identity", "gzip;q=0"] {
        let (head, body) = get(address, "/whole", accept).await;
        assert!(!head.contains("content-encoding"), "{accept}: {head}");
        assert_eq!(body, PAGE.as_bytes(), "{accept}");
    }
}

#[tokio::test]
async fn an_http2_client_that_takes_gzip_gets_it() {
    let address = listener().await;
    let io = TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    for path in ["/whole", "/streamed"] {
        let request = hyper::Request::get(format!("http://a.test{path}"))
            .header("accept-encoding", "gzip")
            .body(())
            .unwrap();
        let (answer, _) = client.clone().ready().await.unwrap().send_request(request, true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.headers()["content-encoding"], "gzip", "{path}");
        let mut body = answer.into_body();
        let mut coded = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            coded.extend_from_slice(&data);
        }
        assert_eq!(gunzip(&coded), PAGE, "{path}");
    }
}
