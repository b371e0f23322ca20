//! Reading a rebuild's history one batch ahead: while a batch is applied, a thread with a
//! connection of its own reads the events of the next one.
//!
//! A rebuild reads its events inside each batch's transaction and then applies them, so the
//! read and the apply took turns on one thread (on SQLite the read was a quarter of a replay's
//! instructions). A [`ReadAhead`] keeps the events read so far in id order, with the id up to
//! which it holds every event the filter lets through, and gives each batch its events from
//! there. A read-ahead thread fills it from a second connection ([`Db::open_another`]), one
//! chunk of a batch's size ahead of what is taken.
//!
//! It is only a faster way to the same rows. Each batch still reads its checkpoint in its own
//! transaction and asks for the events after it: what is handed back is exactly what a read in
//! the transaction would return (events are immutable once below the store's head, and the
//! head is only ever read up to). When the checkpoint is not where the held events begin, they
//! are dropped and read again. The thread starts only once a batch came back full (a short
//! catch-up never opens a connection), and when it cannot connect or its read fails, each
//! batch reads in its transaction again, as before: errors then surface there, where
//! reconnecting and reporting already happen.
//!
//! The events a batch is done with go back to the thread to be freed: freeing a batch's
//! strings was a few percent of the applying thread's instructions, and the reading thread,
//! which allocated them, has time to spare.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use crate::backend::{Db, Partition, StoreError};
use crate::events::ReadEvent;

/// The events of one range of history, held in id order for the batches that take them.
pub struct ReadAhead {
    /// Whether a thread may read ahead at all (`rebuild_read_ahead`); once it failed, no
    /// other is started for this catch-up.
    enabled: bool,
    /// What is read: the classes the projector handles and the part of history.
    classes: Vec<String>,
    partition: Partition,
    /// Events per read of the thread.
    chunk: usize,
    /// Every event the filter lets through with `after < id <= through`, in id order.
    held: VecDeque<ReadEvent>,
    after: i64,
    through: i64,
    /// The thread reading the events after `through`, if one is running.
    reader: Option<Reader>,
}

/// A read-ahead thread and the chunks it sends, in order.
struct Reader {
    /// Always `Some` until drop, which closes it first so that a blocked send returns.
    chunks: Option<Receiver<Result<Chunk, StoreError>>>,
    /// Events the batches are done with, for the thread to free. Always `Some` until drop,
    /// which closes it before waiting for the thread (whose last loop ends with it).
    spent: Option<Sender<Vec<ReadEvent>>>,
    /// The last id it reads up to.
    up_to: i64,
    thread: Option<JoinHandle<()>>,
}

/// What one read of the thread found: every event after the previous chunk up to `through`.
struct Chunk {
    events: Vec<ReadEvent>,
    through: i64,
}

impl ReadAhead {
    /// A read-ahead of the events of `partition` whose class may be in `classes` (all when
    /// empty), reading `chunk` events at a time; without `enabled` every batch reads in its
    /// own transaction.
    pub fn new(enabled: bool, classes: Vec<String>, partition: Partition, chunk: usize) -> Self {
        ReadAhead {
            enabled,
            classes,
            partition,
            chunk: chunk.max(1),
            held: VecDeque::new(),
            after: 0,
            through: 0,
            reader: None,
        }
    }

