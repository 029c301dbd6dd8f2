//! Change events: every mutation through the core publishes exactly one
//! [`Event`] with branch-relative paths to every subscriber, in order.
//! The host converts them into the plugin ABI's event type for watch
//! providers.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, Mutex,
};

use super::path::BranchPath;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A file, directory or symlink appeared at `path`.
    Created,
    /// The entry at `path` was removed.
    Removed,
    /// The content of the file at `path` changed.
    Modified,
    /// The entry moved from `path` to `to`.
    Renamed {
        /// The new path.
        to: BranchPath,
    },
    /// Mode, times or extended attributes of `path` changed.
    AttributesChanged,
    /// The branch was created (`path` is the root).
    BranchCreated,
    /// A snapshot of the branch was taken (`path` is the root).
    SnapshotCreated {
        /// The snapshot's name.
        snapshot: String,
    },
}

/// One change in one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Sequence number, increasing in publication order.
    pub seq: u64,
    /// The process on whose behalf the change was made (see
    /// [`crate::Tree::on_behalf_of`]), or 0 when unknown.
    pub pid: u32,
    /// The branch it happened in.
    pub branch: String,
    /// What happened.
    pub kind: EventKind,
    /// The path it happened to (the source, for a rename).
    pub path: BranchPath,
    /// True when the entry is a directory.
    pub is_dir: bool,
    /// Size before the change, when known and meaningful.
    pub size_before: Option<u64>,
    /// Size after the change, when known and meaningful.
    pub size_after: Option<u64>,
}

/// A change before it is published: an [`Event`] without branch and
/// sequence number, as the file operations report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: EventKind,
    /// The path it happened to.
    pub path: BranchPath,
    /// True when the entry is a directory.
    pub is_dir: bool,
    /// Size before, when meaningful.
    pub size_before: Option<u64>,
    /// Size after, when meaningful.
    pub size_after: Option<u64>,
}

impl Change {
    /// A change with no sizes.
    pub fn new(kind: EventKind, path: BranchPath, is_dir: bool) -> Self {
        Self {
            kind,
            path,
            is_dir,
            size_before: None,
            size_after: None,
        }
    }

    /// With sizes before and after.
    pub fn sizes(mut self, before: Option<u64>, after: Option<u64>) -> Self {
        self.size_before = before;
        self.size_after = after;
        self
    }

    /// The event for this change in `branch`, made for process `pid` (0:
    /// unknown); sequence number 0 until published.
    pub fn into_event(self, branch: &str, pid: u32) -> Event {
        Event {
            seq: 0,
            pid,
            branch: branch.to_string(),
            kind: self.kind,
            path: self.path,
            is_dir: self.is_dir,
            size_before: self.size_before,
            size_after: self.size_after,
        }
    }
}

impl Event {
    /// A compact one-line form, e.g. `renamed a -> b` (used in tests and logs).
    pub fn summary(&self) -> String {
        let dir = if self.is_dir { "/" } else { "" };
        match &self.kind {
            EventKind::Created => format!("created {}{dir}", self.path),
            EventKind::Removed => format!("removed {}{dir}", self.path),
            EventKind::Modified => format!("modified {}", self.path),
            EventKind::Renamed { to } => format!("renamed {}{dir} -> {to}{dir}", self.path),
            EventKind::AttributesChanged => format!("attributes {}{dir}", self.path),
            EventKind::BranchCreated => format!("branch-created {}", self.branch),
            EventKind::SnapshotCreated { snapshot } => {
                format!("snapshot-created {} {snapshot}", self.branch)
            }
        }
    }
}

thread_local! {
    static ACTING_FOR: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with every event it publishes on this thread attributed to
/// process `pid` (unless the operation names its own, see
/// [`crate::Tree::on_behalf_of`]): a daemon serving a client wraps the
/// client's request in it, so graph changes (branch and snapshot
/// creation) carry the client's pid too, while requests of other clients
/// run concurrently on other threads.
pub fn acting_for<T>(pid: u32, f: impl FnOnce() -> T) -> T {
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTING_FOR.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ACTING_FOR.with(|c| c.replace(pid)));
    f()
}

/// The pid [`acting_for`] set on this thread, or 0.
pub(crate) fn acting_pid() -> u32 {
    ACTING_FOR.with(|c| c.get())
}

/// Identifies a subscription, for [`Store::unsubscribe`](crate::Store::unsubscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// A subscription: the id and the receiving end of its queue.
#[derive(Debug)]
pub struct Subscription {
    /// Pass to `unsubscribe`.
    pub id: SubscriptionId,
    /// Events, in publication order.
    pub events: mpsc::Receiver<Event>,
}

/// A function every event is given to as it is published (see
/// [`Store::set_event_hook`](crate::Store::set_event_hook)).
pub type EventHook = Box<dyn Fn(&Event) + Send + Sync>;

/// Fans events out to subscribers. A subscriber whose receiver is gone is
/// dropped at the next publication.
#[derive(Default)]
pub struct EventBus {
    seq: AtomicU64,
    next_id: AtomicU64,
    subscribers: Mutex<Vec<(SubscriptionId, mpsc::Sender<Event>)>>,
    hook: std::sync::OnceLock<EventHook>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("seq", &self.seq)
            .field("hook", &self.hook.get().is_some())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Adds a subscriber; it sees every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel();
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        Subscription { id, events: rx }
    }

    /// Removes a subscriber; true if it was subscribed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let before = subs.len();
        subs.retain(|(i, _)| *i != id);
        subs.len() != before
    }

    /// Sets the hook (once; false if one is set already).
    pub fn set_hook(&self, hook: EventHook) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Publishes one event, assigning its sequence number: to the hook
    /// first, then to the subscribers. Publications are serialised, so
    /// the hook sees events in sequence order.
    pub fn publish(&self, mut event: Event) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        event.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(h) = self.hook.get() {
            h(&event);
        }
        subs.retain(|(_, tx)| tx.send(event.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, path: &str) -> Event {
        Event {
            seq: 0,
            pid: 42,
            branch: "b".into(),
            kind,
            path: BranchPath::parse(path).unwrap(),
            is_dir: false,
            size_before: Some(1),
            size_after: None,
        }
    }

    #[test]
    fn subscribers_get_ordered_events_until_they_leave() {
        let bus = EventBus::default();
        let a = bus.subscribe();
        let b = bus.subscribe();
        bus.publish(ev(EventKind::Created, "x"));
        assert!(bus.unsubscribe(b.id));
        assert!(!bus.unsubscribe(b.id));
        bus.publish(ev(EventKind::Removed, "x"));
        let got: Vec<_> = a.events.try_iter().map(|e| (e.seq, e.summary())).collect();
        assert_eq!(got, vec![(1, "created x".into()), (2, "removed x".into())]);
        assert_eq!(b.events.try_iter().count(), 1);
        drop(a);
        bus.publish(ev(EventKind::Modified, "x"));
        assert!(bus.subscribers.lock().unwrap().is_empty());
    }
}
