//! sled's files on disk, and the real `fsync` that ends each group commit.
//!
//! sled 0.34.7's `flush` writes its log with `pwrite` and ends, on Linux, with
//! `sync_file_range`: that waits for the pages to be written out, but persists neither the
//! file's metadata (its size, when the log grew) nor the disk's write cache, so a power cut
//! or a kernel panic can still lose them; sled's own thread calls `fsync` only every 500 ms.
//! An acknowledged write must be on disk, as Postfix's 250 is (RFC 5321 §6.1): so every
//! group commit is [`SledFiles::commit`], sled's flush and then a real sync of what it
//! wrote, once for the whole batch of waiting writers.
//!
//! What sled 0.34.7 writes in its directory, and so what is synced when:
//! - `db`, the log (every segment, in one file), written by every flush: `fdatasync`ed at
//!   the end of every commit (the data, and the size when the log grew; not the times).
//! - `blobs/<lsn>`: an item larger than a quarter of a segment (128 KiB: the record of a
//!   message with a large body, or a leaf of several such records rewritten whole) is
//!   written to a file of its own while the write is made, which sled never syncs; the log
//!   points at it. Every blob not yet synced is synced in the next commit, then the
//!   directory that names it, before the log.
//! - `conf` (written once, when the store is created, and never synced by sled) and
//!   `snap.<lsn>` (written by sled's recovery at open; synced by sled, but not its rename):
//!   synced once at open, with the directories that name them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// The files of the sled database in `dir`, open for syncing, and the count of commits.
pub(super) struct SledFiles {
    /// `db`, the log: opened once.
    log: File,
    blobs: Blobs,
    commits: Arc<Commits>,
}

/// How many group commits began and how many ended synced; the failure that stopped them.
#[derive(Debug, Default)]
pub(super) struct Commits {
    begun: AtomicU64,
    synced: AtomicU64,
    failed: OnceLock<String>,
}

/// The group commits of a store so far (see [`super::SledStore::commits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitCounts {
    /// Commits that began: sled's flush started, after every write of their batch was made.
    pub begun: u64,
    /// Commits whose files were synced (`fsync`ed) before their writers were answered.
    pub synced: u64,
}

impl Commits {
    pub(super) fn counts(&self) -> CommitCounts {
        CommitCounts {
            begun: self.begun.load(Ordering::SeqCst),
            synced: self.synced.load(Ordering::SeqCst),
        }
    }

    /// Why commits stopped: a sync failed.
    pub(super) fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }
}

impl SledFiles {
    /// Opens the files of the database sled has just opened in `dir`, and syncs what sled
    /// wrote while opening it (its configuration, its snapshot, the directories naming
    /// them, and `dir` in its parent).
    pub(super) fn open(dir: &Path) -> std::io::Result<Self> {
        let log = File::open(dir.join("db"))?;
        let conf = File::open(dir.join("conf"))?;
        conf.sync_all()?;
        let blobs = Blobs::open(dir.join("blobs"))?;
        crate::crypto::sync_directory(dir)?;
        if let Some(parent) = dir.parent() {
            crate::crypto::sync_directory(parent)?;
        }
        Ok(Self {
            log,
            blobs,
            commits: Arc::new(Commits::default()),
        })
    }

    /// The counts of commits, shared with the store.
    pub(super) fn commits(&self) -> Arc<Commits> {
        self.commits.clone()
    }

