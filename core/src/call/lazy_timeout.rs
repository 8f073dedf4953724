//! A timeout that costs nothing when the future is ready at once.
//!
//! Most of a call's reads and writes complete on their first poll (the request arrived in
//! the packet that opened the stream, the reply fits the flow-control window). A
//! `tokio::time::timeout` reads the clock and makes a timer entry before it polls anything;
//! [`ready_or_timeout`] polls first and pays for the clock and the timer only when the
//! future has to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Runs `fut`, but gives up at the instant `until` names (asked only if `fut` is not ready
/// on its first poll; `None` there means no bound). `Err(())` if the bound passed first.
pub(crate) fn ready_or_timeout<F, U>(fut: F, until: U) -> ReadyOrTimeout<F, U>
where
    F: Future,
    U: FnOnce() -> Option<Instant>,
{
    ReadyOrTimeout {
        fut,
        until: Some(until),
        sleep: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ready_or_timeout`]. Written by hand rather than as an `async fn`:
    /// it runs on every call, several times, and a hand-written poll is one step with no
    /// state to dispatch on.
    pub(crate) struct ReadyOrTimeout<F, U> {
        #[pin]
        fut: F,
        // Taken when `fut` first has to wait.
        until: Option<U>,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F, U> Future for ReadyOrTimeout<F, U>
where
    F: Future,
    U: FnOnce() -> Option<Instant>,
{
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The future first, every time: an output that is ready wins over a bound that has
        // passed.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some(until) = this.until.take() {
            if let Some(at) = until() {
                this.sleep.set(Some(tokio::time::sleep_until(at.into())));
            }
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ready_futures_never_ask_for_the_bound() {
        let out = ready_or_timeout(async { 7 }, || -> Option<Instant> {
            panic!("the bound was asked for a ready future")
        })
        .await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_is_cut_off_at_the_bound() {
        let started = tokio::time::Instant::now();
        let out = ready_or_timeout(std::future::pending::<()>(), || {
            Some(Instant::now() + Duration::from_secs(3))
        })
        .await;
        assert_eq!(out, Err(()));
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_that_finishes_in_time_gives_its_output() {
        let out = ready_or_timeout(
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                5
            },
            || Some(Instant::now() + Duration::from_secs(3)),
        )
        .await;
        assert_eq!(out, Ok(5));
        let unbounded = ready_or_timeout(
            async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                6
            },
            || None,
        )
        .await;
        assert_eq!(unbounded, Ok(6));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_is_asked_for_once_however_often_the_future_waits() {
        let asked = std::cell::Cell::new(0);
        let out = ready_or_timeout(
            async {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                8
            },
            || {
                asked.set(asked.get() + 1);
                Some(Instant::now() + Duration::from_secs(3))
            },
        )
        .await;
        assert_eq!(out, Ok(8));
        assert_eq!(asked.get(), 1);
    }
}
