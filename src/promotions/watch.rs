//! WatchPromotion streams (bounded per principal) and the short wait for
//! an APPROVED promotion's tag move that lets a call answer PROMOTED.

use super::Promotions;
use crate::config::Config;
use crate::domain::model::{Promotion, PromotionId, State};
use crate::domain::policy::Principal;
use crate::error::Error;
use crate::store::Change;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// How many WatchPromotion streams each principal has open. Each holds a
/// task, two subscriptions and a buffer on the server; without a bound one
/// caller could open them until memory runs out.
#[derive(Default)]
pub(super) struct Watches {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open watch, counted until dropped (when its task ends).
pub(super) struct WatchSlot {
    watches: Arc<Watches>,
    principal: String,
}

impl Watches {
    pub(super) fn open(
        self: &Arc<Self>,
        principal: &str,
        limit: usize,
    ) -> Result<WatchSlot, Error> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(principal.to_owned()).or_default();
        if *n >= limit {
            return Err(Error::TooManyWatches {
                principal: principal.to_owned(),
                limit,
            });
        }
        *n += 1;
        Ok(WatchSlot {
            watches: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

impl Promotions {
    /// The current state of `id` now, then every change until a terminal
    /// state or until the receiver is dropped. When the server shuts down
    /// first, the last item is [`Error::ShuttingDown`]: watch again elsewhere.
    pub async fn watch(
        &self,
        who: &Principal,
        id: PromotionId,
    ) -> Result<mpsc::Receiver<Result<Promotion, Error>>, Error> {
        let progress = self.progress.clone();
        self.follow(
            who,
            Followed {
                read: move |this: Promotions| async move { this.get(id).await },
                ended: |p: &Promotion| p.state.is_terminal(),
                // The change holds the promotion as it is now.
                concerns: move |c: &Change| {
                    (c.promotion.id == id).then(|| {
                        let mut p = c.promotion.clone();
                        progress.overlay(&mut p);
                        Some(p)
                    })
                },
                retried: move |_: &Promotion, n: PromotionId| n == id,
            },
        )
        .await
    }

    /// `f.read()` now, then again at each change or tag-move retry that
    /// concerns it, sent when it differs from the last sent, until it has
    /// ended or the receiver is dropped; counted as a watch of `who`. When
    /// the server shuts down first, the last item is
    /// [`Error::ShuttingDown`]. Missed changes (a lagging subscription) are
    /// read from the record.
    pub(super) async fn follow<T, R, Fut, C, A>(
        &self,
        who: &Principal,
        f: Followed<R, fn(&T) -> bool, C, A>,
    ) -> Result<mpsc::Receiver<Result<T, Error>>, Error>
    where
        T: Clone + PartialEq + Send + 'static,
        R: Fn(Promotions) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + Send,
        C: Fn(&Change) -> Option<Option<T>> + Send + 'static,
        A: Fn(&T, PromotionId) -> bool + Send + 'static,
    {
        let limit = self.config.get().max_watches_per_principal;
        let slot = self.watches.open(&who.name, limit)?;
        // Subscribe before reading, so no change between the two is missed.
        let mut changes = self.store.subscribe();
        let mut attempts = self.progress.subscribe();
        let first = (f.read)(self.clone()).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let draining = self.draining.clone();
        tokio::spawn(async move {
            // Counted while this task runs: it ends when the stream closes.
            let _slot = slot;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !(f.ended)(&last) {
                let told = tokio::select! {
                    _ = tx.closed() => return,
                    _ = draining.cancelled() => {
                        let _ = tx.send(Err(Error::ShuttingDown)).await;
                        return;
                    }
                    change = changes.recv() => match change {
                        Ok(c) => match (f.concerns)(&c) {
                            Some(told) => told,
                            None => continue,
                        },
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // A retry of a tag move: show its error and count.
                    attempt = attempts.recv() => match attempt {
                        Ok(n) if !(f.retried)(&last, n) => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => None,
                        // The worker's progress lives as long as `this`.
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                let next = match told {
                    Some(next) => next,
                    None => match (f.read)(this.clone()).await {
                        Ok(next) => next,
                        Err(_) => return,
                    },
                };
                if next != last {
                    last = next;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Waits up to `apply_wait` for an APPROVED promotion's tag move, so the
    /// common case answers PROMOTED; a slow registry answers APPROVED. It
    /// subscribes to changes only then, after the write, and reads the
    /// record once subscribed, so an apply that ended in between is not
    /// missed; an answer that cannot wait subscribes to nothing.
    pub(super) async fn settled(&self, config: &Config, p: Promotion) -> Promotion {
        if p.state != State::Approved || config.apply_wait.is_zero() {
            return p;
        }
        let id = p.id;
        let mut changes = self.store.subscribe();
        let p = match self.get(id).await {
            Ok(now) if now.state.is_terminal() => return now,
            Ok(now) => now,
            Err(_) => p,
        };
        let wait = async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.promotion.id == id && c.promotion.state.is_terminal() => {
                        return Some(c.promotion);
                    }
                    Ok(_) => {}
                    // Missed messages: the record itself is the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(config.apply_wait, wait).await {
            Ok(Some(done)) => done,
            _ => self.get(id).await.unwrap_or(p),
        }
    }
}

/// What [`Promotions::follow`] streams: how to read it, when it has
/// ended, whether a change concerns it (`Some(Some(t))`: it is `t` now;
/// `Some(None)`: read it again), and whether a tag-move retry of a
/// promotion id does.
pub(super) struct Followed<R, E, C, A> {
    pub read: R,
    pub ended: E,
    pub concerns: C,
    pub retried: A,
}