    /// One group commit: sled's flush, then a real sync of what it wrote. Blocks: call it
    /// from a blocking thread. Once a sync has failed, every later commit fails: the kernel
    /// may have dropped the pages it could not write and marked them clean, so a later
    /// `fsync` that succeeds proves nothing (PostgreSQL's "fsyncgate").
    pub(super) fn commit(&mut self, db: &sled::Db) -> Result<usize, String> {
        if let Some(failed) = self.commits.failure() {
            return Err(failed.to_string());
        }
        self.commits.begun.fetch_add(1, Ordering::SeqCst);
        // Listed before the flush: a blob in the directory then belongs to a write sled
        // had reserved log space for (sled bumps its highest reserved position before it
        // creates the blob), and the flush waits for every such write to be complete, so
        // each listed blob is whole once the flush returns. A blob created later belongs
        // to a later batch, and is listed by its commit.
        let new_blobs = self.blobs.unsynced().map_err(|e| self.fail("blobs", &e))?;
        let flushed = db.flush().map_err(|e| e.to_string())?;
        self.blobs
            .sync(new_blobs)
            .map_err(|e| self.fail("blobs", &e))?;
        self.log.sync_data().map_err(|e| self.fail("db", &e))?;
        self.commits.synced.fetch_add(1, Ordering::SeqCst);
        Ok(flushed)
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> String {
        let message = format!(
            "syncing sled's {what} failed ({e}): writes since the last sync may be lost; \
             restart mailroom"
        );
        let _ = self.commits.failed.set(message.clone());
        self.commits.failed.get().cloned().unwrap_or(message)
    }
}

/// How long before a listing a change of the blobs directory must be for its modification
/// time to be trusted: file times are coarse (a kernel tick), so a blob created just after
/// a listing, in the tick of the previous change, would leave the time as it was.
const SETTLED: Duration = Duration::from_secs(1);

/// sled's `blobs` directory and which of its files are known synced.
struct Blobs {
    dir: PathBuf,
    /// The blobs synced (or found at open: synced by the process that acknowledged their
    /// writes), pruned of those sled removed at each listing.
    synced: HashSet<OsString>,
    /// The directory's modification time at the last listing, when that listing began
    /// long enough after it: while the time stays the same, no blob was created since.
    settled: Option<SystemTime>,
}

/// The blobs a listing found not yet synced, and every name it found.
struct Listing {
    new: Vec<OsString>,
    present: Option<HashSet<OsString>>,
}

impl Blobs {
    fn open(dir: PathBuf) -> std::io::Result<Self> {
        let mut synced = HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            synced.insert(entry?.file_name());
        }
        crate::crypto::sync_directory(&dir)?;
        Ok(Self {
            dir,
            synced,
            settled: None,
        })
    }

    /// The blobs not yet synced; nothing when the directory has not changed since a
    /// listing that can be trusted.
    fn unsynced(&mut self) -> std::io::Result<Listing> {
        let began = SystemTime::now();
        let changed = std::fs::metadata(&self.dir)?.modified()?;
        if self.settled == Some(changed) {
            return Ok(Listing {
                new: Vec::new(),
                present: None,
            });
        }
        let (mut new, mut present) = (Vec::new(), HashSet::new());
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if !self.synced.contains(&name) {
                new.push(name.clone());
            }
            present.insert(name);
        }
        self.settled = began
            .duration_since(changed)
            .is_ok_and(|age| age > SETTLED)
            .then_some(changed);
        Ok(Listing {
            new,
            present: Some(present),
        })
    }

    /// Syncs the blobs `listing` found new, then the directory that names them.
    fn sync(&mut self, listing: Listing) -> std::io::Result<()> {
        for name in &listing.new {
            match File::open(self.dir.join(name)) {
                Ok(blob) => blob.sync_data()?,
                // Removed by sled since the listing: nothing points at it any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if !listing.new.is_empty() {
            crate::crypto::sync_directory(&self.dir)?;
        }
        if let Some(present) = listing.present {
            self.synced = present;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled writes an item over 128 KiB to `blobs/` when the write is made, and never
    /// syncs it: the next commit finds and syncs it, and the one after has nothing new.
    #[test]
    fn a_commit_syncs_the_blobs_sled_wrote_since_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut files = SledFiles::open(dir.path()).unwrap();
        let blobs = || -> HashSet<OsString> {
            std::fs::read_dir(dir.path().join("blobs"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        assert!(blobs().is_empty());
        db.insert("large", vec![7u8; 300 << 10]).unwrap();
        let written = blobs();
        assert_eq!(written.len(), 1, "a blob of its own");
        files.commit(&db).unwrap();
        assert_eq!(files.blobs.synced, written);
        let listing = files.blobs.unsynced().unwrap();
        assert!(listing.new.is_empty());
        assert_eq!(
            files.commits().counts(),
            CommitCounts {
                begun: 1,
                synced: 1
            }
        );
    }

    /// A failed sync stops every later commit, and the store's health with it.
    #[test]
    fn after_a_failed_sync_every_commit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut files = SledFiles::open(dir.path()).unwrap();
        files.fail("db", &std::io::Error::other("EIO"));
        let Err(e) = files.commit(&db) else {
            panic!("committed after a failed sync");
        };
        assert!(e.contains("restart"), "{e}");
        assert_eq!(files.commits().counts().synced, 0);
        assert!(files.commits().failure().is_some());
    }
}
