//! A bounded on-disk queue of requests CloudWatch has not taken yet, that survives a restart.
//!
//! One file per request (`<window start ms>-<sequence>.json`), written to a temporary name,
//! synced and renamed, so a crash leaves either the whole request or nothing. Replay is oldest
//! window first; the sequence keeps the order of requests of one window and across restarts.
//! When the spool is over its size the oldest requests are dropped, counted.
//!
//! Its folder is input too: at start only regular files of at most [`MAX_SPOOL_FILE_BYTES`] are
//! indexed (a link, a FIFO, a folder or an oversized file is removed, counted, before the size
//! limit evicts anything, so it cannot push good requests out); files are opened without
//! following links and read with a bound; a file that cannot be read (permissions) is left in
//! place for the operator and the next start, never deleted, and a file that reads but does not
//! parse is removed, counted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encode::put_metric_data::Request;
use crate::telemetry::{self, Counter};

/// One log event of a PutLogEvents batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub timestamp_ms: u64,
    pub message: String,
}

/// What one CloudWatch call sends: the unit of retry and of spooling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    PutMetricData(Request),
    PutLogEvents(Vec<LogEvent>),
    Otlp(crate::encode::otlp::Request),
}

/// A payload and the start of the window it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub window_start_ms: u64,
    pub payload: Payload,
}

/// Where an entry sits: (window start, sequence) orders the spool.
pub type Key = (u64, u64);

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: BTreeMap<Key, u64>,
    total_bytes: u64,
    next_seq: u64,
}

/// The largest spool file the agent writes or reads. One request is at most 1 MB gzipped
/// (PutMetricData) or 1,048,576 bytes of events (PutLogEvents); as uncompressed JSON a
/// PutMetricData request of 1,000 data with 150 values each is under 4 MB. 16 MiB leaves room.
pub const MAX_SPOOL_FILE_BYTES: u64 = 16 * 1024 * 1024;

const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

