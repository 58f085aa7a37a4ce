//! A request stream's answer: its head sent with Date and length, its body a DATA frame per
//! chunk as QUIC's flow control lets it go, then its trailers, then the stream's end.
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, body::Body as HttpBody};

use super::SendHalf;
use crate::proxy::{h2, idle::Activity};

/// Why an answer stopped before its end (logged; the stream is reset).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    H3(#[from] h3::error::StreamError),
    #[error("the body failed: {0}")]
    Body(String),
}

/// Sends `response` on `send`; each chunk marks the connection active.
pub async fn answer<B>(response: Response<B>, mut send: SendHalf, activity: Arc<Activity>)
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if let Err(err) = sent(response, &mut send, &activity).await {
        log::debug!("HTTP/3 answer: {err}");
        send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
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
