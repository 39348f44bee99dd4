//! The files store: credentials, manifests, trust roots and state under one directory.
//!
//! Credentials and state sets are written like kubelet writes a mounted Secret: a new
//! versioned directory, then one atomic rename of the `..data` symlink, so a reader
//! (or a crash) sees the old set or the new set, never a mix. Single files are written
//! to a temporary file, fsynced and renamed. Only what carries tlsward's owner mark is
//! ever replaced or deleted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    CredentialBundle, CredentialStore, EventSink, KeyPairPem, MeshView, ObjectStore, StateFile, StateStore, StoreError,
    StoredCredentials, object_key, verify_bundle,
};
use crate::model::names;
use crate::pki::PrivateKeyPem;

const DATA_LINK: &str = "..data";
const VERSION_PREFIX: &str = "..v";
const MARKER: &str = "tlsward.json";
const CLIENTS_DIR: &str = "clients";
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
/// First line of every manifest tlsward writes.
const MANIFEST_HEADER: &str = "# Written by tlsward; edits are overwritten on the next pass.\n";

/// Ownership mark inside every credential set.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    owner: String,
    site: String,
    issuer: String,
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { path, action, source }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos}-{:08x}", rand::random::<u32>())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory"))
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path, "create"))?;
    // The umask may have narrowed the mode; a key must end up exactly 0600.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(path, "chmod"))?;
    f.write_all(contents).map_err(io(path, "write"))?;
    f.sync_all().map_err(io(path, "fsync"))
}

/// Writes one file atomically (temp file, fsync, rename, fsync of the directory).
/// Returns false without writing when the file already holds exactly `contents`.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<bool, StoreError> {
    if fs::read(path).is_ok_and(|old| old == contents)
        && fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == mode)
    {
        return Ok(false);
    }
    let dir = path.parent().expect("a file path has a parent");
    fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    write_new_file(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(io(path, "rename into place"))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Replaces symlink `link` with one pointing at `target`, atomically.
fn swap_symlink(dir: &Path, link: &str, target: &str) -> Result<(), StoreError> {
    let path = dir.join(link);
    if fs::read_link(&path).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    let tmp = dir.join(format!("..tmp-{}", unique_suffix()));
    symlink(target, &tmp).map_err(io(&tmp, "create symlink"))?;
    fs::rename(&tmp, &path).map_err(io(&path, "rename symlink into place"))
}

/// Writes a set of files as one unit under `dir` (see the module doc). Files whose
/// name contains `/` are placed in subdirectories; the top level of each is exposed
/// through a symlink into `..data`.
fn write_set(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    let version = format!("{VERSION_PREFIX}{}", unique_suffix());
    let vdir = dir.join(&version);
    fs::create_dir(&vdir).map_err(io(&vdir, "create directory"))?;
    fs::set_permissions(&vdir, fs::Permissions::from_mode(0o755)).map_err(io(&vdir, "chmod"))?;
    let mut subdirs = Vec::new();
    for (name, contents, mode) in files {
        let path = vdir.join(name);
        let parent = path.parent().expect("joined path has a parent");
        if parent != vdir {
            fs::create_dir_all(parent).map_err(io(parent, "create directory"))?;
            subdirs.push(parent.to_path_buf());
        }
        write_new_file(&path, contents, *mode)?;
    }
    for d in subdirs.iter().rev() {
        sync_dir(d)?;
    }
    sync_dir(&vdir)?;

    let mut top: Vec<&str> = files.iter().map(|(n, ..)| n.split('/').next().unwrap_or(n)).collect();
    top.sort();
    top.dedup();
    // Links first (dangling until the swap), so a crash after the swap leaves none missing.
    for name in &top {
        swap_symlink(dir, name, &format!("{DATA_LINK}/{name}"))?;
    }
    swap_symlink(dir, DATA_LINK, &version)?;
    sync_dir(dir)?;

    for entry in fs::read_dir(dir).map_err(io(dir, "list"))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if name.starts_with(VERSION_PREFIX) && name != version {
            fs::remove_dir_all(&path).map_err(io(&path, "remove old version"))?;
        } else if name.starts_with("..tmp-") {
            fs::remove_file(&path).map_err(io(&path, "remove temporary link"))?;
        } else if is_link
            && name != DATA_LINK
            && !top.contains(&name.as_str())
            && fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK))
        {
            fs::remove_file(&path).map_err(io(&path, "remove stale link"))?;
        }
    }
    sync_dir(dir)
}