impl Spool {
    /// Opens (creating it if needed) the spool folder and indexes what an earlier run left there.
    /// Half-written temporary files are removed; unreadable names are left alone.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: BTreeMap::new(),
            total_bytes: 0,
            next_seq: 0,
        };
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = parse_name(name) else {
                continue;
            };
            // `DirEntry::metadata` does not follow links: a link is not a regular file.
            let size = match entry.metadata() {
                Ok(m) if m.is_file() && m.len() <= MAX_SPOOL_FILE_BYTES => m.len(),
                Ok(m) if m.is_dir() => {
                    tracing::warn!(path = %entry.path().display(), "spool entry left in place: a folder");
                    continue;
                }
                Ok(m) => {
                    let kind = if m.is_file() {
                        "over the size cap"
                    } else {
                        "not a regular file"
                    };
                    tracing::warn!(path = %entry.path().display(), kind, "bad spool entry");
                    telemetry::warn(
                        Counter::SpoolItemsDropped,
                        1,
                        "spool entry that is not a request removed",
                    );
                    remove_entry(&entry.path(), &m);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "spool entry left in place: cannot read its metadata");
                    continue;
                }
            };
            spool.entries.insert(key, size);
            spool.total_bytes += size;
            spool.next_seq = spool.next_seq.max(key.1 + 1);
        }
        if !spool.entries.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                requests = spool.entries.len(),
                bytes = spool.total_bytes,
                "spool holds requests from an earlier run; they are sent first-come, oldest first"
            );
        }
        spool.evict();
        Ok(spool)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Stores an item durably. Past the size limit the oldest items are dropped, counted.
    pub fn push(&mut self, item: &Item) -> io::Result<Key> {
        let text = serde_json::to_vec(item).map_err(io::Error::other)?;
        let key = (item.window_start_ms, self.next_seq);
        self.next_seq += 1;
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        let size = text.len() as u64;
        self.entries.insert(key, size);
        self.total_bytes += size;
        telemetry::add(Counter::SpoolWrites, 1);
        self.evict();
        Ok(key)
    }

    /// The oldest item. An unreadable file is removed and counted, and the next one tried.
    pub fn front(&mut self) -> Option<Item> {
        self.oldest(|_| false).map(|(_, item)| item)
    }

    /// The oldest item whose key `skip` does not select, with its key.
    pub fn oldest(&mut self, skip: impl Fn(&Key) -> bool) -> Option<(Key, Item)> {
        while let Some(key) = self.entries.keys().find(|k| !skip(k)).copied() {
            let path = self.path(key);
            match read_bounded(&path) {
                Ok(bytes) => match serde_json::from_slice::<Item>(&bytes) {
                    Ok(item) => return Some((key, item)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "spool file is not a request");
                        telemetry::warn(
                            Counter::SpoolItemsDropped,
                            1,
                            "unparsable spool file removed",
                        );
                        self.remove(key);
                    }
                },
                Err(e) => {
                    // Permissions, a link, a FIFO swapped in: not this agent's to delete. Forget
                    // it for this run; the next start looks again.
                    tracing::warn!(path = %path.display(), error = %e, "spool file left in place: cannot read it");
                    telemetry::warn(
                        Counter::SpoolItemsDropped,
                        1,
                        "unreadable spool file skipped until the next start",
                    );
                    self.forget(key);
                }
            }
        }
        None
    }

    /// Drops an entry from the index without touching its file.
    fn forget(&mut self, key: Key) {
        if let Some(size) = self.entries.remove(&key) {
            self.total_bytes -= size;
        }
    }

    /// Removes the oldest item (after it was sent, or dropped).
    pub fn pop_front(&mut self) {
        if let Some((&key, _)) = self.entries.iter().next() {
            self.remove(key);
        }
    }

    /// The window start of the oldest item.
    pub fn oldest_window_ms(&self) -> Option<u64> {
        self.entries.keys().next().map(|k| k.0)
    }

    /// Whether the spool holds an item other than those `skip` selects.
    pub fn has_other(&self, skip: impl Fn(&Key) -> bool) -> bool {
        self.entries.keys().any(|k| !skip(k))
    }

    /// Removes an item (after it was sent, or dropped). A key no longer there is ignored.
    pub fn remove(&mut self, key: Key) {
        if let Some(size) = self.entries.remove(&key) {
            self.total_bytes -= size;
        }
        if let Err(e) = fs::remove_file(self.path(key)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove a spool file");
            }
        }
    }

    fn evict(&mut self) {
        while self.total_bytes > self.max_bytes {
            let Some((&key, _)) = self.entries.iter().next() else {
                break;
            };
            telemetry::warn(
                Counter::SpoolItemsDropped,
                1,
                "spool full: oldest request dropped",
            );
            self.remove(key);
        }
    }

    fn path(&self, (start, seq): Key) -> PathBuf {
        self.dir.join(format!("{start:020}-{seq:012}{SUFFIX}"))
    }
}

fn parse_name(name: &str) -> Option<Key> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (start, seq) = stem.split_once('-')?;
    Some((start.parse().ok()?, seq.parse().ok()?))
}

