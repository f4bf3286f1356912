//! Changes committed through other replicas: a dedicated connection
//! LISTENs on the channel every committing batch NOTIFYs (`writer::CHANNEL`),
//! and each wake-up publishes the entries after the last published one, read
//! from the audit log in sequence order, to this replica's subscribers (the
//! watch, the apply worker, metrics, webhooks). The notification is only the
//! trigger, never the data: a lost or coalesced one costs nothing, as the
//! next read covers everything since. On (re)connecting the listener reads
//! once too, covering what was committed while it was away.

use super::writer::CHANNEL;
use super::{Shared, backend, int};
use crate::store::codec::{Record, decode_record};
use crate::store::{Change, StoreError};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// How long to wait before connecting again after the connection failed.
const RECONNECT: Duration = Duration::from_secs(1);
/// Entries read per query while catching up.
const CHUNK: i64 = 500;

/// Listens until `stop` is cancelled, reconnecting after failures.
pub async fn run(config: tokio_postgres::Config, shared: Shared, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listen(&config, &shared) => {
                shared.follow.down();
                if let Err(e) = r {
                    tracing::warn!(error = %e, "listening for other replicas' changes failed; connecting again");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// One connection's life: LISTEN, catch up, then catch up at every wake-up
/// until the connection ends.
async fn listen(config: &tokio_postgres::Config, shared: &Shared) -> Result<(), StoreError> {
    // Named, so an operator (or a test) can tell it apart in pg_stat_activity.
    let mut config = config.clone();
    config.application_name(format!("prodgate listen {}", std::process::id()));
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| backend("connecting to PostgreSQL", e))?;
    // Notifications arrive through the connection, which must be polled
    // for them; each one only wakes the loop below (a full channel means
    // a wake-up is pending already).
    let (notified, mut wakeups) = mpsc::channel::<()>(1);
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = notified.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %super::describe(&e), "the PostgreSQL listening connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| backend("listening for other replicas' changes", e))?;
        loop {
            catch_up(&client, shared).await?;
            shared.follow.up();
            tokio::select! {
                w = wakeups.recv() => if w.is_none() {
                    return Err(StoreError::Backend("the listening connection closed".into()));
                },
                _ = shared.wake.notified() => {}
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Publishes every committed entry after the last published one. Batches
/// commit one at a time (the log's lock), so the entries visible now are
/// contiguous from there.
async fn catch_up(client: &tokio_postgres::Client, shared: &Shared) -> Result<(), StoreError> {
    loop {
        let after = *shared.lock_published();
        let rows = client
            .query(
                "SELECT sequence, record FROM audit WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                &[&int(after)?, &CHUNK],
            )
            .await
            .map_err(|e| backend("reading other replicas' entries", e))?;
        let n = rows.len();
        let mut records = Vec::with_capacity(n);
        for r in &rows {
            records.push(decode_record(super::uint(r.get(0)), r.get(1))?);
        }
        {
            let mut published = shared.lock_published();
            for Record { entry, promotion } in records {
                // Published meanwhile by the writer (its own batch).
                if entry.sequence <= *published {
                    continue;
                }
                if entry.sequence != *published + 1 {
                    // Cannot happen while batches commit one at a time;
                    // never publish out of order (the next wake-up reads again).
                    tracing::error!(
                        sequence = entry.sequence,
                        published = *published,
                        "a gap in the audit log's publication"
                    );
                    break;
                }
                let sequence = entry.sequence;
                // No subscriber is fine.
                match promotion {
                    Some(promotion) => {
                        let _ = shared.changes.send(Change { entry, promotion });
                    }
                    None => {
                        let _ = shared.records.send(entry);
                    }
                }
                *published = sequence;
            }
            shared.durable.fetch_max(*published, Ordering::AcqRel);
        }
        if (n as i64) < CHUNK {
            return Ok(());
        }
    }
}
