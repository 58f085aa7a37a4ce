//! A request stream's answer: the backend's interim answers sent while it waits, its head sent
//! with Date and length, its body a DATA frame per chunk as QUIC's flow control lets it go,
//! then its trailers, then the stream's end.
use std::{
    future::{Future, poll_fn},
    sync::Arc,
    task::Poll,
};

use bytes::Bytes;
use futures_util::future::Either;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Response, StatusCode, body::Body as HttpBody};

use super::SendHalf;
use crate::proxy::{access_log::ClientConn, h2, idle::Activity, phase::headers};

/// Why an answer stopped before its end (logged; the stream is reset).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    H3(#[from] h3::error::StreamError),
    #[error("the body failed: {0}")]
    Body(String),
}

/// Sends what `answer` gives on `send`: the interim answers the backend gave meanwhile (from
/// `conn`'s, which this request takes right after each poll of its own answer: a connection's
/// requests run on one worker thread, one poll at a time), then the answer. Each chunk marks the
/// connection active.
pub async fn answer<F, B>(answer: F, mut send: SendHalf, conn: Arc<ClientConn>, activity: Arc<Activity>)
where
    F: Future<Output = Response<B>>,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut answer = std::pin::pin!(answer);
    let response = loop {
        let next = poll_fn(|cx| match answer.as_mut().poll(cx) {
            Poll::Ready(response) => Poll::Ready(Either::Left(response)),
            Poll::Pending => match conn.interim.take() {
                heads if heads.is_empty() => Poll::Pending,
                heads => Poll::Ready(Either::Right(heads)),
            },
        })
        .await;
        match next {
            Either::Left(response) => break response,
            Either::Right(heads) => interim(heads, &mut send).await,
        }
    };
    // Those put in the poll that finished the answer.
    interim(conn.interim.take(), &mut send).await;
    if let Err(err) = sent(response, &mut send, &activity).await {
        log::debug!("HTTP/3 answer: {err}");
        send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
    }
}

/// Sends interim answers as HEADERS before the final one (RFC 9114 §4.1), their hop-by-hop
/// fields left out.
async fn interim(heads: Vec<(StatusCode, HeaderMap)>, send: &mut SendHalf) {
    for (status, mut fields) in heads {
        headers::strip_hop_by_hop(&mut fields, false);
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = fields;
        if let Err(err) = send.send_response(head).await {
            log::debug!("HTTP/3 interim answer: {err}");
        }
    }
}

async fn sent<B>(response: Response<B>, send: &mut SendHalf, activity: &Activity) -> Result<(), SendError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (mut head, mut body) = response.into_parts();
    h2::head_fields(&mut head.headers, body.is_end_stream(), body.size_hint().exact());
    send.send_response(Response::from_parts(head, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| SendError::Body(err.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                    activity.touch();
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    Ok(send.finish().await?)
}
