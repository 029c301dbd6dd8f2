//! The watch service : the registry of
//! the native watches processes registered through their connections, and
//! the fan-out of core events to them.
//!
//! For every core event, each loaded watch provider gets the watches of its
//! API in the event's branch as candidates and does the matching: equality
//! for a watch on a file, the directory and its direct children for a watch
//! on a directory, the prefix and everything below for an FSEvents stream.
//! Watches of other branches are never candidates; paths hidden by a
//! whiteout never produce core events, and registering a watch on one fails
//! with `not-found` (the service resolves every kqueue and inotify path in
//! the branch), so nothing reaches a process about what it cannot see.
//!
//! Records are queued per **watcher** (a kqueue, an inotify instance or an
//! FSEvents stream of one connection). A watcher has at most one delivery
//! outstanding: the first records go out at once, and whatever arrives
//! before the client acknowledges that delivery ([`WatchService::ack`]) is
//! queued and coalesced by the provider, the way a kernel queue merges
//! events the app has not read yet. A burst of any length on one file thus
//! reaches a watcher in at most two deliveries.
//!
//! After queuing, a record with `retire_watch` removes its watch; a
//! `Renamed` event rewrites the path of kqueue and inotify watches under the
//! moved entry (they follow the inode, [`WatchApi::follows_inode`]); and a
//! registration the provider maps onto an existing watch (inotify re-adding
//! a path, kqueue `EV_ADD` on a registered fd) updates it in place.
//!
//! The service also holds the connections' core-event subscriptions
//! (`agentfs watch`), which get every event of their branch under their
//! path prefix, in order, uncoalesced.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use agentfs_plugin_api::{
    watch::{CoreEvent, EventKind, NativeRecord, WatchApi, WatchSpec},
    ErrorCode, PluginError, PluginResult,
};
use agentfs_proto::{CoreEventBatch, WireCoreEvent};
use agentfs_vocab::watch_path::{is_under, retarget};

use super::doorbell::{DoorbellSocket, DoorbellTarget};
use crate::loader::LoadedWatchProvider;

/// Most native watches one connection may hold per API (inotify's own
/// per-user default is 8,192; a shim-injected process tree shares one
/// connection per process).
pub const MAX_WATCHES_PER_CONNECTION: usize = 65_536;

/// Most core-event subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 256;

/// Identifies a client connection.
pub type ConnId = u64;

/// Wakes a connection's writer: it then calls [`WatchService::take_ready`].
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Queued records beyond which the queue is coalesced on the spot.
const COALESCE_AT: usize = 1024;
/// Distinct records a watcher may have queued; more are dropped (and
/// logged), as a kernel queue overflows.
const MAX_QUEUED_RECORDS: usize = 65_536;
/// Core events a subscription may have queued; more are dropped and
/// counted in the next batch.
const MAX_QUEUED_CORE_EVENTS: usize = 1 << 20;

/// One coalesced batch of records for one watcher.
#[derive(Debug)]
pub struct Delivery {
    /// The API.
    pub api: WatchApi,
    /// The watcher (kqueue id, inotify instance, stream id).
    pub instance: u64,
    /// The records, after coalescing.
    pub records: Vec<NativeRecord>,
    /// The same, in the native byte layout.
    pub encoded: Vec<u8>,
    /// The watcher's doorbell, if it gave one.
    pub doorbell: Option<DoorbellTarget>,
}

/// What a connection's writer has to send.
#[derive(Debug)]
pub enum Outgoing {
    /// Native records for a watcher.
    Events(Delivery),
    /// Core events for a subscription.
    Core(CoreEventBatch),
}

/// Counts for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Registered watches (an FSEvents stream counts once).
    pub watches: u64,
    /// Core-event subscriptions.
    pub subscriptions: u64,
    /// Doorbells held.
    pub doorbells: u64,
    /// The last event's sequence number.
    pub last_seq: u64,
}

