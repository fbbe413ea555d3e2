//! Waiting for a condition that no event announces: the state of a real server, broker or
//! child process. Shared by the integration tests and the crate's unit tests
//! (`src/testkit.rs` includes this file), so it names nothing of the crate.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// Polls until `check` returns `Ok`, or panics after `limit` (real time) with its last error.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = std::time::Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if start.elapsed() > limit => {
                panic!("condition not met within {limit:?}: {why}")
            }
            // Real time: what is checked changes in another process or behind a socket,
            // which tokio's paused clock does not drive. A bounded poll, 50 ms apart.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
