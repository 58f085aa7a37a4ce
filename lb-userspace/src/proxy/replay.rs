//! A request body kept, up to a route's bound, as a try sends it, so another backend can be sent
//! it again: after a try its backend did not process (an HTTP/2 stream refused), or one the
//! route retries (Envoy's request buffer for retries, HAProxy's `l7-retries`).
//!
//! The try's body ([`record`]) copies what it reads into a tape it shares with the tries'
//! [`Replay`]. When the try lets go of it, the part of the client's body it had not read goes
//! onto the tape too, so the next try gets the kept bytes, then the rest as it comes.
use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    HeaderMap,
    body::{Body as HttpBody, Frame, SizeHint},
};
use tokio::{sync::Notify, time::Instant};

use crate::proxy::body::{self, Body, Error};

/// `body`, its first `limit` bytes kept as a try reads them.
pub fn record(body: Body, limit: usize) -> (Body, Replay) {
    let tape = Arc::new(Tape { kept: Mutex::default(), let_go: Notify::new() });
    let recording = Recording { inner: body, tape: tape.clone(), limit };
    (recording.boxed(), Replay { tape, limit })
}

/// The tries' hold on a request's kept body. Dropped, the try's body keeps nothing more.
pub struct Replay {
    tape: Arc<Tape>,
    limit: usize,
}

impl Replay {
    /// The body once more, for another try (and kept again), as soon as the last try has read
    /// it to its end or let go of it, at the latest at `until`. None: more than the bound was
    /// read, the client's body failed, or the last try still held it at `until` (an HTTP/2
    /// backend that answered before reading the body keeps its stream sending it).
    pub async fn again(self, until: Instant) -> Option<(Body, Replay)> {
        loop {
            let let_go = self.tape.let_go.notified();
            {
                let mut kept = self.tape.lock();
                if kept.lost {
                    return None;
                }
                if kept.ended || kept.let_go {
                    let played = Played {
                        data: Some(kept.data.clone().freeze()).filter(|d| !d.is_empty()),
                        rest: kept.rest.take(),
                        trailers: kept.trailers.clone(),
                    };
                    return Some(record(played.boxed(), self.limit));
                }
            }
            tokio::time::timeout_at(until, let_go).await.ok()?;
        }
    }
}

/// What a try's body has been, shared by the body and the tries.
struct Tape {
    kept: Mutex<Kept>,
    /// Told when the try lets go of the body, or when it is whole or lost.
    let_go: Notify,
}

impl Tape {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Kept {
    /// The bytes read so far (copied: a body of many small frames is one buffer, not a list).
    data: BytesMut,
    trailers: Option<HeaderMap>,
    /// The body's end was read: `data` and `trailers` are all of it.
    ended: bool,
    /// More than the bound was read, the body failed, or nobody will ask again: nothing kept.
    lost: bool,
    /// The try let go of the body; `rest` is the part it had not read.
    let_go: bool,
    rest: Option<Body>,
}

impl Kept {
    fn note(&mut self, frame: &Option<Result<Frame<Bytes>, Error>>, limit: usize) {
        if self.lost {
            return;
        }
        match frame {
            None => self.ended = true,
            Some(Err(_)) => self.lose(),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if self.data.len() + data.len() > limit {
                        self.lose();
                    } else {
                        self.data.extend_from_slice(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    (self.trailers, self.ended) = (Some(trailers.clone()), true);
                }
            }
        }
    }

    /// Whether a try waiting for the body may stop waiting: it is whole, or lost.
    fn settled(&self) -> bool {
        self.ended || self.lost
    }