/// A loaded provider and the API it speaks.
struct Provider {
    api: WatchApi,
    plugin: LoadedWatchProvider,
}

/// Who registered a watch.
#[derive(Debug, Clone)]
struct Owner {
    conn: ConnId,
    api: WatchApi,
    instance: u64,
    branch: String,
}

/// One watcher's queue.
#[derive(Default)]
struct Queue {
    records: Vec<NativeRecord>,
    in_flight: bool,
    doorbell: Option<DoorbellTarget>,
    dropped: u64,
}

impl Queue {
    fn ready(&self) -> bool {
        !self.in_flight && !self.records.is_empty()
    }
}

/// A core-event subscription.
struct Subscription {
    conn: ConnId,
    branch: String,
    prefix: String,
    pending: VecDeque<WireCoreEvent>,
    dropped: u64,
}

#[derive(Default)]
struct State {
    next_watch: u64,
    next_sub: u64,
    /// Candidates per (API, branch).
    watches: HashMap<(u32, String), Vec<WatchSpec>>,
    owners: HashMap<u64, Owner>,
    /// Per connection: queues per (API, instance).
    queues: HashMap<ConnId, HashMap<(u32, u64), Queue>>,
    subs: BTreeMap<u64, Subscription>,
    wakers: HashMap<ConnId, Waker>,
    last_seq: u64,
}

impl State {
    fn queue(&mut self, conn: ConnId, api: WatchApi, instance: u64) -> &mut Queue {
        self.queues
            .entry(conn)
            .or_default()
            .entry((api.0, instance))
            .or_default()
    }

    /// Removes every spec of watch `id` (an FSEvents stream has several).
    fn drop_watch(&mut self, id: u64) -> Option<Owner> {
        let owner = self.owners.remove(&id)?;
        let key = (owner.api.0, owner.branch.clone());
        if let Some(list) = self.watches.get_mut(&key) {
            list.retain(|w| w.watch_id != id);
            if list.is_empty() {
                self.watches.remove(&key);
            }
        }
        Some(owner)
    }

    /// This connection's watches of `api`, in every branch.
    fn conn_watches(&self, conn: ConnId, api: WatchApi) -> Vec<WatchSpec> {
        self.watches
            .iter()
            .filter(|((a, _), _)| *a == api.0)
            .flat_map(|(_, list)| list.iter())
            .filter(|w| self.owners.get(&w.watch_id).is_some_and(|o| o.conn == conn))
            .cloned()
            .collect()
    }
}

/// The registry and the fan-out. Thread-safe; every method is short.
pub struct WatchService {
    providers: Vec<Provider>,
    state: Mutex<State>,
}

impl std::fmt::Debug for WatchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchService")
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| p.api.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn no_such_watch(id: u64) -> PluginError {
    PluginError::new(
        ErrorCode::NOT_FOUND,
        format!("watch {id}: no such watch on this connection"),
    )
}

impl WatchService {
    /// A service over the loaded providers (one per API; a second provider
    /// for the same API is refused).
    pub fn new(providers: Vec<LoadedWatchProvider>) -> PluginResult<Self> {
        let mut out: Vec<Provider> = Vec::new();
        for plugin in providers {
            let api = plugin.api()?;
            if let Some(p) = out.iter().find(|p| p.api == api) {
                return Err(PluginError::invalid(format!(
                    "watch providers '{}' and '{}' both speak {}: configure one",
                    p.plugin.details().name,
                    plugin.details().name,
                    api.name()
                )));
            }
            out.push(Provider { api, plugin });
        }
        Ok(Self {
            providers: out,
            state: Mutex::new(State::default()),
        })
    }

