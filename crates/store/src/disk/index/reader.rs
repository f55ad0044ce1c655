//! Reads of the index: the writer's decisions that redb does not hold yet
//! (pending.rs), then a redb snapshot begun after looking at them, so a
//! reader never sees an older state of a key than the last one decided
//! before it looked.

use std::collections::HashSet;

use redb::{ReadableDatabase, ReadableTable};

use super::{ENTRIES, Entry, Index, LRU, index_err, lookup};
use crate::StoreError;
use bazel_cache_digest::BlobKey;

/// Read access to the index: the writer's decisions not yet committed,
/// then redb. Cheap to clone.
#[derive(Clone)]
pub(in crate::disk) struct Reader {
    pub(super) index: Index,
}

impl Reader {
    pub(in crate::disk) fn new(index: Index) -> Self {
        Reader { index }
    }

    pub(in crate::disk) fn get(&self, key: &BlobKey) -> Result<Option<Entry>, StoreError> {
        // Pending first: a decision leaves it only once redb holds it.
        if let Some(decided) = self.index.pending.get(key) {
            return Ok(decided);
        }
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        lookup(&table, key)
    }

    /// Looks up many keys in one snapshot (FindMissingBlobs).
    pub(in crate::disk) fn get_many(
        &self,
        keys: impl Iterator<Item = BlobKey>,
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        let keys: Vec<BlobKey> = keys.collect();
        let decided = self.index.pending.get_many(&keys);
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        keys.iter()
            .zip(decided)
            .map(|(key, decided)| match decided {
                Some(entry) => Ok(entry),
                None => lookup(&table, key),
            })
            .collect()
    }

    /// Visits every entry (recovery and tests); `f` returns false to stop.
    pub(in crate::disk) fn for_each(
        &self,
        mut f: impl FnMut(BlobKey, Entry) -> bool,
    ) -> Result<(), StoreError> {
        let mut decided = self.index.pending.snapshot();
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        for row in table.iter().map_err(index_err)? {
            let (k, v) = row.map_err(index_err)?;
            let Some(key) = BlobKey::from_bytes(k.value()) else {
                continue;
            };
            let entry = match decided.remove(&key) {
                Some(decided) => decided,
                None => Entry::decode(v.value()),
            };
            if let Some(entry) = entry
                && !f(key, entry)
            {
                return Ok(());
            }
        }
        // Decided entries redb does not have yet.
        for (key, entry) in decided {
            if let Some(entry) = entry
                && !f(key, entry)
            {
                break;
            }
        }
        Ok(())
    }

    /// Entries from least to most recently used, as (seq, key, entry): the
    /// LRU table's rows that are still current, then the decided entries
    /// not yet in it (their positions are all later: the writer numbers
    /// uses in order). `limit` stops after that many.
    fn lru_rows(&self, limit: usize) -> Result<Vec<(u64, BlobKey, Entry)>, StoreError> {
        let decided = self.index.pending.snapshot();
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let lru = txn.open_table(LRU).map_err(index_err)?;
        let entries = txn.open_table(ENTRIES).map_err(index_err)?;
        let mut out = Vec::new();
        for row in lru.iter().map_err(index_err)? {
            if out.len() >= limit {
                return Ok(out);
            }
            let (seq, k) = row.map_err(index_err)?;
            let seq = seq.value();
            let Some(key) = BlobKey::from_bytes(k.value()) else {
                continue;
            };
            let current = match decided.get(&key) {
                Some(decided) => *decided,
                None => lookup(&entries, &key)?,
            };
            if let Some(entry) = current.filter(|e| e.seq == seq) {
                out.push((seq, key, entry));
            }
        }
        let listed: HashSet<u64> = out.iter().map(|(seq, _, _)| *seq).collect();
        let mut later: Vec<(u64, BlobKey, Entry)> = decided
            .into_iter()
            .filter_map(|(key, entry)| entry.map(|e| (e.seq, key, e)))
            .filter(|(seq, _, _)| !listed.contains(seq))
            .collect();
        later.sort_by_key(|(seq, _, _)| *seq);
        out.extend(later);
        out.truncate(limit);
        Ok(out)
    }

    /// Last use (seconds since the Unix epoch) of the least recently used
    /// entry, `None` when the index is empty (for metrics scrapes).
    pub(in crate::disk) fn lru_head_atime(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lru_rows(1)?.first().map(|(_, _, e)| e.atime))
    }

    /// Keys from least to most recently used (tests and diagnostics).
    pub(in crate::disk) fn lru_order(&self) -> Result<Vec<BlobKey>, StoreError> {
        Ok(self
            .lru_rows(usize::MAX)?
            .into_iter()
            .map(|(_, key, _)| key)
            .collect())
    }
}
