//! The config: its types, the JSON Schema derived from them, and loading with every
//! error reported at once as `FILE:LINE:COL: field.path: message`.
//!
//! Loading is: YAML → positioned JSON → schema check (types, unknown fields) →
//! semantic checks (references, duplicates, host names, …) → typed `Config`.
//! It reads only the config file itself, never the secret files it names.

mod egress;
mod mesh;
mod schema;
mod types;
mod validate;
mod values;
pub mod watch;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use egress::*;
pub use mesh::*;
pub use schema::json_schema;
pub use types::*;
pub use values::{Duration, RenewBefore, duration_message};

use crate::model::Hostname;
use yaml::Pos;

/// A validated config. Every reference resolves and every host name is valid.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: ConfigFile,
    /// Where it was read from (for messages and for watching it).
    pub path: PathBuf,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Pos,
    /// `sites[1].hosts[0]`; empty for the document itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "(document)"
        } else {
            &self.field
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, field, self.message
        )
    }
}

/// Every problem found in a config file, in file order.
#[derive(Clone, Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The fully qualified name of a route target: `<svc>.<ns>` becomes
/// `<svc>.<ns>.svc.cluster.local`; `<svc>.<ns>.svc.<domain>` stays; anything else (a
/// short name, whose namespace Istio would guess) is `None`.
/// Reads a secret from the file or environment variable the config names (`field` is
/// the config path, for the message); never inline.
pub fn read_secret(field: &str, file: &Option<String>, env: &Option<String>) -> Result<String, SecretError> {
    match (file, env) {
        (Some(path), _) => {
            warn_if_others_may_read(field, path);
            std::fs::read_to_string(path).map_err(|e| SecretError(format!("{field}_file {path}: {e}")))
        }
        (None, Some(var)) => std::env::var(var).map_err(|_| SecretError(format!("{field}_env: ${var} is not set"))),
        (None, None) => Err(SecretError(format!(
            "{field}: neither {field}_file nor {field}_env is set"
        ))),
    }
}

/// Says so (a warning, when the config is loaded) when a secret file is readable by
/// users other than its owner and group (`o+r`): another process on the machine can
/// read the key.
fn warn_if_others_may_read(field: &str, path: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            field = %format!("{field}_file"),
            path = %path,
            mode = %format!("{:04o}", meta.permissions().mode() & 0o7777),
            "secret file readable by other users: chmod o-r (in a pod, mount it with defaultMode 0440)"
        );
    }
}

/// A secret the config names could not be read (the message names the field and file).
#[derive(Debug, thiserror::Error)]
#[error("cannot read a secret: {0}")]
pub struct SecretError(pub String);

pub fn service_host(to: &str) -> Option<String> {
    let to = to.strip_suffix('.').unwrap_or(to);
    let labels: Vec<&str> = to.split('.').collect();
    match labels.as_slice() {
        [svc, ns] if !svc.is_empty() && !ns.is_empty() => Some(format!("{svc}.{ns}.svc.cluster.local")),
        [_, _, "svc", domain @ ..] if !domain.is_empty() => Some(to.to_string()),
        _ => None,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: shown.clone(),
                pos: Pos::START,
                field: String::new(),
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let file = Self::parse(&shown, &text)?;
        Ok(Config {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Validates config text; `name` is used in messages.
    pub fn parse(name: &str, text: &str) -> Result<ConfigFile, ConfigErrors> {
        let at = |pos: Pos, field: String, message: String| ConfigError {
            file: name.to_string(),
            pos,
            field,
            message,
        };
        let (value, positions) =
            yaml::parse(text).map_err(|e| ConfigErrors(vec![at(e.pos, String::new(), e.message)]))?;
        let mut problems = schema::check(&value);
        problems.extend(validate::semantics(&value));
        if problems.is_empty() {
            match serde_json::from_value::<ConfigFile>(value) {
                Ok(file) => return Ok(file),
                // The schema and the types disagree: a bug, but still say where.
                Err(e) => problems.push(validate::Problem::at_value("", e.to_string())),
            }
        }
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| {
                let pos = if p.at_key {
                    positions.key(&p.pointer)
                } else {
                    positions.value(&p.pointer)
                };
                at(pos, display_path(&p.pointer), p.message)
            })
            .collect();
        errors.sort_by(|a, b| (a.pos.line, a.pos.col, &a.field).cmp(&(b.pos.line, b.pos.col, &b.field)));
        errors.dedup();
        Err(ConfigErrors(errors))
    }

    pub fn site(&self, name: &str) -> Option<&SiteSpec> {
        self.file.sites.iter().find(|s| s.name == name)
    }

    /// The site's hosts, validated and lowercased.
    pub fn hosts(site: &SiteSpec) -> Vec<Hostname> {
        site.hosts
            .iter()
            .filter_map(|h| Hostname::parse(h, true).ok())
            .collect()
    }
}

/// `/sites/1/hosts/0` → `sites[1].hosts[0]`; keys with dots or slashes are quoted.
pub fn display_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else if seg.contains(['.', '/', ' ']) || seg.is_empty() {
            out.push_str(&format!("[{seg:?}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_field_access() {
        assert_eq!(display_path("/sites/1/hosts/0"), "sites[1].hosts[0]");
        assert_eq!(
            display_path("/gateway/selector/app.kubernetes.io~1name"),
            "gateway.selector[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(display_path(""), "");
    }
}
