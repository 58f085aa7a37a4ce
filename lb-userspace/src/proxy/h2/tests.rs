//! The HTTP/2 server end to end over in-memory streams: requests in, answers out, resets.
use std::{
    future::{Future, poll_fn},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, server::Builder};
use hyper::{
    HeaderMap, Request, Response,
    body::Frame,
    header::{self, HeaderValue},
};

use super::{
    WINDOW, answer,
    answer::EARLY_RESET_MS,
    builder,
    connection::{Ended, RESETS_JUDGED_AFTER, Served},
    request::join_cookies,
};
use crate::{
    config::Listener,
    proxy::{body::Body, phase::guard::Malformed},
};

/// Serves one connection with an echo: the request's body and trailers back, with a
/// connection field the stream must strip.
fn echo(io: tokio::io::DuplexStream) -> impl Future<Output = Result<Ended, h2::Error>> {
    use http_body_util::BodyExt;
    let mut builder = Builder::new();
    builder.initial_window_size(WINDOW).initial_connection_window_size(WINDOW);
    Served::new(io, &builder, |request: Request<Body>, respond| {
        let echoed = async move {
            let collected = request.into_body().collect().await.expect("the request's body");
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            let mut frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(body))];
            if let Some(trailers) = trailers {
                frames.push(Ok(Frame::trailers(trailers)));
            }
            let mut response =
                Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
            response.headers_mut().insert(header::CONNECTION, "close".parse().unwrap());
            response
        };
        answer(echoed, respond, None)
    })
}

#[tokio::test]
async fn an_answer_of_known_size_says_its_length_once_and_is_dated() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
        let answered = async move {
            let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
            if request.uri().path() == "/sized" {
                response.headers_mut().insert(header::CONTENT_LENGTH, "5".parse().unwrap());
            }
            response
        };
        answer(answered, respond, None)
    });
    let server = tokio::spawn(server);
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    for path in ["/sized", "/unsized"] {
        let request = Request::get(format!("http://test{path}")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
        let lengths: Vec<_> = response.headers().get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"], "{path}");
        assert_eq!(response.headers().get_all(header::DATE).iter().count(), 1, "{path}");
    }
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[test]
fn cookie_crumbs_are_joined_into_one_field() {
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, HeaderValue::from_static("only=1"));
    for crumb in ["b=2", "", "c=3; d=4"] {
        headers.append(header::COOKIE, HeaderValue::from_static(crumb));
    }
    join_cookies(&mut headers);
    assert_eq!(headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["only=1; b=2; c=3; d=4"]);
}

#[tokio::test]
async fn a_request_s_cookie_crumbs_reach_the_pipeline_as_one_field() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
        let cookies: Vec<_> = request.headers().get_all(header::COOKIE).iter().cloned().collect();
        let answered = async move {
            let said = cookies.iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join("|");
            Response::new(http_body_util::Full::new(Bytes::from(said)))
        };
        answer(answered, respond, None)
    });
    let server = tokio::spawn(server);
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::get("http://test/").body(()).unwrap();
    for crumb in ["a=1", "b=2"] {
        request.headers_mut().append(header::COOKIE, HeaderValue::from_static(crumb));
    }
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
    let mut body = response.into_body();
    let mut said = Vec::new();
    while let Some(chunk) = body.data().await {
        said.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(said, b"a=1; b=2");
    drop((body, client));
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_request_with_a_padded_field_value_is_marked_malformed() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
        let status = match request.extensions().get::<Malformed>() {
            Some(_) => 400,
            None => 200,
        };
        let answered = async move {
            let mut response = Response::new(http_body_util::Full::new(Bytes::new()));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            response
        };
        answer(answered, respond, None)
    });
    let server = tokio::spawn(server);
    let (client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    for (value, status) in [(" v", 400), ("v\t", 400), ("v", 200), ("a b", 200), ("", 200)] {
        let mut request = Request::get("http://test/").body(()).unwrap();
        request.headers_mut().insert("x-field", HeaderValue::from_static(value));
        let (response, _) = client.clone().ready().await.unwrap().send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
        assert_eq!(response.status(), status, "{value:?}");
    }
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn bodies_larger_than_the_windows_go_both_ways_with_trailers() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(echo(server_io));
    // The client's default windows (64 KiB) hold the answer back until it reads.
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let body: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let request = Request::post("http://test/echo").body(()).unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let sending = {
        let body = body.clone();
        tokio::spawn(async move {
            let mut rest = body;
            while !rest.is_empty() {
                send.reserve_capacity(rest.len().min(64 * 1024));
                let granted = poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
                send.send_data(rest.split_to(granted.min(rest.len())), false).unwrap();
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", "42".parse().unwrap());
            send.send_trailers(trailers).unwrap();
        })
    };
    // A side that did not give its window back would stall here.
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key(header::DATE));
    assert!(!response.headers().contains_key(header::CONNECTION));
    let mut recv = response.into_body();
    let mut echoed = Vec::new();
    while let Some(data) = tokio::time::timeout(Duration::from_secs(10), recv.data()).await.unwrap() {
        let data = data.unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        echoed.extend_from_slice(&data);
    }
    assert!(echoed == body, "the echo differs ({} bytes of {})", echoed.len(), body.len());
    let trailers = recv.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["x-sum"], "42");
    sending.await.unwrap();
    drop((recv, client));
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(echo(server_io));
    // The preface, empty SETTINGS, a GET on stream 1 (HPACK: GET, http, `/`, `:authority`
    // a), then the end of the client's input.
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    input.extend(b"\0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x01\x01a");
    client.write_all(&input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.unwrap().unwrap();
    assert!(crate::proxy::test_bed::answered_200(&got), "no answer in {got:?}");
    // And the connection ended once it was answered.
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_reset_stream_drops_its_answer() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let mut dropped_tx = Some(dropped_tx);
    let builder = Builder::new();
    let server = Served::new(server_io, &builder, move |_request: Request<Body>, respond| {
        // An answer that never comes; its end shows as the channel's sender dropped.
        let dropped = dropped_tx.take();
        answer(
            async move {
                let _dropped = dropped;
                std::future::pending::<()>().await;
                Response::new(crate::proxy::body::empty())
            },
            respond,
            None,
        )
    });
    let server = tokio::spawn(server);
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let (_response, mut send) =
        client.send_request(Request::get("http://test/").body(()).unwrap(), true).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send.send_reset(Reason::CANCEL);
    let dropped = tokio::time::timeout(Duration::from_secs(5), dropped_rx).await;
    assert!(dropped.is_ok(), "the reset stream's answer is still held");
    drop(client);
    server.abort();
}

