//! Which replica runs the once-per-deployment tasks: the one whose
//! dedicated connection holds a session-level advisory lock
//! ([`LEADER_LOCK`]). Followers try again every [`RETRY`].
//!
//! An advisory lock rather than row claims with leases: PostgreSQL itself
//! releases it when the leader's session ends (a killed or crashed leader
//! hands over as soon as its socket closes), it needs no clock agreement
//! between replicas and no lease renewals written to the log's database,
//! and the apply worker's start-up scan already resumes whatever APPROVED
//! promotions a previous leader left. It must not go through a
//! transaction-mode pooler (the session is the lock).
//!
//! A leader cut off from the database stops itself: it checks its session
//! every [`CHECK`] and ends its term when the check fails or takes longer
//! than [`CHECK_TIMEOUT`]; PostgreSQL drops a silent session only after its
//! TCP keepalives give up (about 11 s, set below), so the old leader has
//! stopped taking new work before another replica can lead. A leader that
//! is alive but frozen (SIGSTOP, a paused VM) keeps its socket open and
//! its keepalives answered by the kernel; its session's
//! `idle_session_timeout` ([`IDLE_LEADER`], PostgreSQL 14 and later) ends
//! it instead, since a live leader's checks never leave it idle that long.
//! A tag move
//! already in flight may still land; recording it is a transaction that
//! finds the promotion no longer APPROVED if the new leader recorded it, so
//! a promotion is recorded APPLIED once whichever replica moved the tag.

use super::Follow;
use crate::store::Leadership;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The leader's lock ("prodgate" + 2 in ASCII); the log's and the
/// migrations' locks are its neighbours.
const LEADER_LOCK: i64 = 0x7072_6f64_6761_7467;
/// How often a follower asks for the lock.
const RETRY: Duration = Duration::from_secs(1);
/// How often the leader checks that its session is alive.
const CHECK: Duration = Duration::from_secs(1);
/// A check that takes longer ends the term.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// The server's keepalives on the leader's session: idle 5 s, then 3
/// probes 2 s apart, so PostgreSQL releases a vanished leader's lock
/// after about 11 s (the defaults would keep it for hours).
const KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3";

/// PostgreSQL ends the leader's session after this long without a check,
/// which releases the lock (a frozen leader hands over).
const IDLE_LEADER: Duration = Duration::from_secs(5);

/// A connection for the lock, and a token cancelled when it ends.
struct Session {
    client: Arc<tokio_postgres::Client>,
    ended: CancellationToken,
}

async fn connect(config: &tokio_postgres::Config) -> Result<Session, tokio_postgres::Error> {
    let mut config = config.clone();
    config.application_name(format!("prodgate leader {}", std::process::id()));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let ended = CancellationToken::new();
    let on_end = ended.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %super::describe(&e), "the PostgreSQL leadership connection ended");
        }
        on_end.cancel();
    });
    client.batch_execute(KEEPALIVES).await?;
    let idle = format!("SET idle_session_timeout = {}", IDLE_LEADER.as_millis());
    if let Err(e) = client.batch_execute(&idle).await {
        // Before PostgreSQL 14: everything else works; a frozen leader
        // keeps leading until it is killed.
        tracing::warn!(error = %super::describe(&e), "cannot set idle_session_timeout on the leadership connection");
    }
    Ok(Session {
        client: Arc::new(client),
        ended,
    })
}

/// Keeps the session (and so the lock) until dropped.
struct Hold {
    watcher: tokio::task::JoinHandle<()>,
    _client: Arc<tokio_postgres::Client>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // The watcher's handle on the client goes with it; the last one
        // closes the session, which releases the lock.
        self.watcher.abort();
    }
}

/// Waits until this replica holds the leader's lock; `None` once `stop`
/// is cancelled.
pub async fn lead(
    config: &tokio_postgres::Config,
    stop: &CancellationToken,
    follow: Arc<Follow>,
) -> Option<Leadership> {
    let mut session: Option<Session> = None;
    let mut following = false;
    let mut blind = false;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        // A replica that cannot hear of the others' writes does not ask.
        if !follow.ok() {
            if !blind {
                tracing::warn!(
                    "cannot follow other replicas' changes (the listening connection is down): not asking to lead"
                );
                blind = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(RETRY) => {}
            }
            continue;
        }
        blind = false;
        if session.as_ref().is_some_and(|s| s.ended.is_cancelled()) {
            session = None;
        }
        if session.is_none() {
            match connect(config).await {
                Ok(s) => session = Some(s),
                Err(e) => {
                    tracing::warn!(error = %super::describe(&e), "cannot connect to PostgreSQL for leadership; trying again")
                }
            }
        }
        if let Some(s) = &session {
            match s
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await
            {
                Ok(row) if row.get::<_, bool>(0) => {
                    tracing::info!("this replica leads: it applies promotions and runs the sweeps");
                    return session.map(|s| term(s, stop, following, follow));
                }
                Ok(_) => {
                    if !following {
                        tracing::info!("another replica leads: following");
                        following = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %super::describe(&e), "cannot ask for leadership; trying again");
                    session = None;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// The term of a session that holds the lock: it ends with `stop`, when
/// the session ends or stops answering, or when this replica stops
/// following the log ([`Follow`]).
fn term(
    session: Session,
    stop: &CancellationToken,
    waited: bool,
    follow: Arc<Follow>,
) -> Leadership {
    let term = stop.child_token();
    let (client, ended) = (session.client.clone(), session.ended);
    let ending = term.clone();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = ending.cancelled() => return,
                _ = ended.cancelled() => {
                    tracing::error!("the leadership connection ended: no longer leading");
                    ending.cancel();
                    return;
                }
                _ = tokio::time::sleep(CHECK) => {}
            }
            if !follow.ok() {
                // Its apply worker would never hear of promotions approved
                // through other replicas: let one that can hear lead.
                tracing::error!(
                    "this replica cannot follow other replicas' changes: no longer leading"
                );
                ending.cancel();
                return;
            }
            let alive = tokio::time::timeout(CHECK_TIMEOUT, client.simple_query("SELECT 1")).await;
            if !matches!(alive, Ok(Ok(_))) {
                tracing::error!("the leadership connection does not answer: no longer leading");
                ending.cancel();
                return;
            }
        }
    });
    Leadership::new(
        term,
        waited,
        Box::new(Hold {
            watcher,
            _client: session.client,
        }),
    )
}