/// Whether `dir` holds anything but the leftovers of a set write that was killed
/// before its first `..data` swap (versions, temporary links, links into `..data`).
fn holds_foreign_files(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(VERSION_PREFIX)
            || name.starts_with("..tmp-")
            || fs::read_link(e.path()).is_ok_and(|t| t.starts_with(DATA_LINK));
        !ours
    })
}

/// Reads every file of the current version of a set, by relative path.
fn read_set(dir: &Path) -> Result<Option<BTreeMap<String, Vec<u8>>>, StoreError> {
    let data = dir.join(DATA_LINK);
    if fs::symlink_metadata(&data).is_err() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![(data.clone(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io(&d, "list"))?.flatten() {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((path, format!("{name}/")));
            } else {
                out.insert(name, fs::read(&path).map_err(io(&path, "read"))?);
            }
        }
    }
    Ok(Some(out))
}

#[derive(Clone)]
pub struct FilesStore {
    root: PathBuf,
    owner: String,
}

impl FilesStore {
    pub fn new(root: impl Into<PathBuf>, owner: &str) -> FilesStore {
        FilesStore {
            root: root.into(),
            owner: owner.to_string(),
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    fn credentials_dir(&self) -> PathBuf {
        self.root.join("credentials")
    }
    fn manifest_path(&self, key: &str) -> PathBuf {
        self.root
            .join("manifests")
            .join(format!("{}.yaml", key.replace('/', "-")))
    }

    fn read_bundle(&self, site: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<CredentialBundle, String> {
        let text = |name: &str| -> Result<String, String> {
            let bytes = files.get(name).ok_or_else(|| format!("{name} is missing"))?;
            String::from_utf8(bytes.clone()).map_err(|_| format!("{name} is not text"))
        };
        let marker: Marker = serde_json::from_str(&text(MARKER)?).map_err(|e| format!("{MARKER}: {e}"))?;
        let mut clients = BTreeMap::new();
        for name in files.keys() {
            if let Some(rest) = name.strip_prefix(&format!("{CLIENTS_DIR}/"))
                && let Some(client) = rest.strip_suffix(&format!("/{}", names::TLS_CRT))
            {
                clients.insert(
                    client.to_string(),
                    KeyPairPem {
                        chain_pem: text(name)?,
                        key: PrivateKeyPem::new(text(&format!("{CLIENTS_DIR}/{client}/{}", names::TLS_KEY))?),
                    },
                );
            }
        }
        Ok(CredentialBundle {
            format: Default::default(),
            site: site.to_string(),
            issuer: marker.issuer,
            server: KeyPairPem {
                chain_pem: text(names::TLS_CRT)?,
                key: PrivateKeyPem::new(text(names::TLS_KEY)?),
            },
            client_ca_pem: files
                .contains_key(names::CA_CRT)
                .then(|| text(names::CA_CRT))
                .transpose()?,
            clients,
        })
    }

    fn marker_owner(files: &BTreeMap<String, Vec<u8>>) -> Option<String> {
        files
            .get(MARKER)
            .and_then(|b| serde_json::from_slice::<Marker>(b).ok())
            .map(|m| m.owner)
    }

    /// Whether the manifest at `path` is an object labelled with our owner id.
    fn manifest_owned(&self, path: &Path) -> Result<bool, StoreError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(path, "read")(e)),
        };
        Ok(crate::config::yaml::parse(&text).is_ok_and(|(v, _)| {
            v.pointer(&format!("/metadata/labels/{}", names::OWNER.replace('/', "~1")))
                .and_then(Value::as_str)
                == Some(self.owner.as_str())
        }))
    }
}

