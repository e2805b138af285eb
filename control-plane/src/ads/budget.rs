//! meshd's budget of xDS response bytes in flight across all streams, and the order in which
//! streams get it.
//!
//! Why a budget: a thousand proxies connecting at once each need their whole configuration
//! (about 2 MB with 1000 Services), and they read it slower than meshd can encode it. Without a
//! bound, all of it sits in send buffers at once: hundreds of megabytes of peak memory that the
//! allocator then keeps. A response counts against the budget from when it is encoded until
//! HTTP/2 has sent it and dropped it. A proxy that does not read cannot stall the others: a
//! response gives its budget back after [`HOLD_LIMIT`] even if it is still unsent (and says so
//! in the log). Responses under [`SMALL`] do not wait.
//!
//! The order: responses wait by [`Place`]. A proxy in its first sync keeps the place it took
//! when its stream opened, so that one that has started its sync (clusters sent, its endpoint
//! subscription on the way) finishes before the ones behind it start theirs, as istiod pushes
//! a proxy's whole configuration under one slot of its push throttle. In plain arrival order
//! the thousand first syncs advance in step, one type at a time, and every proxy holds a sync
//! half done, with its next requests waiting unread in HTTP/2's buffers. Once a proxy has
//! ACKed every type it subscribed to, each of its responses takes a new place at the back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a response holds its budget at most.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(30);
/// Responses smaller than this (the pushes of a change, ACK-sized) take no budget.
pub(crate) const SMALL: usize = 16 * 1024;
/// The budget counts KiB.
const UNIT: usize = 1024;

/// Where a response waits for budget: lower goes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place(u64);

/// The bytes of responses in flight across all streams: encoded, queued or in HTTP/2's buffers.
#[derive(Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    total_units: u32,
    next_place: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free_units: u32,
    /// By place, then by arrival.
    waiting: BTreeMap<(Place, u64), Waiter>,
    arrivals: u64,
}

#[derive(Debug)]
struct Waiter {
    units: u32,
    turn: oneshot::Sender<Grant>,
}

/// Units taken from the budget, given back when dropped.
#[derive(Debug)]
struct Grant {
    shared: Arc<Shared>,
    units: u32,
}

/// Budget taken by one response, given back when the response is dropped or at [`HOLD_LIMIT`].
#[derive(Debug)]
pub(crate) struct Held {
    _grant: Arc<Mutex<Option<Grant>>>,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let total_units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Budget {
            shared: Arc::new(Shared {
                total_units,
                next_place: AtomicU64::new(0),
                state: Mutex::new(State {
                    free_units: total_units,
                    waiting: BTreeMap::new(),
                    arrivals: 0,
                }),
            }),
        }
    }

    /// A place behind every place handed out so far.
    pub(crate) fn place(&self) -> Place {
        Place(self.shared.next_place.fetch_add(1, Ordering::Relaxed))
    }

    /// Waits at `place` for budget for `bytes` (the whole budget, for a response larger than it).
    pub(crate) async fn reserve(&self, bytes: usize, place: Place) -> Option<Held> {
        if bytes < SMALL {
            return None;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.shared.total_units);
        let (turn, rx) = oneshot::channel();
        let key = {
            let mut state = self.shared.lock();
            let key = (place, state.arrivals);
            state.arrivals += 1;
            state.waiting.insert(key, Waiter { units, turn });
            key
        };
        // Removes the waiter if this future is dropped before its turn.
        let _queued = Queued {
            shared: &self.shared,
            key,
        };
        self.shared.hand_out();
        // The sender is dropped unsent only with the waiter, which `_queued` still holds.
        let grant = rx.await.ok()?;
        Some(Held::expiring(grant, bytes))
    }

    /// KiB of the budget not in use.
    #[cfg(test)]
    pub fn free_kib(&self) -> usize {
        self.shared.lock().free_units as usize
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the free units to the waiters in order, as long as the first one's need fits.
    fn hand_out(self: &Arc<Self>) {
        loop {
            let turns = {
                let mut guard = self.lock();
                let state = &mut *guard;
                let mut turns = Vec::new();
                while let Some(first) = state.waiting.first_entry() {
                    if first.get().units > state.free_units {
                        break;
                    }
                    let waiter = first.remove();
                    state.free_units -= waiter.units;
                    turns.push(waiter);
                }
                turns
            };
            if turns.is_empty() {
                return;
            }
            // A waiter that went away between its removal and now gives its units back here
            // (dropping the grant would take the lock again from inside this loop's caller).
            let mut returned = 0;
            for waiter in turns {
                let grant = Grant {
                    shared: self.clone(),
                    units: waiter.units,
                };
                if let Err(mut grant) = waiter.turn.send(grant) {
                    returned += std::mem::take(&mut grant.units);
                }
            }
            if returned == 0 {
                return;
            }
            self.lock().free_units += returned;
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.units > 0 {
            self.shared.lock().free_units += self.units;
            self.shared.hand_out();
        }
    }
}

/// A waiter's entry, removed when its future is dropped before its turn.
struct Queued<'a> {
    shared: &'a Arc<Shared>,
    key: (Place, u64),
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let removed = self.shared.lock().waiting.remove(&self.key);
        // A waiter that was first in line may have held up the ones behind it.
        if removed.is_some() {
            self.shared.hand_out();
        }
    }
}