/// Reads a spool file without following a link or blocking on a FIFO, at most
/// [`MAX_SPOOL_FILE_BYTES`]; anything but a regular file within the cap is an error.
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_SPOOL_FILE_BYTES {
        return Err(io::Error::other("over the spool file size cap"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SPOOL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SPOOL_FILE_BYTES {
        return Err(io::Error::other("over the spool file size cap"));
    }
    Ok(bytes)
}

/// Removes a bad entry found at start: the link, FIFO or file itself, never what a link points
/// to (`unlink`).
fn remove_entry(path: &Path, _meta: &fs::Metadata) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a bad spool entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(start: u64, message: &str) -> Item {
        Item {
            window_start_ms: start,
            payload: Payload::PutLogEvents(vec![LogEvent {
                timestamp_ms: start,
                message: message.into(),
            }]),
        }
    }

    #[test]
    fn survives_reopen_and_replays_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&item(20_000, "b")).unwrap();
        spool.push(&item(10_000, "a")).unwrap();
        spool.push(&item(20_000, "c")).unwrap();
        drop(spool);
        std::fs::write(dir.path().join("x.tmp"), b"half").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join("x.tmp").exists());
        assert_eq!(spool.len(), 3);
        let mut order = Vec::new();
        while let Some(i) = spool.front() {
            match i.payload {
                Payload::PutLogEvents(e) => order.push(e[0].message.clone()),
                other => panic!("{other:?}"),
            }
            spool.pop_front();
        }
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(spool.bytes(), 0);
        // New items after a reopen sort after the old ones of the same window.
        spool.push(&item(20_000, "d")).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&item(20_000, "e")).unwrap();
        assert_eq!(spool.front(), Some(item(20_000, "d")));
    }

    #[test]
    fn full_spool_drops_the_oldest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&item(1, "x")).unwrap().len() as u64;
        let mut spool = Spool::open(dir.path(), one * 2).unwrap();
        let _counters = crate::testing::counters_blocking();
        let before = telemetry::get(Counter::SpoolItemsDropped);
        spool.push(&item(1, "x")).unwrap();
        spool.push(&item(2, "x")).unwrap();
        assert_eq!(spool.len(), 2);
        spool.push(&item(3, "x")).unwrap();
        assert_eq!(spool.len(), 2, "one past the size drops one");
        assert_eq!(spool.oldest_window_ms(), Some(2));
        assert_eq!(telemetry::get(Counter::SpoolItemsDropped), before + 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn unreadable_files_are_skipped_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&item(5, "ok")).unwrap();
        std::fs::write(
            dir.path().join(format!("{:020}-{:012}.json", 1, 999)),
            b"not json",
        )
        .unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.front(), Some(item(5, "ok")));
        assert_eq!(spool.len(), 1);
    }

    fn name(start: u64, seq: u64) -> String {
        format!("{start:020}-{seq:012}.json")
    }

    #[test]
    fn a_huge_bogus_file_is_removed_before_it_can_evict_good_requests() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for start in [1, 2, 3] {
            spool.push(&item(start, "good")).unwrap();
        }
        drop(spool);
        // The newest name, and (sparse) bigger than any request: at 1 MiB the size limit
        // would drop every good request first if it were counted.
        let bogus = std::fs::File::create(dir.path().join(name(9, 999))).unwrap();
        bogus.set_len(MAX_SPOOL_FILE_BYTES + 1).unwrap();
        let _counters = crate::testing::counters_blocking();
        let before = telemetry::get(Counter::SpoolItemsDropped);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.len(), 3, "the good requests stay");
        assert!(!dir.path().join(name(9, 999)).exists());
        assert_eq!(telemetry::get(Counter::SpoolItemsDropped), before + 1);
    }

    #[test]
    fn a_link_named_like_a_request_is_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&item(5, "good")).unwrap();
        drop(spool);
        let link = dir.path().join(name(1, 7));
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.len(), 1);
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is gone"
        );
        assert!(Path::new("/dev/zero").exists());
        assert_eq!(spool.front(), Some(item(5, "good")));
    }

    #[test]
    fn a_file_that_cannot_be_read_is_left_in_place_and_the_next_one_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let first = spool.push(&item(1, "first")).unwrap();
        spool.push(&item(2, "second")).unwrap();
        // Swapped for a FIFO after the start: opening it must neither block nor delete it.
        let path = dir.path().join(name(first.0, first.1));
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(spool.front(), Some(item(2, "second")));
        assert!(std::fs::symlink_metadata(&path).is_ok(), "left in place");
        assert_eq!(spool.len(), 1);
        // A folder with a request's name is left alone at the next start, too.
        std::fs::create_dir(dir.path().join(name(3, 1))).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            spool.len(),
            1,
            "the FIFO is removed at start, the folder skipped"
        );
        assert!(dir.path().join(name(3, 1)).is_dir());
    }
}
