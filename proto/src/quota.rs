//! Per-caller limits on open-ended calls: log follows and event watches
//! stay open for as long as their caller likes, each holding a task and
//! buffers on the answering side, so one caller (a user's script in a
//! loop, a stuck client) must not be able to hold them all.
//!
//! A [`Quota`] counts what each caller holds; a [`Permit`] is one of them,
//! given back when dropped. [`Held`] ties a permit to a response stream,
//! so the count drops the moment the stream does (the caller hung up),
//! not when the task feeding it next notices.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::tokio_stream::Stream;
use tonic::Status;

#[derive(Debug, Clone)]
pub struct Quota {
    /// What is counted, for the error: "log follows and event watches".
    what: &'static str,
    limit: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Quota {
    pub fn new(what: &'static str, limit: usize) -> Self {
        Self { what, limit, held: Arc::default() }
    }

    /// One more for `caller`, or RESOURCE_EXHAUSTED naming the limit.
    pub fn take(&self, caller: &str) -> Result<Permit, Status> {
        let mut held = self.held.lock().map_err(|_| Status::internal("quota lock poisoned"))?;
        let count = held.entry(caller.to_owned()).or_default();
        if *count >= self.limit {
            return Err(Status::resource_exhausted(format!(
                "{caller} already has {} open {}: at most {} at a time; close one first",
                *count, self.what, self.limit
            )));
        }
        *count += 1;
        Ok(Permit { caller: caller.to_owned(), held: self.held.clone() })
    }

    /// How many `caller` holds now.
    pub fn held(&self, caller: &str) -> usize {
        self.held.lock().map(|h| h.get(caller).copied().unwrap_or(0)).unwrap_or(0)
    }
}

/// One open call of a caller; dropping it gives it back.
#[derive(Debug)]
pub struct Permit {
    caller: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock() {
            if let Some(count) = held.get_mut(&self.caller) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&self.caller);
                }
            }
        }
    }
}

/// A response stream that holds its caller's permit while it lives.
#[derive(Debug)]
pub struct Held<S> {
    stream: S,
    _permit: Permit,
}

impl<S> Held<S> {
    pub fn new(stream: S, permit: Permit) -> Self {
        Self { stream, _permit: permit }
    }
}

impl<S: Stream + Unpin> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_count_and_dropping_gives_back() {
        let quota = Quota::new("log follows", 2);
        let a1 = quota.take("alice").unwrap();
        let _a2 = quota.take("alice").unwrap();
        let refused = quota.take("alice").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.message(), "alice already has 2 open log follows: at most 2 at a time; close one first");
        let _b = quota.take("bob").expect("another caller is not held back by alice");
        drop(a1);
        assert_eq!(quota.held("alice"), 1);
        let _a3 = quota.take("alice").expect("a dropped permit is given back");
        assert_eq!(quota.held("alice"), 2);
    }

    #[test]
    fn a_stream_gives_its_permit_back_when_dropped() {
        let quota = Quota::new("event watches", 1);
        let (_tx, rx) = tokio::sync::mpsc::channel::<u8>(1);
        let held = Held::new(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx), quota.take("c").unwrap());
        assert!(quota.take("c").is_err());
        drop(held);
        assert_eq!(quota.held("c"), 0);
        assert!(quota.take("c").is_ok());
    }
}