impl Held {
    /// Holds `grant` until dropped, or until [`HOLD_LIMIT`] if that comes first.
    fn expiring(grant: Grant, bytes: usize) -> Held {
        let held = Arc::new(Mutex::new(Some(grant)));
        let expiring = Arc::downgrade(&held);
        tokio::spawn(async move {
            tokio::time::sleep(HOLD_LIMIT).await;
            let Some(held) = expiring.upgrade() else {
                return;
            };
            let grant = held.lock().unwrap_or_else(PoisonError::into_inner).take();
            if grant.is_some() {
                tracing::warn!(
                    bytes,
                    "an xDS response is still unsent after {}s: its proxy is not reading; its budget goes to the others",
                    HOLD_LIMIT.as_secs()
                );
            }
        });
        Held { _grant: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn responses_wait_in_turn_and_an_unread_one_gives_its_budget_back() {
        let budget = Arc::new(Budget::new(64 * 1024));
        let unread = budget
            .reserve(64 * 1024, budget.place())
            .await
            .expect("the whole budget");
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                let place = budget.place();
                budget
                    .reserve(100 * 1024, place)
                    .await
                    .map(|_| started.elapsed())
            }
        });
        let waited = waiting.await.expect("joins").expect("budget, in the end");
        assert_eq!(
            waited, HOLD_LIMIT,
            "the unread response's budget came back at the limit"
        );
        drop(unread);
        assert_eq!(budget.free_kib(), 64);
    }

    /// Starts a reservation of `kib` at `place` and lets it queue.
    async fn queue(
        budget: &Arc<Budget>,
        kib: usize,
        place: Place,
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> tokio::task::JoinHandle<Option<Held>> {
        let task = tokio::spawn({
            let (budget, order) = (budget.clone(), order.clone());
            async move {
                let held = budget.reserve(kib * 1024, place).await;
                order.lock().expect("not poisoned").push(name);
                held
            }
        });
        tokio::task::yield_now().await;
        task
    }

    #[tokio::test]
    async fn an_earlier_place_goes_first_and_a_waiter_that_leaves_lets_the_next_one_on() {
        let budget = Arc::new(Budget::new(64 * 1024));
        let in_first_sync = budget.place();
        let all = budget
            .reserve(64 * 1024, budget.place())
            .await
            .expect("the whole budget");
        let order = Arc::new(Mutex::new(Vec::new()));
        let late = queue(&budget, 40, budget.place(), &order, "late").await;
        let leaves = queue(&budget, 40, in_first_sync, &order, "leaves").await;
        let early = queue(&budget, 40, in_first_sync, &order, "early").await;
        assert!(order.lock().expect("not poisoned").is_empty(), "all wait");

        leaves.abort();
        assert!(leaves.await.is_err(), "cancelled while waiting");
        drop(all);
        let early = early.await.expect("joins").expect("budget");
        assert_eq!(*order.lock().expect("not poisoned"), ["early"]);
        assert_eq!(budget.free_kib(), 24, "40 of 64 KiB taken");

        drop(early);
        let late = late.await.expect("joins").expect("budget");
        assert_eq!(*order.lock().expect("not poisoned"), ["early", "late"]);
        drop(late);
        assert_eq!(budget.free_kib(), 64, "all given back");
    }

    #[tokio::test]
    async fn a_small_response_takes_nothing_and_a_large_one_the_whole_budget() {
        let budget = Budget::new(64 * 1024);
        assert!(budget.reserve(SMALL - 1, budget.place()).await.is_none());
        let large = budget
            .reserve(1 << 20, budget.place())
            .await
            .expect("clamped to the whole budget");
        assert_eq!(budget.free_kib(), 0);
        drop(large);
        assert_eq!(budget.free_kib(), 64);
    }
}
