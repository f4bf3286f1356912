//! The shutdown signal shared by background tasks: a `watch` channel that
//! turns true once.

use tokio::sync::watch;

/// Completes once the flag is true, or when its sender is gone (the server
/// that would have set it no longer exists).
pub async fn signalled(flag: &mut watch::Receiver<bool>) {
    // Not `wait_for`: its guard is not Send across the select! in spawned tasks.
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}