/// A connection whose handler counts its streams and answers those to `/now` at once, the
/// others never.
fn counting(
    io: tokio::io::DuplexStream,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<Result<Ended, h2::Error>> {
    tokio::spawn(Served::new(io, &builder(&test_listener()), move |request: Request<Body>, respond| {
        accepted.fetch_add(1, Ordering::Relaxed);
        let now = request.uri().path() == "/now";
        let answered = async move {
            if !now {
                std::future::pending::<()>().await;
            }
            Response::new(crate::proxy::body::empty())
        };
        answer(answered, respond, None)
    }))
}

fn test_listener() -> Listener {
    let text = "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n";
    crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap().listeners[0].clone()
}

/// Opens a stream to each of `paths`, waits until the server has taken them all up (so h2's
/// own check of streams reset before that does not apply) and `held` more, then resets those
/// not to `/now` before their answers; false once the connection refuses new streams.
async fn opened_then_reset(
    client: &mut h2::client::SendRequest<Bytes>,
    accepted: &std::sync::atomic::AtomicUsize,
    paths: impl Iterator<Item = &'static str>,
    held: Duration,
) -> bool {
    let mut sent = Vec::new();
    for path in paths {
        // Ready: under the server's limit on streams (the streams just reset have left it).
        match tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await {
            Ok(Ok(ready)) => *client = ready,
            _ => return false,
        }
        let request = Request::get(format!("http://test{path}")).body(()).unwrap();
        match client.send_request(request, true) {
            Ok((response, send)) => sent.push((path, response, send)),
            Err(_) => return false,
        }
    }
    let target = accepted.load(Ordering::Relaxed) + sent.len();
    let taken_up = async {
        while accepted.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), taken_up).await.is_err() {
        return false;
    }
    tokio::time::sleep(held).await;
    for (path, response, mut send) in sent {
        match path {
            "/now" => assert_eq!(response.await.expect("an answer").status(), 200),
            _ => send.send_reset(Reason::CANCEL),
        }
    }
    true
}

#[tokio::test]
async fn a_client_that_resets_most_streams_before_their_answers_is_cut() {
    let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = counting(server_io, accepted.clone());
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut batches = 0;
    let never = || std::iter::repeat_n("/never", 100);
    while batches < 20 && opened_then_reset(&mut client, &accepted, never(), Duration::ZERO).await {
        batches += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), server).await.expect("the connection ends");
    assert_eq!(ended.unwrap().unwrap(), Ended::CutForResets);
    // Cut as its 500th stream's reset came in: no stream after it was taken up.
    let taken = accepted.load(Ordering::Relaxed);
    assert!((RESETS_JUDGED_AFTER as usize..=RESETS_JUDGED_AFTER as usize + 100).contains(&taken), "{taken}");
    let err = connection.await.unwrap().expect_err("a GOAWAY");
    assert_eq!(err.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{err}");
}

#[tokio::test]
async fn a_client_that_resets_some_streams_keeps_its_connection() {
    let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = counting(server_io, accepted.clone());
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    // 2,000 streams, 45% of them reset before their answers (a browser leaving pages).
    let paths = || (0..100).map(|i| if i < 45 { "/never" } else { "/now" });
    for batch in 0..20 {
        assert!(
            opened_then_reset(&mut client, &accepted, paths(), Duration::ZERO).await,
            "cut at batch {batch}"
        );
    }
    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test]
async fn a_client_that_gives_up_long_waits_keeps_its_connection() {
    let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = counting(server_io, accepted.clone());
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    // 600 streams, every one reset before its answer, but each after EARLY_RESET_MS.
    let held = Duration::from_millis(EARLY_RESET_MS + 100);
    for batch in 0..3 {
        let never = std::iter::repeat_n("/never", 200);
        assert!(opened_then_reset(&mut client, &accepted, never, held).await, "cut at batch {batch}");
    }
    assert!(opened_then_reset(&mut client, &accepted, std::iter::once("/now"), Duration::ZERO).await);
    assert!(!server.is_finished());
    server.abort();
}
