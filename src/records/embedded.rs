//! The embedded record store: a redb database (`trackd.redb` in the data directory) holding
//! the records by sequence and the idempotency keys, behind a write-ahead journal
//! (`records-journal/`): each batch is made durable by one journal fsync, then applied to the
//! redb index without a sync; the index is committed durably at each journal checkpoint, by
//! the indexer thread, off the writer's path.

use super::journal::{self, Journal};
use super::{
    Batch, Entry, Fields, Lookup, Record, RecordSink, SinkError, SinkFuture, Void, Voiding,
};
use crate::tracking::number::TrackingNumber;
use crate::tracking::permute::Permutation;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// `seq >> GROUP_BITS` → the records of those sequence numbers, as [`Batch`] entries in
/// sequence order. Keyed by sequence, not by the (pseudo-random) tracking number, so writes
/// append to the tree's last pages, and grouped so that one insert carries up to 32 records
/// (one insert per record was most of the index's cost); a lookup inverts the permutation to
/// find the key.
pub const RECORD_GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("record_groups");
pub const GROUP_BITS: u32 = 5;

/// Opens (or creates) the data directory's redb file, shared by records and idempotency keys.
pub fn open(data_dir: &Path) -> Result<Arc<Database>, String> {
    crate::support::private::dir(data_dir)?;
    let path = data_dir.join("trackd.redb");
    let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // It holds customer names.
    crate::support::private::restrict(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Create the tables once so that readers never find them missing.
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(RECORD_GROUPS).map_err(|e| e.to_string())?;
    tx.open_table(META).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(Arc::new(db))
}

/// The highest sequence number recorded in the data directory `data_dir` (the redb index and
/// the journal frames after its checkpoint), read without changing anything; `None`: no
/// record. Fails while a running trackd holds the files.
pub fn highest_seq(data_dir: &Path) -> Result<Option<u64>, String> {
    let path = data_dir.join("trackd.redb");
    if !path.exists() {
        return Ok(None);
    }
    let db = Database::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let mut highest = None;
    let from = match tx.open_table(META) {
        Ok(meta) => stored_checkpoint(&meta).map_err(|e| e.to_string())?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.to_string()),
    };
    match tx.open_table(RECORD_GROUPS) {
        Ok(groups) => {
            if let Some((_, v)) = groups.last().map_err(|e| e.to_string())? {
                let batch = Batch::from_bytes(v.value().to_vec())
                    .ok_or("the last record group does not decode")?;
                highest = batch.entries().map(|e| e.seq).max();
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let journal_dir = data_dir.join("records-journal");
    if journal_dir.exists() {
        let replay = journal::replay(&journal_dir, from).map_err(|e| e.to_string())?;
        for payload in replay.payloads {
            if let Some(batch) = Batch::from_bytes(payload) {
                highest = highest.max(batch.entries().map(|e| e.seq).max());
            }
        }
    }
    Ok(highest)
}

/// Bookkeeping: the journal checkpoint.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Every journal segment below this number is applied to the records table durably.
const CHECKPOINT: &str = "journal_checkpoint";
/// Records of sequences below this were removed by the retention.
const EXPIRED_BELOW: &str = "expired_below_seq";
/// The latest retention cutoff, in Unix microseconds.
const EXPIRED_BEFORE: &str = "expired_before_micros";
/// Groups removed per transaction by the retention.
const EXPIRE_CHUNK: usize = 512;

/// The journal segment from which frames still need replaying (0: none checkpointed yet).
fn stored_checkpoint(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<u64, redb::StorageError> {
    Ok(meta.get(CHECKPOINT)?.map_or(0, |v| v.value()))
}

#[derive(Clone)]
pub struct EmbeddedRecords {
    index: Arc<Index>,
    _indexer: Arc<Indexer>,
    permutation: Permutation,
    journal: Arc<Mutex<JournalState>>,
    /// Held by a void from reading the record to journaling its voided form.
    voids: Arc<Mutex<()>>,
}

struct JournalState {
    journal: Journal,
    /// An append failed: its frame may be half on disk, so writing moves to a new segment.
    broken: bool,
    /// This segment has asked the indexer for a spare.
    spare_requested: bool,
}

/// The redb records table and the journaled batches not yet applied to it.
struct Index {
    db: Arc<Database>,
    /// Journaled batches not yet in the records table, oldest first; lookups search them too.
    unapplied: Mutex<Vec<Arc<Batch>>>,
    /// Signalled when `unapplied` gains its first batch.
    wake: Condvar,
    /// Held while applying (by the indexer thread, or by a checkpoint).
    applying: Mutex<()>,
    /// Tells the indexer thread to finish.
    stop: AtomicBool,
    /// Groups set aside because they did not decode ([`QUARANTINE`]).
    quarantined: Mutex<std::collections::BTreeSet<u64>>,
    /// Sequences below this had their records removed by the retention, the latest cutoff
    /// being `expired_before` (Unix microseconds).
    expired_below: AtomicU64,
    expired_before: AtomicU64,
    /// A checkpoint the indexer owes: every journal segment below this number (0: none).
    checkpoint_due: AtomicU64,
    /// The journal wants a spare file for its next segment.
    spare_wanted: AtomicBool,
    /// Checkpoints the writer had to make itself (no spare ready), for tests and logs.
    inline_checkpoints: AtomicU64,
    journal_dir: PathBuf,
    segment_bytes: u64,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("redb: {e}"))
}

/// Applies batches to the records table: their entries are merged into the groups they
/// belong to (applying an entry twice is harmless: same sequence, same record).
/// (record group, Unix microseconds when it was set aside) → the bytes of a stored group that
/// did not decode. They are kept (an operator may recover records from them), out of the way:
/// the group is written anew with the records that arrive for it.
pub const QUARANTINE: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("quarantined_groups");

/// The groups set aside so far (their numbers).
fn quarantined_groups(tx: &redb::ReadTransaction) -> Result<Vec<u64>, redb::Error> {
    let t = match tx.open_table(QUARANTINE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut groups = Vec::new();
    for row in t.iter()? {
        groups.push(row?.0.value().0);
    }
    groups.dedup();
    Ok(groups)
}

/// Applies batches to the records table: their entries are merged into the groups they
/// belong to (applying an entry twice is harmless: same sequence, same record). A stored group
/// that does not decode is set aside in [`QUARANTINE`] (returned, to be logged and counted)
/// and written anew, so that one bad group never stops the indexing of the rest.
fn apply(tx: &redb::WriteTransaction, batches: &[Arc<Batch>]) -> Result<Vec<u64>, redb::Error> {
    // Every entry by sequence (mostly in order already); of two for one sequence, the later
    // batch's: the sort is stable, and the last of a run of equals is kept.
    let mut entries: Vec<Entry<'_>> = batches.iter().flat_map(|b| b.entries()).collect();
    entries.sort_by_key(|e| e.seq);
    entries.dedup_by(|later, kept| {
        let same = later.seq == kept.seq;
        if same {
            *kept = *later;
        }
        same
    });
    let mut t = tx.open_table(RECORD_GROUPS)?;
    let mut merged = Batch::default();
    let mut set_aside = Vec::new();
    for run in entries.chunk_by(|a, b| a.seq >> GROUP_BITS == b.seq >> GROUP_BITS) {
        let group = run[0].seq >> GROUP_BITS;
        let stored = match t.get(group)? {
            Some(v) => {
                let bytes = v.value().to_vec();
                drop(v);
                match Batch::from_bytes(bytes.clone()) {
                    Some(b) => Some(b),
                    None => {
                        // Never overwrite what cannot be read: keep it aside.
                        let at = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
                        tx.open_table(QUARANTINE)?
                            .insert((group, at as u64), bytes.as_slice())?;
                        set_aside.push(group);
                        None
                    }
                }
            }
            None => None,
        };
        merged.clear();
        match &stored {
            None => run.iter().for_each(|e| merged.push_entry(e)),
            Some(old) => {
                // The stored entries the new ones do not replace, merged in sequence order.
                let mut old: Vec<Entry<'_>> = old.entries().collect();
                old.sort_by_key(|e| e.seq);
                old.dedup_by_key(|e| e.seq);
                let (mut i, mut j) = (0, 0);
                while i < old.len() || j < run.len() {
                    let take_new = match (old.get(i), run.get(j)) {
                        (Some(o), Some(n)) => {
                            if o.seq == n.seq {
                                i += 1;
                            }
                            n.seq <= o.seq
                        }
                        (None, _) => true,
                        (_, None) => false,
                    };
                    if take_new {
                        merged.push_entry(&run[j]);
                        j += 1;
                    } else {
                        merged.push_entry(&old[i]);
                        i += 1;
                    }
                }
            }
        }
        t.insert(group, merged.as_bytes())?;
    }
    Ok(set_aside)
}

impl Index {
    /// Applies the unapplied batches in one transaction: without a sync, or, with
    /// `checkpoint`, durably and recording that journal segments below it are applied.
    fn apply_pending(&self, checkpoint: Option<u64>) -> Result<(), redb::Error> {
        let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let batches = self.unapplied().clone();
        if batches.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        if checkpoint.is_none() {
            // Durable through the journal; the index is synced at the next checkpoint.
            tx.set_durability(Durability::None)?;
        }
        let set_aside = apply(&tx, &batches)?;
        if let Some(segment) = checkpoint {
            let mut meta = tx.open_table(META)?;
            // Never backwards (a late background checkpoint after a writer's own).
            let current = stored_checkpoint(&meta)?;
            meta.insert(CHECKPOINT, segment.max(current))?;
        }
        tx.commit()?;
        // Only now do lookups stop finding them in the list (others may have joined it).
        self.unapplied().drain(..batches.len());
        if !set_aside.is_empty() {
            let mut q = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            for g in set_aside {
                tracing::error!(
                    group = g,
                    "a stored record group did not decode: set aside in quarantined_groups, \
                     indexing goes on"
                );
                q.insert(g);
            }
            crate::metrics::records_quarantined(q.len());
        }
        Ok(())
    }

    /// The stored form of the record of `seq`: in the unapplied list first (a batch leaves
    /// it only after its redb commit), then its group.
    fn find(&self, seq: u64) -> Result<Option<Vec<u8>>, redb::Error> {
        let recent = self.unapplied().clone();
        if let Some(v) = recent.iter().rev().find_map(|b| b.find(seq)) {
            return Ok(Some(v.to_vec()));
        }
        let tx = self.db.begin_read()?;
        let group = tx.open_table(RECORD_GROUPS)?.get(seq >> GROUP_BITS)?;
        let found = match group {
            Some(g) => {
                let grouped = Batch::from_bytes(g.value().to_vec()).ok_or_else(|| {
                    // A server-side fault (answered 5xx), not an unknown number.
                    redb::Error::Corrupted(format!(
                        "record group {} does not decode",
                        seq >> GROUP_BITS
                    ))
                })?;
                grouped.find(seq).map(<[u8]>::to_vec)
            }
            None => None,
        };
        let quarantined = self
            .quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(seq >> GROUP_BITS));
        if found.is_none() && quarantined {
            // Not knowable: the record may be among the unreadable bytes set aside.
            return Err(redb::Error::Corrupted(format!(
                "the record of sequence {seq} may be in record group {}, set aside as unreadable",
                seq >> GROUP_BITS
            )));
        }
        Ok(found)
    }

    /// The latest retention cutoff, if `seq` is below what the retention removed.
    fn expired_before(&self, seq: u64) -> Option<OffsetDateTime> {
        (seq < self.expired_below.load(Ordering::Acquire))
            .then(|| self.expired_before.load(Ordering::Acquire))
            .and_then(|us| OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).ok())
    }

    /// Removes the groups whose records were all issued before `before`, from the oldest on
    /// (sequences grow with time), [`EXPIRE_CHUNK`] per transaction; stops at the first group
    /// with a newer record.
    fn expire(&self, before: OffsetDateTime) -> Result<u64, redb::Error> {
        let cutoff = (before.unix_timestamp_nanos() / 1000) as i64;
        let mut removed = 0;
        loop {
            let tx = self.db.begin_write()?;
            let (chunk, records, done) = {
                let t = tx.open_table(RECORD_GROUPS)?;
                let mut chunk = Vec::new();
                let mut records = 0;
                let mut done = true;
                for row in t.iter()? {
                    let (g, v) = row?;
                    let Some(batch) = Batch::from_bytes(v.value().to_vec()) else {
                        // Unreadable: left to the quarantine, never removed unread.
                        break;
                    };
                    let newest = batch
                        .entries()
                        .filter_map(|e| Fields::parse(e.value).map(|f| f.issued_micros))
                        .max()
                        .unwrap_or(i64::MAX);
                    if newest >= cutoff {
                        break;
                    }
                    chunk.push(g.value());
                    records += batch.len() as u64;
                    if chunk.len() == EXPIRE_CHUNK {
                        done = false;
                        break;
                    }
                }
                (chunk, records, done)
            };
            let Some(&last) = chunk.last() else {
                return Ok(removed);
            };
            {
                let mut t = tx.open_table(RECORD_GROUPS)?;
                for g in &chunk {
                    t.remove(g)?;
                }
                let mut meta = tx.open_table(META)?;
                let below = (last + 1) << GROUP_BITS;
                let below = below.max(meta.get(EXPIRED_BELOW)?.map_or(0, |v| v.value()));
                meta.insert(EXPIRED_BELOW, below)?;
                meta.insert(EXPIRED_BEFORE, cutoff as u64)?;
                self.expired_below.store(below, Ordering::Release);
            }
            tx.commit()?;
            self.expired_before.store(cutoff as u64, Ordering::Release);
            removed += records;
            if done {
                return Ok(removed);
            }
        }
    }

    fn unapplied(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Batch>>> {
        self.unapplied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The indexer thread: applies what the journal took, one transaction per `interval`, so
    /// the cost of a redb commit is shared by many batches. Ends when told to stop, after
    /// applying what is listed.
    fn run(&self, interval: Duration) {
        loop {
            {
                let mut pending = self.unapplied();
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        drop(pending);
                        if let Err(e) = self.apply_pending(None) {
                            tracing::warn!(error = %e, "records left to the journal's replay");
                        }
                        return;
                    }
                    if !pending.is_empty() {
                        break;
                    }
                    pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            }
            std::thread::sleep(interval);
            if let Err(e) = self.apply_pending(None) {
                // The batches stay listed (and journaled): retried, and applied by the next
                // checkpoint at the latest.
                tracing::error!(error = %e, "applying journaled records to redb failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            self.background_work();
        }
    }

    /// The journal's upkeep, off the writer's path: the checkpoint a rotation asked for (then
    /// the full segment's file becomes the spare), and a spare file for the next rotation.
    fn background_work(&self) {
        let due = self.checkpoint_due.swap(0, Ordering::AcqRel);
        if due > 0 {
            let done = self.apply_pending(Some(due)).map_err(|e| e.to_string());
            match done
                .and_then(|()| journal::retire(&self.journal_dir, due).map_err(|e| e.to_string()))
            {
                Ok(()) => {}
                Err(e) => {
                    // Owed still: retried next time (the segments stay on disk meanwhile).
                    tracing::error!(error = %e, "journal checkpoint failed; retrying");
                    self.checkpoint_due.fetch_max(due, Ordering::AcqRel);
                }
            }
        }
        if self.spare_wanted.swap(false, Ordering::AcqRel)
            && !journal::has_spare(&self.journal_dir)
            && let Err(e) = journal::prepare_spare(&self.journal_dir, self.segment_bytes)
        {
            // The next rotation checkpoints on the writer's path instead.
            tracing::warn!(error = %e, "preparing a spare journal segment failed");
        }
    }
}

/// Runs [`Index::run`] on its thread; dropping it (with the last handle on the store) stops
/// and joins the thread, which releases the redb file.
struct Indexer {
    index: Arc<Index>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Indexer {
    fn drop(&mut self) {
        {
            let _pending = self.index.unapplied();
            self.index.stop.store(true, Ordering::Release);
        }
        self.index.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedRecords {
    /// The records table of `db` behind the journal in `journal_dir` (segments of
    /// `segment_bytes`): frames written after the last checkpoint (by a run that crashed) are
    /// applied first. Journaled batches are applied to the table every `index_interval`.
    pub fn open(
        db: Arc<Database>,
        permutation: Permutation,
        journal_dir: &Path,
        index_interval: Duration,
        segment_bytes: u64,
    ) -> Result<Self, String> {
        let where_ = |e: &dyn std::fmt::Display| format!("{}: {e}", journal_dir.display());
        let from = {
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            let meta = tx.open_table(META).map_err(|e| e.to_string())?;
            stored_checkpoint(&meta).map_err(|e| e.to_string())?
        };
        let replay = journal::replay(journal_dir, from).map_err(|e| where_(&e))?;
        let mut replayed = 0;
        let mut batches = Vec::new();
        for payload in replay.payloads {
            match Batch::from_bytes(payload) {
                Some(batch) => {
                    replayed += batch.len();
                    batches.push(Arc::new(batch));
                }
                None => tracing::warn!("skipped a journal frame that is not a batch of records"),
            }
        }
        let quarantined = {
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            quarantined_groups(&tx).map_err(|e| e.to_string())?
        };
        if !quarantined.is_empty() {
            crate::metrics::records_quarantined(quarantined.len());
        }
        let (expired_below, expired_before) = {
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            let meta = tx.open_table(META).map_err(|e| e.to_string())?;
            let get = |k: &str| -> Result<u64, String> {
                Ok(meta
                    .get(k)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |v| v.value()))
            };
            (get(EXPIRED_BELOW)?, get(EXPIRED_BEFORE)?)
        };
        let index = Arc::new(Index {
            quarantined: Mutex::new(quarantined.into_iter().collect()),
            expired_below: AtomicU64::new(expired_below),
            expired_before: AtomicU64::new(expired_before),
            db,
            unapplied: Mutex::new(batches),
            wake: Condvar::new(),
            applying: Mutex::new(()),
            stop: AtomicBool::new(false),
            checkpoint_due: AtomicU64::new(0),
            spare_wanted: AtomicBool::new(false),
            inline_checkpoints: AtomicU64::new(0),
            journal_dir: journal_dir.to_owned(),
            segment_bytes,
        });
        index
            .apply_pending(Some(replay.next_segment))
            .map_err(|e| e.to_string())?;
        if replayed > 0 {
            tracing::info!(records = replayed, "records replayed from the journal");
        }
        let journal = Journal::start(journal_dir, replay.next_segment, segment_bytes)
            .map_err(|e| where_(&e))?;
        let thread = {
            let index = Arc::clone(&index);
            std::thread::Builder::new()
                .name("trackd-indexer".into())
                .spawn(move || index.run(index_interval))
                .map_err(|e| format!("starting the record indexer: {e}"))?
        };
        Ok(Self {
            _indexer: Arc::new(Indexer {
                index: Arc::clone(&index),
                thread: Some(thread),
            }),
            index,
            permutation,
            journal: Arc::new(Mutex::new(JournalState {
                journal,
                broken: false,
                spare_requested: false,
            })),
            voids: Arc::default(),
        })
    }
}

impl EmbeddedRecords {
    /// Journals the batch; it is committed when this returns. A retried batch is appended
    /// again: replaying it twice is harmless.
    pub fn write_blocking(&self, batch: &Arc<Batch>) -> Result<(), SinkError> {
        let mut st = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let full = st.journal.is_full_for(batch.as_bytes());
        let moved = full && !st.broken && st.journal.rotate_to_spare().map_err(unavailable)?;
        if moved {
            // The indexer checkpoints the full segment in the background.
            self.index
                .checkpoint_due
                .fetch_max(st.journal.segment(), Ordering::AcqRel);
            st.spare_requested = false;
        } else if st.broken || full {
            // Everything journaled so far goes into the index durably; then the
            // segment can be reused.
            self.index
                .inline_checkpoints
                .fetch_add(1, Ordering::Relaxed);
            self.index
                .apply_pending(Some(st.journal.segment() + 1))
                .map_err(unavailable)?;
            st.journal.rotate().map_err(unavailable)?;
            st.broken = false;
            st.spare_requested = false;
        }
        if !st.spare_requested && st.journal.is_half_full() {
            st.spare_requested = true;
            self.index.spare_wanted.store(true, Ordering::Release);
        }
        if let Err(e) = st.journal.append(batch.as_bytes()) {
            // The frame may be half on disk: the next write starts a new segment.
            st.broken = true;
            return Err(unavailable(format!("journal: {e}")));
        }
        // Durable now. Listed under the journal lock, so a checkpoint that retires this
        // segment applies it; lookups find it from here on.
        let mut pending = self.index.unapplied();
        pending.push(Arc::clone(batch));
        if pending.len() == 1 {
            self.index.wake.notify_one();
        }
        Ok(())
    }
}

impl EmbeddedRecords {
    /// The record of `number` (sequence `seq`), if it was issued.
    fn record(&self, seq: u64, number: TrackingNumber) -> Result<Option<Record>, SinkError> {
        match self.index.find(seq).map_err(unavailable)? {
            Some(value) => {
                let fields = Fields::parse(&value).ok_or_else(|| {
                    unavailable(format!("the stored record of {number} does not decode"))
                })?;
                // Same sequence, other country codes: another number, never issued.
                Ok(Record::from_fields(seq, number, fields))
            }
            None => Ok(None),
        }
    }

    /// Journals the voided form of the record (a newer entry of the same sequence: lookups
    /// and the index take the newest), unless it is voided already.
    fn void_blocking(&self, number: TrackingNumber, void: Void) -> Result<Voiding, SinkError> {
        let _one_at_a_time = self.voids.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.permutation.invert(number.code());
        let Some(mut record) = self.record(seq, number)? else {
            return Ok(Voiding::Missing {
                expired_before: self.index.expired_before(seq),
            });
        };
        if record.voided.is_some() {
            return Ok(Voiding::Already(record));
        }
        record.voided = Some(void);
        let mut batch = Batch::default();
        batch.push(&record.as_ref());
        self.write_blocking(&Arc::new(batch))?;
        Ok(Voiding::Voided(record))
    }
}

impl RecordSink for EmbeddedRecords {
    fn write(&self, batch: Arc<Batch>, _retry: bool) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.write_blocking(&batch))
                .await
                .map_err(unavailable)?
        })
    }

    fn close(&self) -> SinkFuture<'_, ()> {
        let index = Arc::clone(&self.index);
        let state = Arc::clone(&self.journal);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let st = state.lock().unwrap_or_else(|p| p.into_inner());
                // Everything into the index, durably: the next start has nothing to replay.
                index
                    .apply_pending(Some(st.journal.segment() + 1))
                    .map_err(unavailable)
            })
            .await
            .map_err(unavailable)?
        })
    }

    fn lookup<'a>(&'a self, number: &'a TrackingNumber) -> SinkFuture<'a, Lookup> {
        let this = self.clone();
        let number = *number;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let seq = this.permutation.invert(number.code());
                Ok(match this.record(seq, number)? {
                    Some(r) => Lookup::Found(r.to_json()),
                    None => Lookup::Missing {
                        expired_before: this.index.expired_before(seq),
                    },
                })
            })
            .await
            .map_err(unavailable)?
        })
    }

    fn void<'a>(&'a self, number: &'a TrackingNumber, void: Void) -> SinkFuture<'a, Voiding> {
        let this = self.clone();
        let number = *number;
        // On the blocking pool: it finishes even if the request is dropped meanwhile.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.void_blocking(number, void))
                .await
                .map_err(unavailable)?
        })
    }

    fn expire(&self, before: OffsetDateTime) -> SinkFuture<'_, u64> {
        let index = Arc::clone(&self.index);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || index.expire(before).map_err(unavailable))
                .await
                .map_err(unavailable)?
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn report(&self) -> serde_json::Value {
        let q = self
            .index
            .quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        serde_json::json!({ "quarantined_groups": q.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::country::CountryCode;
    use crate::tracking::permute::PermutationKey;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn permutation() -> Permutation {
        Permutation::new(&PermutationKey(*b"embedded-tests-0"))
    }

    /// Groups as `apply` leaves them: a later batch's entry replaces an earlier one of the same
    /// sequence (in the same apply, or stored by an earlier one), the rest is kept, and each
    /// group's entries are in sequence order.
    #[test]
    fn applied_groups_merge_in_sequence_order_and_the_later_entry_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Database::create(tmp.path().join("t.redb")).unwrap();
        let number = [b'N'; 16];
        let batch = |entries: &[(u64, &str)]| {
            let mut b = Batch::default();
            for (seq, v) in entries {
                b.push_entry(&Entry {
                    seq: *seq,
                    number: &number,
                    value: v.as_bytes(),
                });
            }
            Arc::new(b)
        };
        let commit = |batches: &[Arc<Batch>]| {
            let tx = db.begin_write().unwrap();
            assert!(apply(&tx, batches).unwrap().is_empty());
            tx.commit().unwrap();
        };
        commit(&[batch(&(0..10).map(|s| (s, "a")).collect::<Vec<_>>())]);
        // Out of order, across two groups, replacing 5..10, one sequence given twice.
        let mut second: Vec<(u64, &str)> = (5..40).rev().map(|s| (s, "b")).collect();
        second.push((39, "c"));
        commit(&[batch(&second), batch(&[(7, "d")])]);
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(RECORD_GROUPS).unwrap();
        let group = |g: u64| -> Vec<(u64, String)> {
            let v = t.get(g).unwrap().unwrap().value().to_vec();
            Batch::from_bytes(v)
                .unwrap()
                .entries()
                .map(|e| (e.seq, String::from_utf8(e.value.to_vec()).unwrap()))
                .collect()
        };
        let expected = |seqs: std::ops::Range<u64>| -> Vec<(u64, String)> {
            seqs.map(|s| {
                let v = match s {
                    0..5 => "a",
                    7 => "d",
                    39 => "c",
                    _ => "b",
                };
                (s, v.to_string())
            })
            .collect()
        };
        assert_eq!(group(0), expected(0..32));
        assert_eq!(group(1), expected(32..40));
    }

    /// A lookup that found nothing, with no retention involved.
    const NONE: Lookup = Lookup::Missing {
        expired_before: None,
    };

    /// Batches of records for sequences `from..from + n` in batches of `per`.
    fn batches(p: &Permutation, from: u64, n: u64, per: u64) -> Vec<(Arc<Batch>, Vec<Record>)> {
        let t = OffsetDateTime::from_unix_timestamp(1_763_000_000).unwrap();
        batches_at(p, from, n, per, t)
    }

    /// The same, issued at `t`.
    fn batches_at(
        p: &Permutation,
        from: u64,
        n: u64,
        per: u64,
        t: OffsetDateTime,
    ) -> Vec<(Arc<Batch>, Vec<Record>)> {
        let (my, id) = (
            CountryCode::from_upper(*b"MY").unwrap(),
            CountryCode::from_upper(*b"ID").unwrap(),
        );
        (from..from + n)
            .collect::<Vec<_>>()
            .chunks(per as usize)
            .map(|seqs| {
                let records: Vec<Record> = seqs
                    .iter()
                    .map(|&seq| Record {
                        seq,
                        number: TrackingNumber::new(my, id, p.permute(seq)),
                        customer_id: Uuid::from_u128(seq as u128),
                        customer_name: format!("Customer {seq} Łódź"),
                        customer_slug: format!("customer-{seq}"),
                        weight_grams: 1 + seq as u32,
                        order_created_at: None,
                        issued_at: t,
                        voided: None,
                    })
                    .collect();
                let mut b = Batch::default();
                for r in &records {
                    b.push(&r.as_ref());
                }
                (Arc::new(b), records)
            })
            .collect()
    }

    async fn assert_found(store: &EmbeddedRecords, records: &[Record]) {
        for r in records {
            let found = store.lookup(&r.number).await.unwrap();
            assert_eq!(
                found,
                Lookup::Found(r.to_json()),
                "record of sequence {}",
                r.seq
            );
        }
    }

    fn open(dir: &Path, db: &str, segment_bytes: u64) -> EmbeddedRecords {
        let db = super::open(&dir.join(db)).unwrap();
        EmbeddedRecords::open(
            db,
            permutation(),
            &dir.join("journal"),
            Duration::from_millis(5),
            segment_bytes,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn records_survive_segment_rotations_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        // Two frames per segment: many rotations (checkpoints) on the way.
        let store = open(dir.path(), "a", 2 * 4096);
        let written = batches(&p, 5_000, 400, 20);
        for (b, _) in &written {
            store.write_blocking(b).unwrap();
        }
        let all: Vec<Record> = written.into_iter().flat_map(|(_, r)| r).collect();
        // Found at once (listed, not yet in redb) and after the indexer applied them.
        assert_found(&store, &all).await;
        std::thread::sleep(Duration::from_millis(50));
        assert_found(&store, &all).await;
        let unknown = TrackingNumber::new(all[0].number.origin(), all[0].number.destination(), 7);
        assert_eq!(store.lookup(&unknown).await.unwrap(), NONE);
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path(), "a", 2 * 4096);
        assert_found(&store, &all).await;
    }

    #[tokio::test]
    async fn rotations_use_a_spare_and_the_indexer_checkpoints_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        // Four frames per segment: a spare is asked for after the third.
        let store = open(dir.path(), "a", 4 * 4096);
        let first = store.journal.lock().unwrap().journal.segment();
        let written = batches(&p, 900, 400, 10);
        for (b, _) in &written {
            store.write_blocking(b).unwrap();
            // Time for the indexer (5 ms interval) to keep up, as between real segments.
            std::thread::sleep(Duration::from_millis(25));
        }
        let segment = store.journal.lock().unwrap().journal.segment();
        assert_eq!(segment - first, 9, "40 one-block frames, 4 per segment");
        let inline = store.index.inline_checkpoints.load(Ordering::Relaxed);
        // No rotation waited for a checkpoint (the start made a spare, each checkpoint the
        // next).
        assert_eq!(inline, 0, "checkpoints on the writer's path");
        std::thread::sleep(Duration::from_millis(100));
        let checkpoint = {
            let tx = store.index.db.begin_read().unwrap();
            super::stored_checkpoint(&tx.open_table(META).unwrap()).unwrap()
        };
        assert_eq!(checkpoint, segment, "every full segment is checkpointed");
        // The current segment and the spare: full segments' files are recycled.
        let files = std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .count();
        assert_eq!(files, 2);
        let all: Vec<Record> = written.into_iter().flat_map(|(_, r)| r).collect();
        assert_found(&store, &all).await;
        // A crash before the last checkpoint: the index loses its unsynced commits, the
        // journal's segments from the checkpoint on bring them back.
        drop(store);
        let store = open(dir.path(), "a", 4 * 4096);
        assert_found(&store, &all).await;
    }

    #[tokio::test]
    async fn frames_after_the_checkpoint_are_replayed_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        let store = open(dir.path(), "a", 1 << 20);
        let written = batches(&p, 70, 100, 7);
        for (b, _) in &written {
            store.write_blocking(b).unwrap();
        }
        drop(store);
        // An index that never saw them (as after a crash that lost redb's unsynced commits):
        // the journal brings them back.
        let store = open(dir.path(), "b", 1 << 20);
        let all: Vec<Record> = written.into_iter().flat_map(|(_, r)| r).collect();
        assert!(store.index.unapplied().is_empty(), "replayed at open");
        assert_found(&store, &all).await;
    }

    #[tokio::test]
    async fn an_unreadable_stored_record_is_an_error_not_an_unknown_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        let store = open(dir.path(), "a", 1 << 20);
        let written = batches(&p, 1 << GROUP_BITS, 3, 3);
        store.write_blocking(&written[0].0).unwrap();
        store.close().await.unwrap();
        let records = &written[0].1;
        assert_found(&store, records).await;
        // The same sequence under other country codes is another number: unknown.
        let r = &records[0];
        let other = TrackingNumber::new(r.number.destination(), r.number.origin(), r.number.code());
        assert_eq!(store.lookup(&other).await.unwrap(), NONE);
        // A group that does not decode is a fault of the store (5xx), not a 404.
        {
            let tx = store.index.db.begin_write().unwrap();
            tx.open_table(RECORD_GROUPS)
                .unwrap()
                .insert(1u64, &b"\x01not a batch"[..])
                .unwrap();
            tx.commit().unwrap();
        }
        let err = store.lookup(&r.number).await.unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[tokio::test]
    async fn records_past_their_retention_are_removed_and_said_to_have_expired() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        let store = open(dir.path(), "a", 1 << 20);
        let now = OffsetDateTime::now_utc();
        let old = batches_at(&p, 0, 3_000, 100, now - time::Duration::days(40));
        let new = batches_at(&p, 3_000, 500, 100, now - time::Duration::days(1));
        for (b, _) in old.iter().chain(&new) {
            store.write_blocking(b).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let cutoff = now - time::Duration::days(30);
        let removed = store.expire(cutoff).await.unwrap();
        // Whole groups of 32: the group holding both old and new records stays.
        assert!((2_976..=3_000).contains(&removed), "{removed}");
        let old: Vec<Record> = old.into_iter().flat_map(|(_, r)| r).collect();
        let new: Vec<Record> = new.into_iter().flat_map(|(_, r)| r).collect();
        assert_found(&store, &new).await;
        match store.lookup(&old[0].number).await.unwrap() {
            Lookup::Missing {
                expired_before: Some(t),
            } => assert_eq!(t.unix_timestamp(), cutoff.unix_timestamp()),
            other => panic!("{other:?}"),
        }
        // A number beyond what was issued is not said to have expired.
        let beyond = TrackingNumber::new(
            old[0].number.origin(),
            old[0].number.destination(),
            p.permute(9_999),
        );
        assert_eq!(store.lookup(&beyond).await.unwrap(), NONE);
        // Again: nothing more to remove; and the horizon survives a restart.
        assert_eq!(store.expire(cutoff).await.unwrap(), 0);
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path(), "a", 1 << 20);
        assert!(matches!(
            store.lookup(&old[10].number).await.unwrap(),
            Lookup::Missing {
                expired_before: Some(_)
            }
        ));
        assert_found(&store, &new).await;
    }

    #[tokio::test]
    async fn an_undecodable_group_is_set_aside_and_indexing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = permutation();
        let store = open(dir.path(), "a", 1 << 20);
        // Group 1 (sequences 32..64) holds bytes trackd cannot read.
        {
            let tx = store.index.db.begin_write().unwrap();
            tx.open_table(RECORD_GROUPS)
                .unwrap()
                .insert(1u64, &b"\x01not a batch"[..])
                .unwrap();
            tx.commit().unwrap();
        }
        // New records of that group and of others arrive.
        let written = batches(&p, 40, 60, 10);
        for (b, _) in &written {
            store.write_blocking(b).unwrap();
        }
        let all: Vec<Record> = written.into_iter().flat_map(|(_, r)| r).collect();
        std::thread::sleep(Duration::from_millis(100));
        assert!(store.index.unapplied().is_empty(), "indexing went on");
        assert_found(&store, &all).await;
        assert_eq!(store.report()["quarantined_groups"], 1);
        // The unreadable bytes are kept aside, not lost.
        {
            let tx = store.index.db.begin_read().unwrap();
            let t = tx.open_table(QUARANTINE).unwrap();
            let (k, v) = t.first().unwrap().unwrap();
            assert_eq!(k.value().0, 1);
            assert_eq!(v.value(), b"\x01not a batch");
        }
        // A sequence of that group with no new record may be among them: an error, not "never
        // issued".
        let r = &all[0];
        let unknown = TrackingNumber::new(r.number.origin(), r.number.destination(), p.permute(33));
        let err = store.lookup(&unknown).await.unwrap_err();
        assert!(err.to_string().contains("set aside"), "{err}");
        // Outside it: an unknown number is unknown.
        let far = TrackingNumber::new(r.number.origin(), r.number.destination(), p.permute(5_000));
        assert_eq!(store.lookup(&far).await.unwrap(), NONE);
        // A restart still knows.
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path(), "a", 1 << 20);
        assert_eq!(store.report()["quarantined_groups"], 1);
        assert_found(&store, &all).await;
    }
}