/// The store's work, synchronous (files and fsync); the `Store` impl runs it on
/// Tokio's blocking pool so that a slow disk never stalls the daemon's other work.
impl FilesStore {
    fn credentials_now(&self, _sites: &[String]) -> Result<StoredCredentials, StoreError> {
        let mut out = StoredCredentials::default();
        let dir = self.credentials_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&dir, "list")(e)),
        };
        for entry in entries.flatten() {
            let site = entry.file_name().to_string_lossy().into_owned();
            if site.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            match read_set(&path)? {
                Some(files) if Self::marker_owner(&files).as_deref() == Some(self.owner.as_str()) => {
                    match self.read_bundle(&site, &files) {
                        Ok(b) => {
                            out.owned.insert(site, b);
                        }
                        Err(e) => {
                            out.unreadable.insert(site, e);
                        }
                    }
                }
                Some(files) => {
                    let who =
                        Self::marker_owner(&files).map_or("no tlsward owner mark".into(), |o| format!("owner `{o}`"));
                    out.foreign
                        .insert(site, format!("{} holds a credential with {who}", path.display()));
                }
                None => {
                    if holds_foreign_files(&path) {
                        out.foreign
                            .insert(site, format!("{} holds files tlsward did not write", path.display()));
                    }
                }
            }
        }
        Ok(out)
    }

    fn write_credential_now(&self, bundle: &CredentialBundle) -> Result<(), StoreError> {
        verify_bundle(bundle)?;
        let dir = self.credentials_dir().join(&bundle.site);
        if let Some(files) = read_set(&dir)? {
            if Self::marker_owner(&files).as_deref() != Some(self.owner.as_str()) {
                return Err(StoreError::Foreign {
                    what: dir.display().to_string(),
                    owner: self.owner.clone(),
                });
            }
        } else if holds_foreign_files(&dir) {
            return Err(StoreError::Foreign {
                what: dir.display().to_string(),
                owner: self.owner.clone(),
            });
        }
        let marker = Marker {
            owner: self.owner.clone(),
            site: bundle.site.clone(),
            issuer: bundle.issuer.clone(),
        };
        let mut files = vec![
            (
                names::TLS_CRT.to_string(),
                bundle.server.chain_pem.as_bytes().to_vec(),
                CERT_MODE,
            ),
            (
                names::TLS_KEY.to_string(),
                bundle.server.key.expose().as_bytes().to_vec(),
                KEY_MODE,
            ),
            (
                MARKER.to_string(),
                serde_json::to_vec_pretty(&marker).expect("marker is JSON"),
                CERT_MODE,
            ),
        ];
        if let Some(ca) = &bundle.client_ca_pem {
            files.push((names::CA_CRT.to_string(), ca.as_bytes().to_vec(), CERT_MODE));
        }
        for (name, pair) in &bundle.clients {
            files.push((
                format!("{CLIENTS_DIR}/{name}/{}", names::TLS_CRT),
                pair.chain_pem.as_bytes().to_vec(),
                CERT_MODE,
            ));
            files.push((
                format!("{CLIENTS_DIR}/{name}/{}", names::TLS_KEY),
                pair.key.expose().as_bytes().to_vec(),
                KEY_MODE,
            ));
        }
        write_set(&dir, &files)
    }

    fn delete_credential_now(&self, site: &str) -> Result<(), StoreError> {
        let dir = self.credentials_dir().join(site);
        match read_set(&dir)? {
            Some(files) if Self::marker_owner(&files).as_deref() == Some(self.owner.as_str()) => {
                fs::remove_dir_all(&dir).map_err(io(&dir, "remove"))?;
                sync_dir(&self.credentials_dir())
            }
            None => Ok(()),
            Some(_) => Err(StoreError::Foreign {
                what: dir.display().to_string(),
                owner: self.owner.clone(),
            }),
        }
    }

    fn read_state_now(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, StoreError> {
        read_set(&self.root.join("state").join(name))
    }

    fn write_state_now(&self, name: &str, files: &[StateFile]) -> Result<(), StoreError> {
        let state = self.root.join("state");
        fs::create_dir_all(&state).map_err(io(&state, "create directory"))?;
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).map_err(io(&state, "chmod"))?;
        let files: Vec<(String, Vec<u8>, u32)> = files
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.contents.clone(),
                    if f.secret { KEY_MODE } else { CERT_MODE },
                )
            })
            .collect();
        write_set(&state.join(name), &files)
    }

    fn write_trust_now(&self, issuer: &str, pem: &str) -> Result<bool, StoreError> {
        write_file_atomic(
            &self.root.join("trust").join(format!("{issuer}.crt")),
            pem.as_bytes(),
            CERT_MODE,
        )
    }

    fn owned_objects_now(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") && self.manifest_owned(&path)? {
                let text = fs::read_to_string(&path).map_err(io(&path, "read"))?;
                if let Ok((v, _)) = crate::config::yaml::parse(&text) {
                    out.push(object_key(&v));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The manifests written here, and each credential set as the Secret a gateway
    /// would read it from (no namespace: the reader puts it where the gateway runs).
    fn mesh_objects_now(&self) -> Result<Vec<Value>, StoreError> {
        let mut objects = Vec::new();
        let dir = self.root.join("manifests");
        let list = |dir: &Path| -> Vec<PathBuf> {
            fs::read_dir(dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let mut paths = list(&dir);
        // Mesh policies sit in a folder per namespace.
        let folders: Vec<PathBuf> = paths.iter().filter(|p| p.is_dir()).cloned().collect();
        paths.extend(folders.iter().flat_map(|f| list(f)));
        paths.sort();
        for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
            let text = fs::read_to_string(path).map_err(io(path, "read"))?;
            if let Ok((v, _)) = crate::config::yaml::parse(&text) {
                objects.push(v);
            }
        }
        let mut sites: Vec<PathBuf> = fs::read_dir(self.credentials_dir())
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        sites.sort();
        for dir in sites {
            let Some(files) = read_set(&dir)? else { continue };
            let site = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
            let data: serde_json::Map<String, Value> = [names::TLS_CRT, names::TLS_KEY, names::CA_CRT]
                .into_iter()
                .filter_map(|k| {
                    files
                        .get(k)
                        .map(|v| (k.to_string(), Value::String(String::from_utf8_lossy(v).into())))
                })
                .collect();
            objects.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": names::SECRET_TYPE_TLS,
                "metadata": {"name": names::credential_secret(&site)},
                "stringData": data,
            }));
        }
        Ok(objects)
    }

    fn apply_object_now(&self, object: &Value) -> Result<bool, StoreError> {
        let key = object_key(object);
        let path = self.manifest_path(&key);
        if path.exists() && !self.manifest_owned(&path)? {
            return Err(StoreError::Foreign {
                what: path.display().to_string(),
                owner: self.owner.clone(),
            });
        }
        let yaml = serde_saphyr::to_string(object).expect("a JSON value serializes to YAML");
        write_file_atomic(&path, format!("{MANIFEST_HEADER}{yaml}").as_bytes(), CERT_MODE)
    }

    /// Where a mesh policy object lives: `manifests/<namespace>/<kind>-<name>.yaml`
    /// (a folder per namespace, as a GitOps repository holds them).
    fn policy_path(&self, object: &crate::mesh::ObjectRef) -> PathBuf {
        self.root.join("manifests").join(&object.namespace).join(format!(
            "{}-{}.yaml",
            object.kind.to_ascii_lowercase(),
            object.name
        ))
    }

    fn apply_policy_now(&self, object: &Value) -> Result<(), StoreError> {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let path = self.policy_path(&crate::mesh::ObjectRef::new(
            s("/kind"),
            s("/metadata/namespace"),
            s("/metadata/name"),
        ));
        if path.exists() && !self.manifest_owned(&path)? {
            return Err(StoreError::Foreign {
                what: path.display().to_string(),
                owner: self.owner.clone(),
            });
        }
        let dir = path.parent().expect("a policy has a directory");
        fs::create_dir_all(dir).map_err(io(dir, "create"))?;
        let yaml = serde_saphyr::to_string(object).expect("a JSON value serializes to YAML");
        write_file_atomic(&path, format!("{MANIFEST_HEADER}{yaml}").as_bytes(), CERT_MODE).map(|_| ())
    }

    fn delete_policy_now(&self, object: &crate::mesh::ObjectRef) -> Result<(), StoreError> {
        let path = self.policy_path(object);
        if !path.exists() {
            return Ok(());
        }
        if !self.manifest_owned(&path)? {
            return Err(StoreError::Foreign {
                what: path.display().to_string(),
                owner: self.owner.clone(),
            });
        }
        fs::remove_file(&path).map_err(io(&path, "remove"))?;
        let dir = path.parent().expect("a policy has a directory");
        // An emptied namespace folder goes too (fails harmlessly when it holds more).
        let _ = fs::remove_dir(dir);
        sync_dir(dir.parent().expect("manifests"))
    }

    fn delete_object_now(&self, key: &str) -> Result<(), StoreError> {
        let path = self.manifest_path(key);
        if !self.manifest_owned(&path)? {
            return Err(StoreError::Foreign {
                what: path.display().to_string(),
                owner: self.owner.clone(),
            });
        }
        fs::remove_file(&path).map_err(io(&path, "remove"))?;
        sync_dir(path.parent().expect("manifest has a directory"))
    }
}