    /// The APIs served, with the plugin names.
    pub fn apis(&self) -> Vec<(WatchApi, String)> {
        self.providers
            .iter()
            .map(|p| (p.api, p.plugin.details().name.clone()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn provider(&self, api: WatchApi) -> PluginResult<&LoadedWatchProvider> {
        self.providers
            .iter()
            .find(|p| p.api == api)
            .map(|p| &p.plugin)
            .ok_or_else(|| {
                PluginError::unsupported(format!(
                    "no {} watch provider is loaded (see the [[watch]] list of the configuration)",
                    api.name()
                ))
            })
    }

    /// Adds a connection; `waker` is called when it has something to send.
    pub fn connect(&self, conn: ConnId, waker: Waker) {
        self.lock().wakers.insert(conn, waker);
    }

    /// Removes a connection and everything it registered: watches, queues,
    /// doorbells, subscriptions.
    pub fn disconnect(&self, conn: ConnId) {
        let mut st = self.lock();
        let ids: Vec<u64> = st
            .owners
            .iter()
            .filter(|(_, o)| o.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            st.drop_watch(id);
        }
        st.queues.remove(&conn);
        st.subs.retain(|_, s| s.conn != conn);
        st.wakers.remove(&conn);
    }

    /// Registers a kqueue or inotify watch for `conn` (`spec.watch_id` is
    /// assigned here; `is_dir` must be resolved by the caller). Returns the
    /// spec in effect: a new watch, or an existing one the provider updated.
    pub fn register(
        &self,
        conn: ConnId,
        api: WatchApi,
        spec: WatchSpec,
    ) -> PluginResult<WatchSpec> {
        let provider = self.provider(api)?;
        let mut st = self.lock();
        let existing = st.conn_watches(conn, api);
        if existing.len() >= MAX_WATCHES_PER_CONNECTION {
            // What inotify_add_watch(2) says at its own limit.
            return Err(PluginError::new(
                ErrorCode::NO_SPACE,
                format!(
                    "this connection already holds {} {} watches (the most one may hold)",
                    existing.len(),
                    api.name()
                ),
            ));
        }
        let fresh = st.next_watch + 1;
        let out = provider.register(
            &existing,
            WatchSpec {
                watch_id: fresh,
                ..spec
            },
        )?;
        if out.watch_id == fresh {
            st.next_watch = fresh;
        } else if st.owners.get(&out.watch_id).is_none_or(|o| o.conn != conn) {
            return Err(PluginError::new(
                ErrorCode::IO,
                format!(
                    "watch provider '{}' returned watch id {}, which is not one of this connection's",
                    provider.details().name,
                    out.watch_id
                ),
            ));
        } else {
            st.drop_watch(out.watch_id);
        }
        self.insert(&mut st, conn, api, out.clone());
        Ok(out)
    }

    fn insert(&self, st: &mut State, conn: ConnId, api: WatchApi, spec: WatchSpec) {
        let branch = spec.branch.as_str().to_string();
        st.owners.insert(
            spec.watch_id,
            Owner {
                conn,
                api,
                instance: spec.instance,
                branch: branch.clone(),
            },
        );
        st.watches.entry((api.0, branch)).or_default().push(spec);
    }

    /// Registers an FSEvents stream: one watch per path prefix, all under
    /// one watch id (returned). Registering a stream id again replaces the
    /// stream.
    pub fn register_stream(
        &self,
        conn: ConnId,
        template: WatchSpec,
        prefixes: &[String],
    ) -> PluginResult<WatchSpec> {
        let api = WatchApi::FSEVENTS;
        let provider = self.provider(api)?;
        if prefixes.is_empty() {
            return Err(PluginError::invalid(format!(
                "FSEvents stream {}: no path to watch",
                template.handle
            )));
        }
        let mut st = self.lock();
        let old: Vec<u64> = st
            .conn_watches(conn, api)
            .iter()
            .filter(|w| w.pid == template.pid && w.handle == template.handle)
            .map(|w| w.watch_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let id = st.next_watch + 1;
        let mut specs: Vec<WatchSpec> = Vec::new();
        for p in prefixes {
            let spec = WatchSpec {
                watch_id: id,
                path: p.as_str().into(),
                ..template.clone()
            };
            let out = provider.register(&specs, spec)?;
            specs.retain(|s| s.path != out.path);
            specs.push(WatchSpec {
                watch_id: id,
                ..out
            });
        }
        st.next_watch = id;
        for o in old {
            st.drop_watch(o);
        }
        let first = specs[0].clone();
        for s in specs {
            let branch = s.branch.as_str().to_string();
            st.watches.entry((api.0, branch)).or_default().push(s);
        }
        st.owners.insert(
            id,
            Owner {
                conn,
                api,
                instance: first.instance,
                branch: first.branch.as_str().to_string(),
            },
        );
        Ok(first)
    }

    /// Removes watch `id` of `conn`.
    pub fn unregister(&self, conn: ConnId, id: u64) -> PluginResult<()> {
        let mut st = self.lock();
        if st.owners.get(&id).is_none_or(|o| o.conn != conn) {
            return Err(no_such_watch(id));
        }
        st.drop_watch(id);
        Ok(())
    }

    /// Sets the doorbell of watcher (`api`, `instance`) of `conn`.
    pub fn set_doorbell(&self, conn: ConnId, api: WatchApi, instance: u64, target: DoorbellTarget) {
        let mut st = self.lock();
        st.queue(conn, api, instance).doorbell = Some(target);
    }

    /// Subscribes `conn` to the core events of `branch` at or under
    /// `prefix` (normalised, `""` for everything). Returns the id.
    pub fn subscribe(&self, conn: ConnId, branch: &str, prefix: &str) -> PluginResult<u64> {
        let mut st = self.lock();
        let held = st.subs.values().filter(|s| s.conn == conn).count();
        if held >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return Err(PluginError::new(
                ErrorCode::NO_SPACE,
                format!(
                    "this connection already holds {held} subscriptions (the most one may hold): \
                     unsubscribe some first"
                ),
            ));
        }
        st.next_sub += 1;
        let id = st.next_sub;
        st.subs.insert(
            id,
            Subscription {
                conn,
                branch: branch.to_string(),
                prefix: prefix.to_string(),
                pending: VecDeque::new(),
                dropped: 0,
            },
        );
        Ok(id)
    }

    /// Ends subscription `id` of `conn`; false if there is none.
    pub fn unsubscribe(&self, conn: ConnId, id: u64) -> bool {
        let mut st = self.lock();
        if st.subs.get(&id).is_some_and(|s| s.conn == conn) {
            st.subs.remove(&id);
            true
        } else {
            false
        }
    }

    /// Fans one core event out: synthesizes records for matching watches,
    /// queues them per watcher, retires and retargets watches, feeds the
    /// subscriptions, and wakes the connections that have something new.
    pub fn dispatch(&self, ev: &CoreEvent) {
        let mut wake: HashSet<ConnId> = HashSet::new();
        let mut direct = Vec::new();
        let wakers: Vec<Waker> = {
            let mut st = self.lock();
            st.last_seq = st.last_seq.max(ev.seq);
            for p in &self.providers {
                self.dispatch_to(&mut st, p, ev, &mut wake);
            }
            // Converted for the subscriptions that want it, once.
            let mut wire = None;
            for s in st.subs.values_mut() {
                if s.branch != ev.branch.as_str() || !subscription_matches(&s.prefix, ev) {
                    continue;
                }
                let wire = wire.get_or_insert_with(|| super::abi_wire::wire_event(ev));
                if s.pending.len() >= MAX_QUEUED_CORE_EVENTS {
                    s.dropped += 1;
                } else {
                    s.pending.push_back(wire.clone());
                }
                wake.insert(s.conn);
            }
            // Watchers with a socket doorbell get their records from this
            // thread, now: no hop through the connection's delivery task.
            for &c in &wake {
                direct.extend(self.take_doorbell_deliveries(&mut st, c));
            }
            wake.iter()
                .filter(|c| self.has_ready(&st, **c))
                .filter_map(|c| st.wakers.get(c).cloned())
                .collect()
        };
        // Outside the registry's lock; dispatches are serialized by the
        // caller, and a watcher has one delivery outstanding at a time, so
        // its records still arrive in order.
        for (sock, bytes) in direct {
            sock.push(bytes);
        }
        for w in wakers {
            w();
        }
    }

    /// Takes the ready deliveries of `conn`'s watchers that have a socket
    /// doorbell (marked outstanding like [`WatchService::take_ready`]'s).
    fn take_doorbell_deliveries(
        &self,
        st: &mut State,
        conn: ConnId,
    ) -> Vec<(Arc<DoorbellSocket>, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(queues) = st.queues.get_mut(&conn) else {
            return out;
        };
        for (&(api, instance), q) in queues.iter_mut() {
            let Some(DoorbellTarget::Socket(sock)) = &q.doorbell else {
                continue;
            };
            let sock = sock.clone();
            if let Some(d) = self.take_queue(WatchApi(api), instance, q) {
                out.push((sock, d.encoded));
            }
        }
        out
    }

    /// True when `conn` has a delivery or a core-event batch to send.
    fn has_ready(&self, st: &State, conn: ConnId) -> bool {
        st.queues
            .get(&conn)
            .is_some_and(|qs| qs.values().any(Queue::ready))
            || st
                .subs
                .values()
                .any(|s| s.conn == conn && (!s.pending.is_empty() || s.dropped > 0))
    }

    /// One coalesced delivery of a ready watcher queue, marking it
    /// outstanding; `None` when there is nothing to send.
    fn take_queue(&self, api: WatchApi, instance: u64, q: &mut Queue) -> Option<Delivery> {
        if !q.ready() {
            return None;
        }
        let Some(provider) = self.providers.iter().find(|p| p.api == api) else {
            q.records.clear();
            return None;
        };
        let records = coalesce(&provider.plugin, std::mem::take(&mut q.records));
        let encoded = provider.plugin.encode(&records).unwrap_or_else(|e| {
            tracing::warn!(provider = %provider.plugin.details().name, error = %e, "watch provider failed to encode records");
            Vec::new()
        });
        if encoded.is_empty() && matches!(q.doorbell, Some(DoorbellTarget::Socket(_))) {
            // Nothing for the app to read, so nothing to acknowledge.
            return None;
        }
        q.in_flight = true;
        Some(Delivery {
            api,
            instance,
            records,
            encoded,
            doorbell: q.doorbell.clone(),
        })
    }

    fn dispatch_to(
        &self,
        st: &mut State,
        p: &Provider,
        ev: &CoreEvent,
        wake: &mut HashSet<ConnId>,
    ) {
        let key = (p.api.0, ev.branch.as_str().to_string());
        let Some(candidates) = st.watches.get(&key).filter(|l| !l.is_empty()) else {
            return;
        };
        let records = match p.plugin.synthesize(candidates, ev) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(provider = %p.plugin.details().name, seq = ev.seq, error = %e, "watch provider failed to synthesize; event skipped for it");
                return;
            }
        };
        let mut retired = Vec::new();
        for r in records {
            let Some(owner) = st.owners.get(&r.watch_id).cloned() else {
                continue;
            };
            if r.retire_watch {
                retired.push(r.watch_id);
            }
            let q = st.queue(owner.conn, p.api, owner.instance);
            if q.records.len() >= COALESCE_AT {
                let queued = std::mem::take(&mut q.records);
                q.records = coalesce(&p.plugin, queued);
            }
            if q.records.len() >= MAX_QUEUED_RECORDS {
                if q.dropped == 0 {
                    tracing::warn!(
                        conn = owner.conn,
                        api = p.api.name(),
                        instance = owner.instance,
                        "watcher queue full: dropping records until it is read"
                    );
                }
                q.dropped += 1;
                continue;
            }
            q.records.push(r);
            if q.ready() {
                wake.insert(owner.conn);
            }
        }
        for id in retired {
            st.drop_watch(id);
        }
        if ev.kind == EventKind::RENAMED && p.api.follows_inode() {
            if let Some(list) = st.watches.get_mut(&key) {
                for w in list.iter_mut() {
                    if let Some(moved) = retarget(w.path.as_str(), ev.path.as_str(), ev.to.as_str())
                    {
                        w.path = moved.into();
                    }
                }
            }
        }
    }

    /// Takes what `conn` can be sent now: one coalesced delivery per ready
    /// watcher (marked outstanding until [`WatchService::ack`]) and the
    /// pending batch of every subscription.
    pub fn take_ready(&self, conn: ConnId) -> Vec<Outgoing> {
        let mut st = self.lock();
        let mut out = Vec::new();
        if let Some(queues) = st.queues.get_mut(&conn) {
            for (&(api, instance), q) in queues.iter_mut() {
                if let Some(d) = self.take_queue(WatchApi(api), instance, q) {
                    out.push(Outgoing::Events(d));
                }
            }
        }
        for (&id, s) in st.subs.iter_mut().filter(|(_, s)| s.conn == conn) {
            if s.pending.is_empty() && s.dropped == 0 {
                continue;
            }
            out.push(Outgoing::Core(CoreEventBatch {
                subscription: id,
                events: s.pending.drain(..).collect(),
                dropped: std::mem::take(&mut s.dropped),
            }));
        }
        out
    }

    /// `conn` consumed the outstanding delivery of watcher (`api`,
    /// `instance`): what queued meanwhile becomes ready (and the
    /// connection is woken).
    pub fn ack(&self, conn: ConnId, api: WatchApi, instance: u64) {
        let waker = {
            let mut st = self.lock();
            let Some(q) = st
                .queues
                .get_mut(&conn)
                .and_then(|qs| qs.get_mut(&(api.0, instance)))
            else {
                return;
            };
            q.in_flight = false;
            if !q.ready() {
                return;
            }
            if let Some(DoorbellTarget::Socket(sock)) = &q.doorbell {
                // Straight into the doorbell, from the thread that read the Ack.
                let sock = sock.clone();
                if let Some(d) = self.take_queue(api, instance, q) {
                    sock.push(d.encoded);
                }
                return;
            }
            st.wakers.get(&conn).cloned()
        };
        if let Some(w) = waker {
            w();
        }
    }

    /// How many watches, subscriptions and doorbells exist.
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            watches: st.owners.len() as u64,
            subscriptions: st.subs.len() as u64,
            doorbells: st
                .queues
                .values()
                .flat_map(|q| q.values())
                .filter(|q| q.doorbell.is_some())
                .count() as u64,
            last_seq: st.last_seq,
        }
    }

    /// The watches of `conn` (for tests and debugging), sorted by id.
    pub fn watches_of(&self, conn: ConnId) -> Vec<WatchSpec> {
        let st = self.lock();
        let mut v: Vec<WatchSpec> = st
            .watches
            .values()
            .flatten()
            .filter(|w| st.owners.get(&w.watch_id).is_some_and(|o| o.conn == conn))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.watch_id, a.path.as_str()).cmp(&(b.watch_id, b.path.as_str())));
        v
    }
}

fn coalesce(provider: &LoadedWatchProvider, records: Vec<NativeRecord>) -> Vec<NativeRecord> {
    if records.len() < 2 {
        return records;
    }
    match provider.coalesce(records.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(provider = %provider.details().name, error = %e, "watch provider failed to coalesce; delivering uncoalesced");
            records
        }
    }
}

/// True when a subscription on `prefix` sees `ev` (branch checked apart).
fn subscription_matches(prefix: &str, ev: &CoreEvent) -> bool {
    match ev.kind {
        EventKind::BRANCH_CREATED | EventKind::SNAPSHOT_CREATED => true,
        EventKind::RENAMED => {
            is_under(prefix, ev.path.as_str()) || is_under(prefix, ev.to.as_str())
        }
        _ => is_under(prefix, ev.path.as_str()),
    }
}