    fn lose(&mut self) {
        self.lost = true;
        (self.data, self.trailers) = (BytesMut::new(), None);
    }
}

/// A try's body: the client's, its bytes copied onto the tape as they are read.
struct Recording {
    inner: Body,
    tape: Arc<Tape>,
    limit: usize,
}

impl HttpBody for Recording {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let mut kept = self.tape.lock();
        let settled = kept.settled();
        // The tries no longer hold the tape (the answer was taken): what is kept goes.
        if Arc::strong_count(&self.tape) == 1 {
            kept.lose();
        }
        kept.note(&frame, self.limit);
        // A body may end with its last data, never yielding an end of its own.
        if self.inner.is_end_stream() {
            kept.ended = true;
        }
        let news = !settled && kept.settled();
        drop(kept);
        // A try waiting for the body learns it is whole, or cannot be had.
        if news {
            self.tape.let_go.notify_one();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let rest = std::mem::replace(&mut self.inner, body::empty());
        let mut kept = self.tape.lock();
        if !kept.ended && !kept.lost {
            kept.rest = Some(rest);
        }
        kept.let_go = true;
        drop(kept);
        self.tape.let_go.notify_one();
    }
}

/// A kept body sent again: the kept bytes, then what the last try had not read, then the
/// trailers.
struct Played {
    data: Option<Bytes>,
    rest: Option<Body>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Played {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = &mut self.rest {
            match ready!(Pin::new(rest).poll_frame(cx)) {
                Some(frame) => return Poll::Ready(Some(frame)),
                None => self.rest = None,
            }
        }
        Poll::Ready(self.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let kept = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(kept + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(kept + upper);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    /// A body of the frames sent through a channel: read only as far as sent.
    struct Channel(mpsc::Receiver<Result<Frame<Bytes>, Error>>);

    impl HttpBody for Channel {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            self.0.poll_recv(cx)
        }
    }

    fn streamed() -> (mpsc::Sender<Result<Frame<Bytes>, Error>>, Body) {
        let (sender, receiver) = mpsc::channel(8);
        (sender, Channel(receiver).boxed())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    async fn all(body: Body) -> (Bytes, Option<HeaderMap>) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_sent_again_whole_and_again() {
        let (body, replay) = record(body::full(Bytes::from_static(b"hello")), 100);
        assert_eq!(all(body).await.0, "hello");
        let (again, replay) = replay.again(soon()).await.expect("kept");
        assert_eq!(again.size_hint().exact(), Some(5));
        assert_eq!(all(again).await.0, "hello");
        let (third, _) = replay.again(soon()).await.expect("kept again");
        assert_eq!(all(third).await.0, "hello");
    }

    #[tokio::test]
    async fn a_body_let_go_half_read_goes_again_with_its_rest_and_trailers() {
        let (sender, inner) = streamed();
        let (mut body, replay) = record(inner, 100);
        sender.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        drop(body);
        let (again, _replay) = replay.again(soon()).await.expect("kept");
        assert!(!again.is_end_stream());
        sender.send(Ok(Frame::data(Bytes::from_static(b"cd")))).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        sender.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(sender);
        let (data, trailers) = all(again).await;
        assert_eq!(data, "abcd");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_body_past_the_bound_or_failed_is_not_kept() {
        let (body, replay) = record(body::full(Bytes::from(vec![7; 101])), 100);
        let _ = all(body).await;
        assert!(replay.again(soon()).await.is_none(), "past the bound");

        let (sender, inner) = streamed();
        let (mut body, replay) = record(inner, 100);
        sender.send(Err("client went away".into())).await.unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert!(replay.again(soon()).await.is_none(), "failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_held_and_unfinished_is_waited_for_until_the_deadline() {
        let (sender, inner) = streamed();
        let (mut body, replay) = record(inner, 100);
        sender.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
        let _ = body.frame().await;
        let until = Instant::now() + Duration::from_millis(500);
        assert!(replay.again(until).await.is_none(), "still held by its try");

        let (_sender, inner) = streamed();
        let (body, replay) = record(inner, 100);
        let waiting = tokio::spawn(replay.again(Instant::now() + Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(body);
        assert!(waiting.await.unwrap().is_some(), "let go while waited for");
    }

    /// An HTTP/2 backend that answered early keeps its stream sending the body: the retry
    /// waits only until the body is whole (or past the bound), not until the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_body_still_held_is_had_once_whole_or_lost() {
        for (last, whole) in [(&b"cd"[..], true), (&[0; 200][..], false)] {
            let (sender, inner) = streamed();
            let (mut body, replay) = record(inner, 100);
            let start = Instant::now();
            let waiting = tokio::spawn(replay.again(start + Duration::from_secs(5)));
            sender.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
            sender.send(Ok(Frame::data(Bytes::copy_from_slice(last)))).await.unwrap();
            drop(sender);
            while body.frame().await.is_some() {}
            let again = waiting.await.unwrap();
            assert!(start.elapsed() < Duration::from_secs(1), "waited for the deadline");
            match again {
                Some((again, _)) => assert!(whole && all(again).await.0 == "abcd"),
                None => assert!(!whole, "a whole body was not had"),
            }
            drop(body);
        }
    }

    #[tokio::test]
    async fn nothing_is_kept_once_the_tries_let_go() {
        let (sender, inner) = streamed();
        let (mut body, replay) = record(inner, 100);
        let tape = Arc::downgrade(&replay.tape);
        drop(replay);
        sender.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
        let _ = body.frame().await;
        let tape = tape.upgrade().unwrap();
        let kept = tape.lock();
        assert!(kept.lost && kept.data.is_empty());
    }
}