    /// Up to `limit` events with `after < id <= up_to`, in id order, and whether they are all
    /// of them: the same rows [`Db::read_events_in`] on `db` would return, read ahead when a
    /// thread has them. `db` is the batch's connection: what the thread does not have is read
    /// there, inside the batch's transaction.
    ///
    /// # Errors
    /// A failure of the read on `db`; the thread's failures only stop it.
    pub fn read(
        &mut self,
        db: &Db,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<(&[ReadEvent], bool), StoreError> {
        let limit = limit.max(1);
        self.start_at(after, up_to);
        // Take what the thread read, as far as this batch needs.
        while self.held.len() < limit {
            let Some(reader) = &self.reader else { break };
            if self.through >= reader.up_to {
                self.reader = None;
                break;
            }
            let received = reader.chunks.as_ref().map(Receiver::recv);
            match received {
                Some(Ok(Ok(chunk))) => {
                    self.hold(chunk.events);
                    self.through = chunk.through;
                }
                Some(Ok(Err(err))) => self.stop(&err.to_string()),
                Some(Err(_)) | None => self.stop("the thread ended"),
            }
        }
        // What the thread has not read is read here, and the thread goes on after it.
        if self.held.len() < limit && self.through < up_to {
            let wanted = limit - self.held.len();
            let events =
                db.read_events_in(self.through, up_to, wanted, &self.classes, self.partition)?;
            let full = events.len() == wanted;
            self.through = match events.last() {
                Some(last) if full => last.id(),
                _ => up_to,
            };
            self.hold(events);
            if full && self.enabled {
                self.reader = Some(Reader::start(
                    db,
                    self.classes.clone(),
                    self.partition,
                    self.chunk,
                    self.through,
                    up_to,
                ));
            }
        }
        let taken = limit.min(self.held.len());
        let complete = taken == self.held.len() && self.through >= up_to;
        Ok((&self.held.make_contiguous()[..taken], complete))
    }

    /// Drops the events at or below `after` (a batch committed them), or everything held when
    /// they do not begin at `after` or run past `up_to`, so that what is held begins right
    /// after `after`.
    fn start_at(&mut self, after: i64, up_to: i64) {
        let reads_past = self.reader.as_ref().is_some_and(|r| r.up_to > up_to);
        if after < self.after || after > self.through || self.through > up_to || reads_past {
            self.reader = None;
            self.held.clear();
            self.after = after;
            self.through = after;
            return;
        }
        let done = self.held.iter().take_while(|e| e.id() <= after).count();
        if done > 0 {
            let spent: Vec<ReadEvent> = if done == self.held.len() {
                // The usual case, a batch took all that was held: its buffer moves whole.
                std::mem::take(&mut self.held).into()
            } else {
                self.held.drain(..done).collect()
            };
            match &self.reader {
                // Freed there; if the thread has ended, the send hands them back and they
                // are freed here.
                Some(Reader {
                    spent: Some(to_free),
                    ..
                }) => drop(to_free.send(spent)),
                _ => drop(spent),
            }
        }
        self.after = after;
    }

    /// Adds `events`, which follow those held. When nothing is held (a batch took all of the
    /// last chunk, the usual case) the chunk's buffer is taken as it is instead of copying
    /// each event: a chunk is a whole batch of events, a few MiB.
    fn hold(&mut self, events: Vec<ReadEvent>) {
        if self.held.is_empty() {
            self.held = events.into();
        } else {
            self.held.extend(events);
        }
    }

    /// Stops reading ahead for the rest of this catch-up, saying why in the log.
    fn stop(&mut self, why: &str) {
        tracing::warn!(
            "reading events ahead stopped ({why}); each batch reads its own events from now on"
        );
        self.reader = None;
        self.enabled = false;
    }
}

impl Reader {
    /// Starts a thread that reads the events after `after` up to `up_to`, `chunk` at a time,
    /// on a connection of its own to `db`'s database, one chunk ahead of what is taken.
    fn start(
        db: &Db,
        classes: Vec<String>,
        partition: Partition,
        chunk: usize,
        after: i64,
        up_to: i64,
    ) -> Reader {
        let (send, chunks) = sync_channel(1);
        let (spent, to_free) = channel();
        let opened = db.open_another();
        let thread = std::thread::Builder::new()
            .name("zdr-read-ahead".into())
            .spawn(move || {
                match opened {
                    Ok(own) => {
                        let wanted = Wanted {
                            classes: &classes,
                            partition,
                            chunk,
                        };
                        read_chunks(&own, &wanted, after, up_to, &send, &to_free);
                    }
                    Err(err) => {
                        let _ = send.send(Err(err));
                    }
                }
                // Everything is read: free what the batches are done with until they stop.
                for events in to_free {
                    drop(events);
                }
            });
        Reader {
            chunks: Some(chunks),
            spent: Some(spent),
            up_to,
            // No thread: the receiver sees its sender gone, and the batch reads on its own.
            thread: thread.ok(),
        }
    }
}

/// What the read-ahead thread reads: the classes, the part of history, and how many events
/// at a time.
struct Wanted<'a> {
    classes: &'a [String],
    partition: Partition,
    chunk: usize,
}

