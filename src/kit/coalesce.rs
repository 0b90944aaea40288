//! Coalesced writes: the frames that arrive together share one SQLite transaction.
//!
//! Every write that starts an implicit transaction costs ~230–450 µs on the runtime (begin,
//! commit, the WAL's `fsync`); a second write in the same transaction costs ~7 µs
//! (docs/benchmarks.md, session 5). A chat post is its own event, so without this each paid
//! the full price. Frames whose effects only store and send
//! ([`Effects::coalescible`]) are queued instead, and one zero-delay timer writes the whole
//! queue in one turn, then sends each frame's effects in arrival order. The sends still leave
//! only after the writes commit (the runtime's output gate), so persist-before-broadcast
//! holds.
//!
//! Order is kept by the host. Every other write or send first flushes the queue ([`Host`]'s
//! `commit` and `send_all`), and so does every other event. A read through `Ctx` first writes
//! the queue (read-your-writes: a `clientId` lookup sees a post still queued).
//!
//! [`Host`]: crate::kit::object::Host

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use worker::WebSocket;

use edge_realtime_core::effects::{Effects, Statement};

use super::object::Ctx;

/// One queued frame: its origin socket, its statements (until written) and its effects.
pub struct Queued {
    pub origin: WebSocket,
    store: Vec<Statement>,
    /// The effects to run once written (`None` until the frame's hook returned them).
    pub effects: Option<Effects>,
    /// Its statements failed: nothing of it was written, its effects must not run.
    pub failed: bool,
}

/// The queue, and whether a flush timer is already set.
#[derive(Default)]
pub struct Coalesced {
    queue: RefCell<Vec<Queued>>,
    timer_set: Cell<bool>,
}

impl Coalesced {
    pub fn is_empty(&self) -> bool {
        self.queue.try_borrow().map_or(true, |q| q.is_empty())
    }

    /// Queue a frame's statements; [`Self::attach`] adds its effects once its hook returned.
    /// The statements back if the queue is busy (never, in practice: no borrow outlives a
    /// call): the caller then stores them at once.
    pub fn push(&self, origin: WebSocket, store: Vec<Statement>) -> Result<(), Vec<Statement>> {
        match self.queue.try_borrow_mut() {
            Ok(mut queue) => {
                queue.push(Queued { origin, store, effects: None, failed: false });
                Ok(())
            }
            Err(_) => Err(store),
        }
    }

    /// The effects of the frame queued last. `Some(effects)` back if they could not be
    /// attached (the queue busy or empty).
    pub fn attach(&self, effects: Effects) -> Option<Effects> {
        let Ok(mut queue) = self.queue.try_borrow_mut() else { return Some(effects) };
        match queue.last_mut() {
            Some(last) => {
                last.effects = Some(effects);
                None
            }
            None => Some(effects),
        }
    }

    /// Run every statement not yet written, each frame's statements as one unit (`run` is the
    /// host's transaction). Whether one failed (logged; its frame is marked failed).
    pub fn write(&self, run: impl Fn(Vec<Statement>) -> Result<(), String>, class: &str) -> bool {
        let Ok(mut queue) = self.queue.try_borrow_mut() else { return false };
        let mut failed = false;
        for queued in queue.iter_mut().filter(|q| !q.store.is_empty()) {
            if let Err(e) = run(std::mem::take(&mut queued.store)) {
                worker::console_error!("{class} store failed: {e}");
                queued.failed = true;
                failed = true;
            }
        }
        failed
    }

    /// Empty the queue (after [`Self::write`]), in arrival order.
    pub fn take(&self) -> Vec<Queued> {
        self.queue.try_borrow_mut().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }

    /// Mark the flush timer set; whether it had to be (`false`: one is already pending).
    pub fn set_timer(&self) -> bool {
        !self.timer_set.replace(true)
    }

    /// A flush timer is pending: whatever is due at the end of this event (the stats row) is
    /// written by it, in the queue's transaction, rather than as a transaction of its own.
    pub fn timer_pending(&self) -> bool {
        self.timer_set.get()
    }

    /// The flush timer fired.
    pub fn timer_fired(&self) {
        self.timer_set.set(false);
    }
}

/// The client ids of the frames an object queued since the kit's queue was last empty, each
/// with what a repeat is answered with (the original message, its sequence). A `clientId`
/// dedup lookup checks these first and then reads storage with [`Ctx::first_written`], which
/// does not write the queue: through [`Ctx::first`] it would commit the queued frames in this
/// frame's turn, and frames that arrived together would no longer share a transaction.
/// (ChatRoom, Channel and Counter; docs/custom-object.md.)
pub struct QueuedIds<V> {
    ids: HashMap<(String, String), V>,
}

impl<V> Default for QueuedIds<V> {
    fn default() -> Self {
        Self { ids: HashMap::new() }
    }
}

impl<V: Clone> QueuedIds<V> {
    /// What `user`'s earlier frame with client id `id` was answered with: from the queued
    /// frames, else from `stored` (a read through [`Ctx::first_written`]).
    pub fn seen<E>(&mut self, ctx: &Ctx<'_>, user: &str, id: &str, stored: impl FnOnce() -> Result<Option<V>, E>) -> Result<Option<V>, E> {
        if !ctx.has_queued_writes() {
            self.ids.clear();
        }
        match self.ids.get(&(user.to_owned(), id.to_owned())) {
            Some(answer) => Ok(Some(answer.clone())),
            None => stored(),
        }
    }

    /// Remember a frame just sequenced, whose write may now be queued.
    pub fn remember(&mut self, user: &str, id: &str, answer: V) {
        self.ids.insert((user.to_owned(), id.to_owned()), answer);
    }
}
