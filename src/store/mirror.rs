//! Mirrors: what tlsward's watches saw of the API server, kept in memory in a compact
//! form, so that a pass reads the world from memory instead of listing it again.
//!
//! A mirror is fed by one `kube::runtime::watcher` (initial list in pages, then
//! events) and by the store's own writes (write-through, so the next read sees what
//! was just written even before its watch event arrives). It only reports what it
//! saw: a mirror that has not finished its first list, or whose watch is forbidden,
//! says so, and the store reads the API server instead.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

/// Whether a mirror can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Its first list has not completed yet.
    Syncing,
    /// It holds the world as last seen by its watch.
    Synced,
    /// The watch is not allowed (RBAC): read the API server.
    Forbidden,
}

/// Entries by name, each with the resourceVersion it was seen at.
pub struct Mirror<T> {
    entries: RwLock<Entries<T>>,
    state: tokio::sync::watch::Sender<Freshness>,
    /// Set once a watch runs: its entries are replaced by each (re)list.
    watched: AtomicBool,
    /// Set anew by every change of an entry (see `GENERATIONS`).
    generation: std::sync::atomic::AtomicU64,
}

/// The values by name, and the resourceVersion (as a number) each was seen at.
struct Entries<T> {
    values: BTreeMap<String, T>,
    versions: BTreeMap<String, u64>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries {
            values: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }
}