/// A directory has no place for events: they are only logged.
impl EventSink for FilesStore {}

#[async_trait]
impl CredentialStore for FilesStore {
    async fn credentials(&self, _sites: &[String]) -> Result<StoredCredentials, StoreError> {
        self.off_runtime(|s| s.credentials_now(&[])).await
    }

    async fn write_credential(&self, bundle: &CredentialBundle) -> Result<(), StoreError> {
        let bundle = bundle.clone();
        self.off_runtime(move |s| s.write_credential_now(&bundle)).await
    }

    async fn delete_credential(&self, site: &str) -> Result<(), StoreError> {
        let site = site.to_string();
        self.off_runtime(move |s| s.delete_credential_now(&site)).await
    }
}

#[async_trait]
impl StateStore for FilesStore {
    async fn read_state(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, StoreError> {
        let name = name.to_string();
        self.off_runtime(move |s| s.read_state_now(&name)).await
    }

    async fn write_state(&self, name: &str, files: &[StateFile]) -> Result<(), StoreError> {
        let (name, files) = (name.to_string(), files.to_vec());
        self.off_runtime(move |s| s.write_state_now(&name, &files)).await
    }

    async fn write_trust(&self, issuer: &str, pem: &str) -> Result<bool, StoreError> {
        let (issuer, pem) = (issuer.to_string(), pem.to_string());
        self.off_runtime(move |s| s.write_trust_now(&issuer, &pem)).await
    }
}

#[async_trait]
impl ObjectStore for FilesStore {
    async fn owned_objects(&self) -> Result<Vec<String>, StoreError> {
        self.off_runtime(|s| s.owned_objects_now()).await
    }

