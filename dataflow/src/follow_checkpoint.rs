//! How a follower of MongoDB writes checkpoints and restarts from one (the files themselves are
//! [`crate::checkpoint`]'s).
//!
//! **Writing.** Worker 0 decides when (every `--checkpoint-every`, after a full load, and when
//! asked to stop), between two rounds: every record state then reflects exactly the changes the
//! poller has read. It asks every worker for its state through a small dataflow, waits until
//! each has written its file (feeding no round meanwhile, so no state moves), and then commits
//! the manifest with the poller's position. Changes written meanwhile wait in the change log.
//!
//! **Restoring.** Worker 0 reads the manifest and checks that the retained change log still
//! covers the time since; each worker reads and checks its own file; only if every worker could
//! is the checkpoint used, otherwise every worker drops what it read and the follower loads in
//! full, after a log line saying why.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Exchange, Inspect};
use timely::dataflow::InputHandle;
use timely::worker::Worker;

use crate::checkpoint::{self, Manifest, Origin, Unusable, WorkerFile, FORMAT_VERSION};
use crate::follow_state::Records;
use crate::record::Windowing;
use crate::sink::rfc3339;
use crate::source::changes::{ChangePoller, LogPosition};
use crate::source::mongo::MongoSource;
use crate::worker_zero::{from_worker_zero, gather_at_worker_zero, WorkerCell};

#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// Where this process writes its workers' files (and, in process 0, the manifest).
    pub dir: PathBuf,
    /// How often worker 0 writes one.
    pub every: Duration,
}

/// What a collection's checkpoint is of: its server (without a password), database and name.
pub fn origin(source: &MongoSource, windowing: Option<Windowing>) -> Origin {
    Origin {
        server: iot_schema::redact::uri(&source.uri),
        db: source.db.clone(),
        collection: source.collection.clone(),
        window_ms: windowing.map(|windowing| windowing.width_ms),
    }
}

/// A follower restarted from a checkpoint.
pub struct Restored {
    /// Worker 0's change-log poller, at the checkpoint's position.
    pub poller: Option<ChangePoller>,
    /// The records this worker took over.
    pub records: u64,
}

/// Every worker calls this before building the follower's dataflow. `Some` when the checkpoint
/// was used: `records` then holds this worker's share; `None` when the follower must load in
/// full (and `records` is empty).
pub fn restore(
    worker: &mut Worker,
    source: &MongoSource,
    settle: Duration,
    retention: Duration,
    options: &CheckpointOptions,
    origin: &Origin,
    records: &WorkerCell<Records>,
) -> Option<Restored> {
    let started = Instant::now();
    let mut planned: Option<(Manifest, ChangePoller)> = None;
    let files = from_worker_zero(worker, |peers| match plan(source, settle, retention, options, origin, peers) {
        Ok((manifest, poller)) => {
            let files = manifest.files.iter().cloned().map(Some).collect();
            planned = Some((manifest, poller));
            Ok(files)
        }
        Err(Unusable::Missing(dir)) => {
            eprintln!("no checkpoint in {} yet; loading in full", dir.display());
            Ok(vec![None; peers])
        }
        Err(unusable) => {
            tracing::warn!(
                "not restarting from the checkpoint in {}: {unusable}; loading in full",
                options.dir.display()
            );
            Ok(vec![None; peers])
        }
    })
    .unwrap_or_default();
    let mine = match files.into_iter().next().flatten() {
        Some(file) => checkpoint::read_worker(&options.dir, &file).map(|restored| {
            let count = restored.len() as u64;
            *records.borrow_mut() = restored;
            count
        }),
        None => Err(Unusable::Missing(options.dir.clone())),
    };
    let outcomes = gather_at_worker_zero(worker, mine.as_ref().copied().map_err(ToString::to_string));
    let used = from_worker_zero(worker, |peers| {
        let used = planned.is_some() && outcomes.iter().all(Result::is_ok);
        if let (Some(_), Some(Err(reason))) = (&planned, outcomes.iter().find(|outcome| outcome.is_err())) {
            tracing::warn!(
                "not restarting from the checkpoint in {}: {reason}; loading in full",
                options.dir.display()
            );
        }
        Ok(vec![used; peers])
    })
    .is_ok_and(|used| used.first() == Some(&true));
    if !used {
        *records.borrow_mut() = Records::default();
        return None;
    }
    let poller = planned.map(|(manifest, poller)| {
        let total: u64 = manifest.files.iter().map(|file| file.records).sum();
        eprintln!(
            "restored {total} records from checkpoint {} (written {}) in {:.2}s; reading the change log from {}",
            manifest.generation,
            manifest.written_at,
            started.elapsed().as_secs_f64(),
            crate::sink::rfc3339_ms(bson::DateTime::from_millis(manifest.position.watermark_ms)),
        );
        poller
    });
    Some(Restored { poller, records: mine.unwrap_or_default() })
}

/// Worker 0: the checkpoint to restart from and the poller resumed at its position, or why not.
fn plan(
    source: &MongoSource,
    settle: Duration,
    retention: Duration,
    options: &CheckpointOptions,
    origin: &Origin,
    peers: usize,
) -> Result<(Manifest, ChangePoller), Unusable> {
    let manifest = checkpoint::read_manifest(&options.dir, origin)?;
    if manifest.files.len() != peers {
        return Err(Unusable::OtherWorkers { found: manifest.files.len(), expected: peers });
    }
    let poller = ChangePoller::resume(source, settle, retention, manifest.position.clone())
        .map_err(|err| Unusable::LogUnreadable(format!("{err:#}")))??;
    Ok((manifest, poller))
}

/// A worker's answer to a request for its state: its file, or why it could not write it.
type Written = (u64, Result<WorkerFile, String>);

