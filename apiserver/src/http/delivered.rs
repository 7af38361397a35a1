//! A response body that reports when its bytes were handed to the kernel: the standalone
//! backend records a POST as answered only then (docs/apiserver.md, "what a crash leaves").
//!
//! Why a body and not the handler: a handler returns the response before actix writes it, and a
//! crash in between leaves a requester that never saw its address. actix's HTTP/1 dispatcher
//! writes what the body yielded to the socket whenever the body is not ready, so the body yields
//! its bytes, then says "not ready" once (waking itself), and on the poll after that flush it
//! runs the hook and ends. A connection that fails before then drops the body without running
//! it: the allocation stays shown as unconfirmed, never silently dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;

pub struct Delivered<F: FnOnce() + Unpin> {
    size: u64,
    bytes: Option<Bytes>,
    /// The bytes were yielded and the dispatcher was given one chance to write them.
    flushed: bool,
    on_delivered: Option<F>,
}

impl<F: FnOnce() + Unpin> Delivered<F> {
    pub fn new(bytes: impl Into<Bytes>, on_delivered: F) -> Self {
        let bytes = bytes.into();
        Delivered {
            size: bytes.len() as u64,
            bytes: Some(bytes),
            flushed: false,
            on_delivered: Some(on_delivered),
        }
    }
}

impl<F: FnOnce() + Unpin> MessageBody for Delivered<F> {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.size)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.bytes.take() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        if !std::mem::replace(&mut this.flushed, true) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(on_delivered) = this.on_delivered.take() {
            on_delivered();
        }
        Poll::Ready(None)
    }
}