    async fn apply_object(&self, object: &Value) -> Result<bool, StoreError> {
        let object = object.clone();
        self.off_runtime(move |s| s.apply_object_now(&object)).await
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.off_runtime(move |s| s.delete_object_now(&key)).await
    }

    async fn apply_policy(&self, object: &Value) -> Result<(), StoreError> {
        let object = object.clone();
        self.off_runtime(move |s| s.apply_policy_now(&object)).await
    }

    async fn delete_policy(&self, object: &crate::mesh::ObjectRef) -> Result<(), StoreError> {
        let object = object.clone();
        self.off_runtime(move |s| s.delete_policy_now(&object)).await
    }

    async fn mesh_objects(
        &self,
        _kinds: &[&str],
        each: &mut (dyn FnMut(Value) + Send),
    ) -> Result<MeshView, StoreError> {
        // A files store holds a few objects: read them all off the runtime, then hand them over.
        let objects = self.off_runtime(|s| s.mesh_objects_now()).await?;
        objects.into_iter().for_each(each);
        Ok(MeshView {
            complete: false,
            sees_workloads: false,
            notes: Vec::new(),
        })
    }
}

impl FilesStore {
    /// Runs `work` on the blocking pool; a panic there is this task's panic.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FilesStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io {
                path: self.root.display().to_string(),
                action: "run file I/O",
                source: std::io::Error::other(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyAlgorithm;
    use crate::issuer::ca::generate_key;

    /// A read that blocks (a FIFO stands in for a disk that stalls) must not stall the
    /// runtime: on a single-threaded runtime, the task that unblocks it still runs.
    #[test]
    fn slow_file_io_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("state/slow");
        std::fs::create_dir_all(set.join("v1")).unwrap();
        std::os::unix::fs::symlink("v1", set.join(DATA_LINK)).unwrap();
        let fifo = set.join("v1/blocked");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let store = FilesStore::new(dir.path(), "o");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let got = rt.block_on(async move {
                let read = tokio::spawn(async move { store.read_state("slow").await });
                // Runs only if the read is not holding the runtime's one thread.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let writer = tokio::task::spawn_blocking(move || std::fs::write(&fifo, b"unblocked"));
                writer.await.unwrap().unwrap();
                read.await.unwrap().unwrap()
            });
            let _ = done_tx.send(got);
        });
        let got = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the runtime stalled behind a blocked file read");
        assert_eq!(got.unwrap()["blocked"], b"unblocked");
    }

    fn self_signed(name: &str) -> KeyPairPem {
        let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        KeyPairPem {
            chain_pem: cert.pem(),
            key: PrivateKeyPem::new(key.serialize_pem()),
        }
    }

    fn bundle(site: &str, server: KeyPairPem) -> CredentialBundle {
        CredentialBundle {
            site: site.into(),
            issuer: "i".into(),
            server,
            client_ca_pem: None,
            clients: BTreeMap::new(),
            format: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_key_that_does_not_match_its_certificate_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesStore::new(dir.path(), "me");
        let a = self_signed("a.example.com");
        let b = self_signed("b.example.com");
        let mixed = KeyPairPem {
            chain_pem: a.chain_pem.clone(),
            key: b.key.clone(),
        };
        let err = store.write_credential(&bundle("s", mixed)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("the server key does not match its certificate"),
            "{err}"
        );
        assert!(!dir.path().join("credentials/s").exists());

        store.write_credential(&bundle("s", a.clone())).await.unwrap();
        let mut with_bad_client = bundle("s", b.clone());
        with_bad_client.clients.insert(
            "c".into(),
            KeyPairPem {
                chain_pem: a.chain_pem.clone(),
                key: b.key.clone(),
            },
        );
        assert!(store.write_credential(&with_bad_client).await.is_err());
        // The earlier credential is still whole and in place.
        let stored = store.credentials(&[]).await.unwrap();
        assert_eq!(stored.owned["s"].server, a);
    }

    #[tokio::test]
    async fn another_owners_credential_is_neither_replaced_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = FilesStore::new(dir.path(), "them");
        let mine = FilesStore::new(dir.path(), "me");
        theirs
            .write_credential(&bundle("s", self_signed("s.example.com")))
            .await
            .unwrap();
        let err = mine
            .write_credential(&bundle("s", self_signed("s.example.com")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(mine.delete_credential("s").await.is_err());
        let seen = mine.credentials(&[]).await.unwrap();
        assert!(seen.owned.is_empty());
        assert!(seen.foreign["s"].contains("owner `them`"), "{:?}", seen.foreign);
    }

    #[tokio::test]
    async fn a_rewrite_swaps_the_whole_set_and_removes_stale_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesStore::new(dir.path(), "me");
        let mut first = bundle("s", self_signed("s.example.com"));
        first.client_ca_pem = Some(self_signed("ca").chain_pem);
        first.clients.insert("c".into(), self_signed("c"));
        store.write_credential(&first).await.unwrap();
        let site = dir.path().join("credentials/s");
        assert!(site.join("ca.crt").exists() && site.join("clients/c/tls.key").exists());
        let second = bundle("s", self_signed("s.example.com"));
        store.write_credential(&second).await.unwrap();
        assert!(!site.join("ca.crt").exists(), "stale ca.crt link left behind");
        assert!(!site.join("clients").exists());
        let versions = fs::read_dir(&site)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(VERSION_PREFIX))
            .count();
        assert_eq!(versions, 1, "old versions are removed");
        assert_eq!(store.credentials(&[]).await.unwrap().owned["s"], second);
    }
}
