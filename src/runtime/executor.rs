//! Blocking on futures without an async runtime: the calling thread polls and parks, and gRPC's
//! completion-queue thread unparks it when the future can make progress.

use std::sync::Arc;
use std::time::Instant;

/// Wakes the thread that created it.
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `poll` on this thread until it is ready or `deadline` passes (None: no deadline),
/// parking in between. gRPC's completion-queue threads wake it. None when the deadline passed.
pub(crate) fn block_until<T>(
    deadline: Option<Instant>,
    mut poll: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
) -> Option<T> {
    thread_local! {
        static WAKER: std::task::Waker =
            std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    }
    let waker = WAKER.with(|w| w.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(value) = poll(&mut cx) {
            return Some(value);
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}

/// Blocks on a future with no deadline.
pub(crate) fn block_on<F: std::future::Future + Unpin>(mut future: F) -> F::Output {
    block_until(None, |cx| std::pin::Pin::new(&mut future).poll(cx)).expect("no deadline was set")
}
