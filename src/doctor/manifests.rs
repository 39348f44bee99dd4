//! Kubernetes objects from YAML or JSON files and folders (multi-document, `List`s
//! too) into an `Inventory`, for `doctor --manifests`. A syntax error or a known kind
//! of the wrong shape names FILE:LINE:COL; unknown kinds are counted and skipped.

use std::path::{Path, PathBuf};

use crate::config::yaml;
use crate::mesh::{Inventory, ObjectError};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{col}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}:{line}:{col}: {source}")]
    Object {
        path: PathBuf,
        line: usize,
        col: usize,
        source: ObjectError,
    },
    #[error("{0}: no .yaml, .yml or .json file there")]
    Empty(PathBuf),
}

/// The manifest files under `paths`: files as given, folders walked in name order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk(path, &mut out)?;
            if out.len() == before {
                return Err(ManifestError::Empty(path.clone()));
            }
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads every object under `paths` into one inventory.
pub fn read_manifests(paths: &[PathBuf]) -> Result<Inventory, ManifestError> {
    let mut inventory = Inventory::new();
    for path in files(paths)? {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        add_text(&mut inventory, &path, &text)?;
    }
    Ok(inventory)
}

/// Adds the objects of one file's text.
pub fn add_text(inventory: &mut Inventory, path: &Path, text: &str) -> Result<(), ManifestError> {
    for document in yaml::documents(text) {
        let (object, pos) = document.map_err(|e| ManifestError::Syntax {
            path: path.to_path_buf(),
            line: e.pos.line,
            col: e.pos.col,
            message: e.message,
        })?;
        inventory
            .add(object, "default")
            .map_err(|source| ManifestError::Object {
                path: path.to_path_buf(),
                line: pos.line,
                col: pos.col,
                source,
            })?;
    }
    Ok(())
}
