//! meshd's state on disk: an embedded database (redb) in the data directory, so a restart keeps
//! every applied resource and the history of revisions. Each apply or delete is one transaction.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::parse::from_stored;
use crate::resource::{Key, Resource};
use crate::state::{Change, State};

const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const REVISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revisions");
/// Workloads that sidecars registered, so a restart does not forget pods until they reconnect.
const REGISTERED: TableDefinition<&str, &[u8]> = TableDefinition::new("registered");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source} (is another meshd using this --data-dir?)")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("stored {what} is unreadable: {message}")]
    Corrupt { what: String, message: String },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// One entry of the history: what an apply or delete changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub revision: u64,
    pub time_unix_ms: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) `meshd.redb` in `dir`; the directory is made readable by its owner only.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let path = dir.join("meshd.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open { path, source })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(RESOURCES).map_err(db_err)?;
        txn.open_table(REVISIONS).map_err(db_err)?;
        txn.open_table(REGISTERED).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// The stored state and the number of the last revision (0 when empty).
    pub fn load(&self) -> Result<(State, u64), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RESOURCES).map_err(db_err)?;
        let mut resources = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let resource = from_stored(value.value()).map_err(|e| StoreError::Corrupt {
                what: key.value().to_string(),
                message: e.to_string(),
            })?;
            resources.push(resource);
        }
        let revisions = txn.open_table(REVISIONS).map_err(db_err)?;
        let last = revisions
            .last()
            .map_err(db_err)?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        Ok((State::from_resources(resources), last))
    }

    /// Writes the new versions of `upserts`, removes `deletes` and records `revision`, atomically.
    pub fn commit(
        &self,
        revision: &Revision,
        upserts: &[&Resource],
        deletes: &[Key],
    ) -> Result<(), StoreError> {
        let record = serde_json::to_vec(revision).map_err(|e| StoreError::Corrupt {
            what: "revision".into(),
            message: e.to_string(),
        })?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RESOURCES).map_err(db_err)?;
            for r in upserts {
                let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
                    what: r.key().to_string(),
                    message: e.to_string(),
                })?;
                table
                    .insert(r.key().storage_key().as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            for key in deletes {
                table.remove(key.storage_key().as_str()).map_err(db_err)?;
            }
            let mut revisions = txn.open_table(REVISIONS).map_err(db_err)?;
            revisions
                .insert(revision.revision, record.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Records (`Some`) or forgets (`None`) a sidecar-registered workload.
    pub fn put_registered(&self, key: &Key, workload: Option<&Resource>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(REGISTERED).map_err(db_err)?;
            match workload {
                Some(w) => {
                    let bytes = serde_json::to_vec(w).map_err(|e| StoreError::Corrupt {
                        what: key.to_string(),
                        message: e.to_string(),
                    })?;
                    table
                        .insert(key.storage_key().as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
                None => {
                    table.remove(key.storage_key().as_str()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every recorded sidecar-registered workload.
    pub fn registered(&self) -> Result<Vec<Resource>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(REGISTERED).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            out.push(from_stored(value.value()).map_err(|e| StoreError::Corrupt {
                what: key.value().to_string(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The last `limit` revisions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(REVISIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)?.rev().take(limit) {
            let (k, v) = entry.map_err(db_err)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    what: format!("revision {}", k.value()),
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;
    use crate::resource::Kind;
    use crate::vip::VipRange;

    #[test]
    fn state_and_history_survive_reopening() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let yaml = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}], selector: {app: web}}\n";
        let docs = parse_documents(yaml).unwrap_or_else(|e| panic!("{e}"));
        let (state, changes) = State::default()
            .apply(docs, &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        {
            let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let upserts: Vec<&Resource> = state.list(Kind::Service).collect();
            let rev = Revision {
                revision: 1,
                time_unix_ms: 5,
                changes,
            };
            store
                .commit(&rev, &upserts, &[])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (loaded, last) = store.load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, state, "VIP and spec survive");
        assert_eq!(last, 1);
        assert_eq!(store.history(10).map(|h| h.len()).unwrap_or(0), 1);

        let key = Key::new(Kind::Service, "default", "web");
        let rev = Revision {
            revision: 2,
            time_unix_ms: 6,
            changes: vec![],
        };
        store
            .commit(&rev, &[], std::slice::from_ref(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let (loaded, last) = store.load().unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.is_empty());
        assert_eq!(last, 2);
        let history = store.history(1).unwrap_or_default();
        assert_eq!(history.first().map(|r| r.revision), Some(2), "newest first");

        // Sidecar registrations are kept apart from applied resources, and survive reopening.
        let w = parse_documents("apiVersion: mesh.dev/v1\nkind: Workload\nmetadata: {name: pod-b}\nspec: {address: 10.0.0.3}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let wkey = w[0].key();
        store
            .put_registered(&wkey, Some(&w[0]))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.registered().unwrap_or_default(), w);
        assert!(store.load().map(|(s, _)| s.is_empty()).unwrap_or(false));
        store
            .put_registered(&wkey, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.registered().unwrap_or_default().is_empty());
        assert_eq!(history.first().map(|r| r.revision), Some(2), "newest first");
    }
}