/// The read-ahead thread: chunks in order until `up_to`, a failure, or nobody listening;
/// between two reads it frees the events the batches are done with.
fn read_chunks(
    db: &Db,
    wanted: &Wanted<'_>,
    mut after: i64,
    up_to: i64,
    send: &SyncSender<Result<Chunk, StoreError>>,
    to_free: &Receiver<Vec<ReadEvent>>,
) {
    let Wanted {
        classes,
        partition,
        chunk,
    } = *wanted;
    while after < up_to {
        while let Ok(events) = to_free.try_recv() {
            drop(events);
        }
        let read = db.read_events_in(after, up_to, chunk, classes, partition);
        let next = match read {
            Ok(events) => {
                let through = match events.last() {
                    Some(last) if events.len() == chunk => last.id(),
                    _ => up_to,
                };
                after = through;
                Ok(Chunk { events, through })
            }
            Err(err) => Err(err),
        };
        let failed = next.is_err();
        if send.send(next).is_err() || failed {
            return;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the channel first ends a send the thread is blocked in; it then finishes
        // the read it is in (one chunk at most), frees what it was sent and exits once
        // `spent` closes with this.
        drop(self.chunks.take());
        drop(self.spent.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::TestDatabase;
    use crate::events::NewEvent;

    /// 500 events of two classes over 37 aggregates, one in nine without an aggregate.
    fn append_history(db: &Db, count: usize) {
        let events: Vec<NewEvent> = (0..count)
            .map(|i| NewEvent {
                aggregate_uuid: (i % 9 != 0).then(|| format!("agg-{}", i % 37)),
                aggregate_version: None,
                event_version: 1,
                event_class: if i % 3 == 0 { "Other" } else { "Wanted" }.into(),
                event_properties: format!("{{\"n\":{i}}}"),
                meta_data: "{}".into(),
                created_at: None,
            })
            .collect();
        db.append_events(&events).expect("append");
    }

    fn ids(events: &[ReadEvent]) -> Vec<i64> {
        events.iter().map(ReadEvent::id).collect()
    }

    /// Takes batches as a rebuild does (of varying sizes; some committed whole, some cut short
    /// by the time budget, some run again after a failed run) while history grows, and checks
    /// each against the same read in the batch's transaction: the same events, and "all of
    /// them" exactly when there are no more up to the head. `cut` runs once the thread reads
    /// ahead. Returns the read-ahead at the end.
    fn batches_equal_reads_in_the_transaction(
        db: &Db,
        classes: &[String],
        partition: Partition,
        cut: &mut dyn FnMut(),
    ) -> ReadAhead {
        db.init().expect("init");
        append_history(db, 500);
        let mut ahead = ReadAhead::new(true, classes.to_vec(), partition, 16);
        let (mut after, mut up_to) = (0, db.head().expect("head"));
        let (mut grown, mut read_ahead, mut was_cut) = (false, false, false);
        for step in 0.. {
            assert!(step < 10_000, "the batches never reached the head");
            let limit = [7, 16, 16, 40, 3, 16][step % 6];
            let (events, complete) = ahead.read(db, after, up_to, limit).expect("read");
            let events = events.to_vec();
            let expected = db
                .read_events_in(after, up_to, limit + 1, classes, partition)
                .expect("read in the transaction");
            assert_eq!(
                ids(&events),
                ids(&expected[..expected.len().min(limit)]),
                "batch {step} after {after}"
            );
            assert_eq!(
                complete,
                expected.len() <= limit,
                "batch {step} after {after}"
            );
            read_ahead |= ahead.reader.is_some();
            if read_ahead && !was_cut {
                cut();
                was_cut = true;
            }
            after = match step % 5 {
                // A failed run: the batch rolled back and runs again.
                3 => after,
                // The time budget let half of it be applied.
                1 if events.len() > 1 => events[events.len() / 2 - 1].id(),
                _ if complete => up_to,
                _ => events.last().map_or(after, ReadEvent::id),
            };
            if after == up_to {
                if grown {
                    break;
                }
                // Live events arrived while the rebuild caught up: the head moves on.
                append_history(db, 200);
                up_to = db.head().expect("head");
                grown = true;
            }
        }
        assert!(read_ahead, "a thread never read ahead");
        ahead
    }

    fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db =
            Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display())).expect("open");
        (dir, db)
    }

    /// A SQLite store with `events` appended, and its head.
    fn sqlite_with_history(events: usize) -> (tempfile::TempDir, Db, i64) {
        let (dir, db) = sqlite();
        db.init().expect("init");
        append_history(&db, events);
        let head = db.head().expect("head");
        (dir, db, head)
    }

    /// Reads `batches` batches of 10 from the start, as a catch-up would: each after the last
    /// event of the one before.
    fn read_batches(ahead: &mut ReadAhead, db: &Db, head: i64, batches: usize) {
        let mut after = 0;
        for _ in 0..batches {
            if after >= head {
                break;
            }
            let (events, complete) = ahead.read(db, after, head, 10).expect("read");
            after = if complete {
                head
            } else {
                events.last().expect("events").id()
            };
            // Checked after every batch: a read-ahead that may not read ahead never starts a
            // thread, at any point of the catch-up.
            assert!(ahead.enabled || ahead.reader.is_none(), "a thread started");
        }
    }

    #[test]
    fn batches_read_ahead_are_the_batches_read_in_the_transaction_on_sqlite() {
        for classes in [vec![], vec!["Wanted".to_owned()]] {
            let (_dir, db) = sqlite();
            let ahead =
                batches_equal_reads_in_the_transaction(&db, &classes, Partition::WHOLE, &mut || {});
            assert!(ahead.enabled, "nothing stopped the read-ahead");
        }
    }

    #[test]
    fn batches_read_ahead_are_the_batches_read_in_the_transaction_on_postgres() {
        for (classes, partition) in [
            (vec![], Partition::WHOLE),
            (vec!["Wanted".to_owned()], Partition { index: 1, count: 2 }),
        ] {
            let test = TestDatabase::new("read_ahead");
            let db = Db::open(&test.url()).expect("open");
            batches_equal_reads_in_the_transaction(&db, &classes, partition, &mut || {});
        }
    }

    /// The read-ahead's connection is cut while it reads: the batches go on reading in their
    /// transaction, and none of them misses or repeats an event.
    #[test]
    fn a_cut_read_ahead_connection_leaves_the_batches_exact() {
        let test = TestDatabase::new("read_ahead_cut");
        let db = Db::open(&test.url()).expect("open");
        let mut admin = test.connect();
        let ahead = batches_equal_reads_in_the_transaction(
            &db,
            &["Wanted".to_owned()],
            Partition::WHOLE,
            &mut || {
                // The newest connection to the database other than this one is the thread's.
                test.exec(
                    &mut admin,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     ORDER BY backend_start DESC LIMIT 1",
                );
            },
        );
        assert!(!ahead.enabled, "the cut stopped the read-ahead");
    }

    #[test]
    fn without_read_ahead_no_thread_starts() {
        let (_dir, db, head) = sqlite_with_history(100);
        let mut ahead = ReadAhead::new(false, vec![], Partition::WHOLE, 10);
        read_batches(&mut ahead, &db, head, usize::MAX);
        assert!(ahead.reader.is_none());
    }

    /// Dropping a read-ahead stops its thread, whatever it is doing: blocked handing over a
    /// chunk, or freeing the events the batches were done with. A drop that waited for a
    /// thread that waits for the drop would hang the end of every catch-up.
    #[test]
    fn dropping_a_read_ahead_ends_its_thread() {
        let (_dir, db, head) = sqlite_with_history(100);
        for batches in [1, 3, 8] {
            let mut ahead = ReadAhead::new(true, vec![], Partition::WHOLE, 10);
            read_batches(&mut ahead, &db, head, batches);
            assert!(ahead.reader.is_some(), "no thread read ahead");
            let (dropped, done) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                drop(ahead);
                let _ = dropped.send(());
            });
            assert!(
                done.recv_timeout(std::time::Duration::from_secs(30))
                    .is_ok(),
                "dropping the read-ahead after {batches} batch(es) never returned"
            );
        }
    }

    /// Batches that do not begin where the held events do (a checkpoint moved elsewhere)
    /// get the events after their own checkpoint, not the held ones.
    #[test]
    fn a_batch_from_another_checkpoint_reads_again() {
        let (_dir, db, head) = sqlite_with_history(200);
        let mut ahead = ReadAhead::new(true, vec![], Partition::WHOLE, 10);
        let (first, _) = ahead.read(&db, 0, head, 10).expect("read");
        assert_eq!(ids(first), (1..=10).collect::<Vec<_>>());
        for (after, limit) in [(50, 10), (5, 3), (150, 100), (0, 1), (head - 2, 10)] {
            let (events, complete) = ahead.read(&db, after, head, limit).expect("read");
            let expected = db.read_events(after, head, limit).expect("read");
            assert_eq!(ids(events), ids(&expected), "after {after}");
            assert_eq!(complete, after + limit as i64 >= head, "after {after}");
        }
        // A head below what the thread reads up to.
        let (events, complete) = ahead.read(&db, 100, 120, 50).expect("read");
        assert_eq!(ids(events), (101..=120).collect::<Vec<_>>());
        assert!(complete);
    }
}
