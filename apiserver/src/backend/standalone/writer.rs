//! One thread that performs every store write, in the order they were queued.
//!
//! Why a thread: the lease manager calls the persistence callback on the address's own task and
//! asks for it to be quick, while a crash-safe write waits for fsync. Why one: writes to one file
//! must not interleave (they share a temp name), and a single queue keeps the order in which the
//! backend changed its state. Writes queued back to back for the same file are coalesced: only
//! the last content reaches the disk, every waiter is answered.

use std::collections::BTreeSet;
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::error;

use super::store::{Store, StoredAllocation};
use crate::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Allocation(String),
    Pool,
    /// Writes nothing: answered once everything queued before it is on disk.
    Barrier,
}

#[derive(Debug)]
enum Content {
    /// Creates the allocation's empty record file (a later save is then one fdatasync).
    Reserve,
    Save(Box<StoredAllocation>),
    Remove,
    Pool(BTreeSet<MacAddr>),
    Nothing,
}

struct Job {
    target: Target,
    content: Content,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Answered once the write is on disk (or failed, with the store's message).
pub type Written = oneshot::Receiver<Result<(), String>>;

#[derive(Clone)]
pub struct StoreWriter {
    jobs: mpsc::Sender<Job>,
}

impl StoreWriter {
    /// Starts the writer thread; it ends when the last `StoreWriter` clone is dropped.
    pub fn spawn(store: Store) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("dm-store".into())
            .spawn(move || run(store, queue))?;
        Ok(StoreWriter { jobs })
    }

    pub fn reserve(&self, id: &str) -> Written {
        self.queue(Target::Allocation(id.to_string()), Content::Reserve)
    }

    pub fn save(&self, allocation: StoredAllocation) -> Written {
        self.queue(
            Target::Allocation(allocation.id.clone()),
            Content::Save(Box::new(allocation)),
        )
    }

    /// Queues a save nobody waits for (the manager's lease-record callback).
    pub fn save_in_background(&self, allocation: StoredAllocation) {
        let _ = self.jobs.send(Job {
            target: Target::Allocation(allocation.id.clone()),
            content: Content::Save(Box::new(allocation)),
            done: None,
        });
    }

    pub fn remove(&self, id: &str) -> Written {
        self.queue(Target::Allocation(id.to_string()), Content::Remove)
    }

    pub fn save_pool(&self, pool: BTreeSet<MacAddr>) -> Written {
        self.queue(Target::Pool, Content::Pool(pool))
    }

    /// Answered once every write queued so far is on disk.
    pub fn flush(&self) -> Written {
        self.queue(Target::Barrier, Content::Nothing)
    }

    fn queue(&self, target: Target, content: Content) -> Written {
        let (done, written) = oneshot::channel();
        let job = Job {
            target,
            content,
            done: Some(done),
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job)
            && let Some(done) = job.done
        {
            let _ = done.send(Err("the store writer has stopped".into()));
        }
        written
    }
}

/// Waits for a queued write; the error names the file that could not be written.
pub async fn written(written: Written) -> Result<(), String> {
    written
        .await
        .unwrap_or_else(|_| Err("the store writer has stopped".into()))
}

fn run(store: Store, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        for (target, content, waiters) in coalesce(batch) {
            let outcome = write(&store, &target, content);
            if let Err(message) = &outcome {
                error!(target = ?target, error = %message, "store write failed");
            }
            for done in waiters {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

type Coalesced = (Target, Content, Vec<oneshot::Sender<Result<(), String>>>);

/// Keeps the last content per file, in the order each file was first queued; every waiter of a
/// file is answered by its last write. A barrier comes after everything queued before it.
fn coalesce(batch: Vec<Job>) -> Vec<Coalesced> {
    let mut out: Vec<Coalesced> = Vec::new();
    for job in batch {
        let earlier = (job.target != Target::Barrier)
            .then(|| out.iter().position(|(target, ..)| *target == job.target))
            .flatten();
        match earlier {
            Some(index) => {
                let (_, content, waiters) = &mut out[index];
                // A reservation adds nothing to a save or removal queued before it.
                if !matches!(job.content, Content::Reserve) {
                    *content = job.content;
                }
                waiters.extend(job.done);
            }
            None => out.push((job.target, job.content, job.done.into_iter().collect())),
        }
    }
    // A later write of a file queued before a barrier joins that file's place ahead of the
    // barrier: the barrier then waits for more than it must, never for less.
    out
}

fn write(store: &Store, target: &Target, content: Content) -> Result<(), String> {
    let outcome = match (target, content) {
        (Target::Allocation(id), Content::Reserve) => store.reserve_allocation(id),
        (_, Content::Save(allocation)) => store.save_allocation(&allocation),
        (Target::Allocation(id), Content::Remove) => store.remove_allocation(id),
        (_, Content::Pool(pool)) => store.save_pool(&pool),
        _ => Ok(()),
    };
    outcome.map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::standalone::store::Phase;

    fn job(target: Target, content: Content) -> (Job, Written) {
        let (done, written) = oneshot::channel();
        let job = Job {
            target,
            content,
            done: Some(done),
        };
        (job, written)
    }

    fn allocation(id: &str, phase: Phase) -> StoredAllocation {
        StoredAllocation {
            id: id.into(),
            service: "s".into(),
            hostname: "s".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            phase,
            handed_out_ip: None,
            record: None,
            created_at: chrono::Utc::now(),
            answered: true,
        }
    }

    #[test]
    fn the_last_write_of_a_file_wins_and_every_waiter_is_kept() {
        let a = Target::Allocation("a".into());
        let b = Target::Allocation("b".into());
        let (j1, _w1) = job(
            a.clone(),
            Content::Save(Box::new(allocation("a", Phase::Pending))),
        );
        let (j2, _w2) = job(b.clone(), Content::Remove);
        let (j3, _w3) = job(a.clone(), Content::Remove);
        let (j4, _w4) = job(Target::Barrier, Content::Nothing);
        let out = coalesce(vec![j1, j2, j3, j4]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, a);
        assert!(matches!(out[0].1, Content::Remove));
        assert_eq!(out[0].2.len(), 2);
        assert_eq!(out[1].0, b);
        assert_eq!(out[2].0, Target::Barrier);
    }

    #[test]
    fn a_reservation_never_replaces_a_save_or_removal_of_the_same_file() {
        let a = Target::Allocation("a".into());
        let (j1, _w1) = job(
            a.clone(),
            Content::Save(Box::new(allocation("a", Phase::Confirmed))),
        );
        let (j2, _w2) = job(a.clone(), Content::Reserve);
        let (j3, _w3) = job(Target::Allocation("b".into()), Content::Remove);
        let (j4, _w4) = job(Target::Allocation("b".into()), Content::Reserve);
        let out = coalesce(vec![j1, j2, j3, j4]);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].1, Content::Save(_)));
        assert_eq!(out[0].2.len(), 2, "both waiters answered by the save");
        assert!(matches!(out[1].1, Content::Remove));
        // and a reservation followed by a save is the save (it creates the file itself)
        let (j5, _w5) = job(a.clone(), Content::Reserve);
        let (j6, _w6) = job(
            a,
            Content::Save(Box::new(allocation("a", Phase::Confirmed))),
        );
        assert!(matches!(coalesce(vec![j5, j6])[0].1, Content::Save(_)));
    }

    #[tokio::test]
    async fn writes_reach_the_disk_before_they_are_answered() {
        let dir = std::env::temp_dir().join(format!(
            "dm-writer-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let (store, _) = Store::open(&dir).unwrap();
        let writer = StoreWriter::spawn(store.clone()).unwrap();
        written(writer.save(allocation("a", Phase::Pending)))
            .await
            .unwrap();
        writer.save_in_background(allocation("a", Phase::Confirmed));
        written(writer.flush()).await.unwrap();
        let (_, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.allocations.len(), 1);
        assert_eq!(loaded.allocations[0].phase, Phase::Confirmed);
        written(writer.remove("a")).await.unwrap();
        let (_, loaded) = Store::open(&dir).unwrap();
        assert!(loaded.allocations.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
