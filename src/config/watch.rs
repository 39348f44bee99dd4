//! Wakes the daemon when the config file may have changed, and only then.
//!
//! The file's directory is watched (a Kubernetes ConfigMap volume never writes the file:
//! kubelet renames a new `..data` symlink over the old one), but an event counts only
//! when it can change what the path reads: a write, create, rename or removal of the
//! file itself or of a symlink on the way to it. Access events (open, close without
//! write: reading the config makes them) and unrelated files are ignored, and a burst
//! of events becomes one wake-up after a short quiet period. It never reads the
//! config: it only says "look again".

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};

/// How long the directory must be quiet before a burst of events wakes the daemon.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the directory watched while alive; `changes` yields one `()` per settled burst.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    pub changes: tokio::sync::mpsc::Receiver<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} for config changes")]
pub struct WatchError {
    dir: String,
    #[source]
    source: notify::Error,
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The entries of the config's directory whose change can change what `path` reads:
/// the file's own name and, for each symlink on the way to it that stays inside the
/// directory, the first component of its target (`config.yaml -> ..data/config.yaml`,
/// `..data -> ..2026_11_28_…`).
pub fn entries_leading_to(path: &Path) -> BTreeSet<OsString> {
    let dir = directory_of(path);
    let mut names = BTreeSet::new();
    let Some(name) = path.file_name() else {
        return names;
    };
    let mut current = name.to_os_string();
    // Bounded: a symlink loop must not hang the watcher.
    for _ in 0..8 {
        if !names.insert(current.clone()) {
            break;
        }
        let Ok(target) = std::fs::read_link(dir.join(&current)) else {
            break;
        };
        match target.components().next() {
            Some(Component::Normal(first)) if target.is_relative() => current = first.to_os_string(),
            _ => break,
        }
        // `..data/config.yaml`: `..data` may itself be a link (to the timestamped dir).
    }
    names
}

/// Whether an event can change what the config path reads.
pub fn is_relevant(event: &notify::Event, watched: &BTreeSet<OsString>) -> bool {
    let kind_matters = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any | ModifyKind::Other) => true,
        // The end of a write: the content is whole now (a long write gives several
        // modify events before it).
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // Other access (open, read, close without write) and metadata (atime, chmod) never
        // change the content.
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    };
    kind_matters
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| watched.contains(n)))
}

impl ConfigWatch {
    /// Starts watching the directory of `path`. Must be called inside a Tokio runtime.
    pub fn start(path: &Path) -> Result<ConfigWatch, WatchError> {
        use notify::Watcher;
        let dir = directory_of(path);
        let watched = Arc::new(Mutex::new(entries_leading_to(path)));
        let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let config_path = path.to_path_buf();
        let names = watched.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
            if is_relevant(&event, &names) {
                // A swap points the chain at a new timestamped directory: follow it.
                names.extend(entries_leading_to(&config_path));
                let _ = raw_tx.send(());
            }
        })
        .map_err(|source| WatchError {
            dir: dir.display().to_string(),
            source,
        })?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                dir: dir.display().to_string(),
                source,
            })?;
        let (tx, changes) = tokio::sync::mpsc::channel(1);
        let config_path = path.to_path_buf();
        tokio::spawn(async move {
            while raw_rx.recv().await.is_some() {
                // Settle: every event of the burst is folded into this one wake-up.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {}
                // Names that no longer lead to the file (an old `..2026_…` directory) go.
                *watched.lock().unwrap_or_else(|e| e.into_inner()) = entries_leading_to(&config_path);
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        Ok(ConfigWatch {
            _watcher: watcher,
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    fn names(list: &[&str]) -> BTreeSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn reading_the_config_wakes_nothing() {
        let watched = names(&["tlsward.yaml"]);
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(
                !is_relevant(&event(kind, "/etc/tlsward/tlsward.yaml"), &watched),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn writes_renames_and_removals_of_the_file_wake_the_daemon() {
        let watched = names(&["tlsward.yaml"]);
        for kind in [
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(
                is_relevant(&event(kind, "/etc/tlsward/tlsward.yaml"), &watched),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn other_files_in_the_directory_wake_nothing() {
        let watched = names(&["tlsward.yaml"]);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(!is_relevant(&event(write, "/etc/tlsward/tsig.key"), &watched));
        assert!(!is_relevant(&event(write, "/etc/tlsward/tlsward.yaml.swp"), &watched));
    }

    #[test]
    fn a_configmap_mount_follows_the_data_symlink_chain() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("..2026_11_28_16_00_00.1");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("config.yaml"), "owner_id: x\n").unwrap();
        std::os::unix::fs::symlink("..2026_11_28_16_00_00.1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
        let watched = entries_leading_to(&dir.path().join("config.yaml"));
        assert_eq!(watched, names(&["config.yaml", "..data", "..2026_11_28_16_00_00.1"]));
        // kubelet's swap: `..data_tmp` renamed over `..data`.
        let swap = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(is_relevant(
            &event(swap, &dir.path().join("..data").display().to_string()),
            &watched
        ));
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert_eq!(entries_leading_to(&dir.path().join("a")), names(&["a", "b"]));
    }
}
