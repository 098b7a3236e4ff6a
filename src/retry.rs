//! Waiting for a dependency at start: try, and try again every half second until it
//! answers or the patience (`startup.wait_for_dependencies`) runs out, so a service
//! started a little before its database or NATS server still comes up.

use std::{fmt::Display, time::Duration};

/// Pause between attempts.
const PAUSE: Duration = Duration::from_millis(500);

/// Runs `attempt` until it succeeds or `patience` has passed; the last error is returned
/// then. Each failure before that is logged as a warning naming `what`.
pub async fn until_deadline<F, Fut, T, E>(
    patience: Duration,
    what: &str,
    attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    until_deadline_unless(patience, what, |_| false, attempt).await
}

/// As [`until_deadline`], except that an error `fatal` recognises is returned at once:
/// it says something waiting cannot mend (a database whose applied migrations disagree
/// with this build's, for one).
pub async fn until_deadline_unless<F, Fut, T, E>(
    patience: Duration,
    what: &str,
    fatal: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if !fatal(&err) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "{what} is not reachable yet; retrying"
                );
                tokio::time::sleep(PAUSE).await;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_tries_again_until_an_attempt_succeeds() {
        let calls = Cell::new(0);
        let result: Result<u32, String> = until_deadline(Duration::from_secs(10), "x", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(format!("no {n}")) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn it_gives_up_with_the_last_error_once_the_patience_is_spent() {
        let started = tokio::time::Instant::now();
        let calls = Cell::new(0);
        let result: Result<(), String> = until_deadline(Duration::from_secs(2), "x", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Err(format!("no {n}")) }
        })
        .await;
        assert_eq!(result, Err("no 5".to_owned()));
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_ends_the_wait_at_once() {
        let calls = Cell::new(0);
        let result: Result<(), String> = until_deadline_unless(
            Duration::from_secs(60),
            "x",
            |err: &String| err.starts_with("fatal"),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    Err(if n < 3 {
                        format!("no {n}")
                    } else {
                        "fatal".into()
                    })
                }
            },
        )
        .await;
        assert_eq!(result, Err("fatal".to_owned()));
        assert_eq!(calls.get(), 3, "tried until the fatal error, not after");
    }
}
