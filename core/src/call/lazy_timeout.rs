//! A timeout that costs nothing when the future is ready at once.
//!
//! Most of a call's reads and writes complete on their first poll (the request arrived in
//! the packet that opened the stream, the reply fits the flow-control window). A
//! `tokio::time::timeout` reads the clock and makes a timer entry before it polls anything;
//! [`ready_or_timeout`] polls first and pays for the clock and the timer only when the
//! future has to wait.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

/// Runs `fut`, but gives up at the instant `until` names (asked only if `fut` is not ready
/// on its first poll; `None` there means no bound). `Err(())` if the bound passed first.
///
/// `fut` comes pinned by the caller (`std::pin::pin!(...)` where it is made): taken by
/// value and pinned here, it would take room twice in this function's future.
pub(crate) async fn ready_or_timeout<F: Future>(
    mut fut: Pin<&mut F>,
    until: impl FnOnce() -> Option<Instant>,
) -> Result<F::Output, ()> {
    if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Ok(out);
    }
    match until() {
        Some(until) => tokio::time::timeout_at(until.into(), fut)
            .await
            .map_err(|_| ()),
        None => Ok(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ready_futures_never_ask_for_the_bound() {
        let out = ready_or_timeout(pin!(async { 7 }), || -> Option<Instant> {
            panic!("the bound was asked for a ready future")
        })
        .await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_is_cut_off_at_the_bound() {
        let started = tokio::time::Instant::now();
        let out = ready_or_timeout(pin!(std::future::pending::<()>()), || {
            Some(Instant::now() + Duration::from_secs(3))
        })
        .await;
        assert_eq!(out, Err(()));
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_that_finishes_in_time_gives_its_output() {
        let out = ready_or_timeout(
            pin!(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                5
            }),
            || Some(Instant::now() + Duration::from_secs(3)),
        )
        .await;
        assert_eq!(out, Ok(5));
        let unbounded = ready_or_timeout(
            pin!(async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                6
            }),
            || None,
        )
        .await;
        assert_eq!(unbounded, Ok(6));
    }
}