impl<T> Entries<T> {
    fn set(&mut self, name: String, rv: u64, value: T) {
        self.versions.insert(name.clone(), rv);
        self.values.insert(name, value);
    }
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Mirror {
            entries: RwLock::new(Entries::default()),
            state: tokio::sync::watch::channel(Freshness::Syncing).0,
            watched: AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Generations are drawn from one process-wide counter: a number never names two states,
/// not even of two mirrors (a reload that starts new watches cannot meet an old number),
/// and the newest of several mirrors' generations changes whenever any of them does.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A resourceVersion as a number for ordering: etcd revisions are; anything else
/// sorts first (and is never preferred over a known version).
fn revision(rv: Option<&str>) -> u64 {
    rv.and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl<T: Clone> Mirror<T> {
    pub fn freshness(&self) -> Freshness {
        *self.state.borrow()
    }

    /// Waits until the first list completed (or the watch is forbidden), at most `deadline`.
    pub async fn ready_within(&self, deadline: Duration) -> Freshness {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(deadline, rx.wait_for(|s| *s != Freshness::Syncing)).await;
        self.freshness()
    }

    /// Changes whenever an entry does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation, while a watch keeps this mirror and its first list completed.
    pub fn watched_generation(&self) -> Option<u64> {
        (self.has_watch() && self.freshness() == Freshness::Synced).then(|| self.generation())
    }

    fn changed(&self) {
        let next = GENERATIONS.fetch_add(1, Ordering::AcqRel) + 1;
        self.generation.store(next, Ordering::Release);
    }

    /// Reads every entry (by name) under the lock.
    pub fn with<R>(&self, read: impl FnOnce(&BTreeMap<String, T>) -> R) -> R {
        read(&self.read().values)
    }

    pub fn get(&self, name: &str) -> Option<T> {
        self.read().values.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().values.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().values.is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries<T>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries<T>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what the API server answered to a write (or an event): kept unless an entry
    /// already holds a later version.
    pub fn saw(&self, name: &str, resource_version: Option<&str>, value: Option<T>) {
        let rv = revision(resource_version);
        let mut entries = self.write();
        if entries.versions.get(name).is_some_and(|known| *known > rv && rv != 0) {
            return;
        }
        match value {
            Some(v) => entries.set(name.to_string(), rv, v),
            None => {
                entries.values.remove(name);
                entries.versions.remove(name);
            }
        }
        self.changed();
    }

    /// Replaces every entry (a list that is not a watch's: the store's own LIST).
    pub fn replace(&self, all: BTreeMap<String, (Option<String>, T)>) {
        let mut entries = Entries::default();
        for (name, (rv, v)) in all {
            entries.set(name, revision(rv.as_deref()), v);
        }
        *self.write() = entries;
        self.changed();
    }

    /// Whether a watch keeps (or is about to keep) this mirror current.
    pub fn has_watch(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// Notes that a watch will feed this mirror: readers wait for its first list.
    pub fn expect_watch(&self) {
        self.watched.store(true, Ordering::Relaxed);
    }
}

/// Keeps `mirror` equal to what a watch on `api` sees, each object turned into its
/// compact form by `view` (`None`: not kept). Runs until aborted; a forbidden watch
/// marks the mirror and ends.
pub async fn follow<K, T>(
    api: kube::Api<K>,
    config: watcher::Config,
    mirror: std::sync::Arc<Mirror<T>>,
    what: String,
    view: impl Fn(&K) -> Option<T> + Send + 'static,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    mirror.expect_watch();
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut relist: Option<Entries<T>> = None;
    while let Some(event) = stream.next().await {
        let name_rv = |o: &K| {
            let meta = o.meta();
            (
                meta.name.clone().unwrap_or_default(),
                revision(meta.resource_version.as_deref()),
            )
        };
        match event {
            Ok(watcher::Event::Init) => relist = Some(Entries::default()),
            Ok(watcher::Event::InitApply(o)) => {
                let (name, rv) = name_rv(&o);
                if let (Some(buffer), Some(v)) = (relist.as_mut(), view(&o)) {
                    buffer.set(name, rv, v);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(mut buffer) = relist.take() {
                    let mut entries = mirror.write();
                    // A write-through newer than the list survives it.
                    for (name, rv) in &entries.versions {
                        if buffer.versions.get(name).is_some_and(|listed| listed < rv)
                            && let Some(v) = entries.values.get(name)
                        {
                            buffer.set(name.clone(), *rv, v.clone());
                        }
                    }
                    *entries = buffer;
                    drop(entries);
                    mirror.changed();
                }
                mirror.state.send_replace(Freshness::Synced);
                tracing::debug!(watch = %what, entries = mirror.len(), "watch synced");
            }
            Ok(watcher::Event::Apply(o)) => {
                let (name, _) = name_rv(&o);
                let rv = o.meta().resource_version.clone();
                mirror.saw(&name, rv.as_deref(), view(&o));
            }
            Ok(watcher::Event::Delete(o)) => {
                let (name, _) = name_rv(&o);
                let rv = o.meta().resource_version.clone();
                mirror.saw(&name, rv.as_deref(), None);
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s)))
            | Err(watcher::Error::WatchStartFailed(kube::Error::Api(s)))
                if s.code == 403 =>
            {
                tracing::info!(watch = %what, "not allowed to list and watch: reading on every pass instead");
                mirror.state.send_replace(Freshness::Forbidden);
                return;
            }
            Err(e) => tracing::warn!(watch = %what, error = %crate::deadline::chain(&e), "watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_event_never_replaces_a_newer_write() {
        let m: Mirror<&str> = Mirror::default();
        m.saw("a", Some("7"), Some("written"));
        m.saw("a", Some("5"), Some("stale event"));
        assert_eq!(m.get("a"), Some("written"));
        m.saw("a", Some("9"), Some("newer"));
        assert_eq!(m.get("a"), Some("newer"));
        m.saw("a", Some("8"), None);
        assert_eq!(m.get("a"), Some("newer"), "a stale delete");
        m.saw("a", Some("10"), None);
        assert_eq!(m.get("a"), None);
    }

    #[test]
    fn generations_never_repeat_across_mirrors_and_the_newest_moves_with_any() {
        let (a, b): (Mirror<u8>, Mirror<u8>) = (Mirror::default(), Mirror::default());
        a.saw("x", Some("1"), Some(1));
        b.saw("x", Some("1"), Some(1));
        assert_ne!(a.generation(), b.generation(), "a new mirror met an old number");
        let newest = a.generation().max(b.generation());
        a.saw("y", Some("2"), Some(2));
        assert!(a.generation() > newest);
    }

    #[tokio::test]
    async fn a_mirror_reports_syncing_until_its_first_list() {
        let m: Mirror<u8> = Mirror::default();
        assert_eq!(m.ready_within(Duration::from_millis(10)).await, Freshness::Syncing);
        assert!(!m.has_watch());
        m.state.send_replace(Freshness::Synced);
        assert_eq!(m.ready_within(Duration::from_millis(10)).await, Freshness::Synced);
        assert_eq!(m.watched_generation(), None, "no watch keeps it");
        m.expect_watch();
        assert_eq!(m.watched_generation(), Some(m.generation()));
    }
}