/// Worker 0's request to every worker: write your state as `generation`, and remove your files
/// of any generation but that one and `committed`, the one a restart would now use. So each
/// folder holds at most two generations, with no message after the commit.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Request {
    generation: u64,
    committed: Option<u64>,
}

/// The checkpoint writer every worker of a follower holds.
pub struct Checkpointer {
    options: CheckpointOptions,
    origin: Origin,
    records: WorkerCell<Records>,
    requests: InputHandle<u64, CapacityContainerBuilder<Vec<(usize, Request)>>>,
    /// What worker 0 asked of this worker and it has not done yet.
    asked: WorkerCell<Vec<Request>>,
    replies: InputHandle<u64, CapacityContainerBuilder<Vec<(usize, Written)>>>,
    /// At worker 0: what each worker wrote, by worker index.
    written: WorkerCell<Vec<(usize, Written)>>,
    next_generation: u64,
    /// The generation a restart would now use, if any.
    committed: Option<u64>,
    last_written: Instant,
}

impl Checkpointer {
    pub fn new(worker: &mut Worker, options: &CheckpointOptions, origin: Origin, records: WorkerCell<Records>) -> Self {
        let asked: WorkerCell<Vec<Request>> = Default::default();
        let written: WorkerCell<Vec<(usize, Written)>> = Default::default();
        let (requests, replies) = worker.dataflow::<u64, _, _>(|scope| {
            let mut requests = InputHandle::<u64, CapacityContainerBuilder<Vec<(usize, Request)>>>::new();
            let asked = asked.clone();
            requests
                .to_stream(scope)
                .exchange(|(worker, _): &(usize, Request)| *worker as u64)
                .inspect(move |(_, request): &(usize, Request)| asked.borrow_mut().push(*request));
            let mut replies = InputHandle::<u64, CapacityContainerBuilder<Vec<(usize, Written)>>>::new();
            let written = written.clone();
            replies
                .to_stream(scope)
                .exchange(|_| 0)
                .inspect(move |reply: &(usize, Written)| written.borrow_mut().push(reply.clone()));
            (requests, replies)
        });
        let next_generation = checkpoint::next_generation(&options.dir);
        Checkpointer {
            options: options.clone(),
            origin,
            records,
            requests,
            asked,
            replies,
            written,
            next_generation,
            committed: Some(next_generation - 1).filter(|generation| *generation > 0),
            last_written: Instant::now(),
        }
    }

    /// Any worker, between steps: does what worker 0 asked of it, if anything.
    pub fn serve(&mut self, worker: usize) {
        let asked: Vec<Request> = self.asked.take();
        for request in asked {
            let Request { generation, committed } = request;
            let keep = [Some(generation), committed];
            if let Err(err) = checkpoint::remove_stale(&self.options.dir, &keep, Some(worker)) {
                tracing::warn!("cannot remove old checkpoint files: {err:#}");
            }
            let records = self.records.borrow();
            let file = checkpoint::write_worker(&self.options.dir, generation, worker, &records)
                .map_err(|err| format!("worker {worker}: {err:#}"));
            self.replies.advance_to(generation);
            self.replies.send((worker, (generation, file)));
            self.replies.advance_to(generation + 1);
        }
    }

    /// Worker 0: sends `request` to every worker.
    fn ask_everyone(&mut self, peers: usize, request: Request) {
        self.requests.advance_to(request.generation);
        (0..peers).for_each(|peer| self.requests.send((peer, request)));
        self.requests.advance_to(request.generation + 1);
    }

    /// Worker 0: whether `--checkpoint-every` has passed since the last one.
    pub fn due(&self) -> bool {
        self.last_written.elapsed() >= self.options.every
    }

    /// Worker 0, between rounds: every worker writes its state, then the manifest commits them
    /// with `position`, how far the change log was read. A failure is logged; the follower goes
    /// on and the previous checkpoint stays the one a restart uses.
    pub fn write(&mut self, worker: &mut Worker, position: LogPosition) {
        let started = Instant::now();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.last_written = started;
        self.ask_everyone(worker.peers(), Request { generation, committed: self.committed });
        let answered = |written: &WorkerCell<Vec<(usize, Written)>>| {
            written.borrow().iter().filter(|(_, (of, _))| *of == generation).count()
        };
        while answered(&self.written) < worker.peers() {
            worker.step_or_park(Some(Duration::from_millis(10)));
            self.serve(worker.index());
        }
        let mut replies: Vec<(usize, Written)> = self.written.take();
        replies.retain(|(_, (of, _))| *of == generation);
        replies.sort_by_key(|(index, _)| *index);
        let files: Result<Vec<WorkerFile>, String> = replies.into_iter().map(|(_, (_, file))| file).collect();
        let committed = files.map_err(anyhow::Error::msg).and_then(|files| {
            let records: u64 = files.iter().map(|file| file.records).sum();
            let manifest = Manifest {
                version: FORMAT_VERSION,
                generation,
                origin: self.origin.clone(),
                position,
                written_at: rfc3339(SystemTime::now()),
                files,
            };
            checkpoint::commit(&self.options.dir, &manifest)?;
            Ok(records)
        });
        match committed {
            Ok(records) => {
                self.committed = Some(generation);
                // Files of workers that no longer exist (a cluster restarted smaller) too.
                if let Err(err) = checkpoint::remove_stale(&self.options.dir, &[Some(generation)], None) {
                    tracing::warn!("cannot remove old checkpoint files: {err:#}");
                }
                tracing::info!(
                    generation,
                    records,
                    seconds = started.elapsed().as_secs_f64(),
                    "checkpoint written to {}",
                    self.options.dir.display()
                )
            }
            Err(err) => tracing::warn!("checkpoint {generation} not written: {err:#}; the previous one stays"),
        }
    }
}
