//! The zone-file provider: `dns/<zone>.zone` under the files store. Keeps the SOA, the
//! NS and every foreign record as found, bumps the serial on each change, and writes
//! the file atomically. Writes nothing when there is nothing to change.

use std::path::PathBuf;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::registry::{Change, ZoneDiff};
use super::{DnsError, DnsProvider};
use crate::model::RecordSet;
use crate::render::zone::{self, Zone};

pub struct ZoneFileProvider {
    name: String,
    zone: String,
    ttl: u32,
    path: PathBuf,
}

impl ZoneFileProvider {
    pub fn new(name: &str, zone: &str, ttl: u32, files_root: &std::path::Path) -> Self {
        let bare = zone.trim_end_matches('.').to_ascii_lowercase();
        ZoneFileProvider {
            name: name.to_string(),
            path: files_root.join("dns").join(format!("{bare}.zone")),
            zone: bare,
            ttl,
        }
    }

    fn error(&self, detail: String) -> DnsError {
        DnsError::ZoneFile {
            provider: self.name.clone(),
            path: self.path.display().to_string(),
            detail,
        }
    }

    fn load(&self) -> Result<Option<Zone>, DnsError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => zone::parse(&text, &self.zone)
                .map(Some)
                .map_err(|e| self.error(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(e.to_string())),
        }
    }
}

fn today(now: OffsetDateTime) -> u32 {
    now.year() as u32 * 10_000 + u32::from(u8::from(now.month())) * 100 + u32::from(now.day())
}

#[async_trait]
impl DnsProvider for ZoneFileProvider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        Ok(self.load()?.map(|z| z.record_sets()).unwrap_or_default())
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        let changes = &diff.changes;
        if changes.is_empty() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let mut zone = self.load()?.unwrap_or_else(|| Zone::new(&self.zone, self.ttl, 0));
        for change in changes {
            match change {
                Change::Upsert(set) => zone.set(&set.name, set.kind, Some(set)),
                Change::Delete(set) => zone.set(&set.name, set.kind, None),
            }
        }
        zone.soa.serial = zone::next_serial(zone.soa.serial, today(now));
        crate::store::files::write_file_atomic(&self.path, zone.render().as_bytes(), 0o644)?;
        Ok(())
    }
}
