//! Dynamic batching: images from concurrent requests are gathered into one ONNX Runtime run on
//! a dedicated thread; each caller gets its own result back through a oneshot channel.
//!
//! A batch starts with the first queued image and grows until it holds `max_batch` images or
//! `max_wait` has passed. It also stops growing as soon as the queue is empty and no image is
//! still being decoded: waiting would then only add latency, since nothing else can arrive
//! before a new request does.
//!
//! Under faults and overload:
//! - the queue is bounded: a request reserves one slot per image ([`Batcher::admit`]) before its
//!   images are decoded, and a request that does not fit is refused at once, so overload turns
//!   into quick refusals instead of ever longer waits that clients give up on and retry;
//! - abandoned work is not computed: an image whose request has passed its deadline, or whose
//!   caller has gone (the receiver was dropped: request timed out, client disconnected), is
//!   dropped when its batch is about to run;
//! - one image cannot fail the others: a failed run is repeated on each half of the batch, down
//!   to single images, so only the images the model fails on get an error.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::ServiceMetrics;
use crate::model::{Classifier, Prediction};

/// How long the batching thread sleeps between checks while images are still being decoded.
const POLL: Duration = Duration::from_micros(200);
/// Bounds of the `Retry-After` advice given with a refusal.
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Most images admitted and not yet started (being decoded or waiting for a batch).
    pub max_queue: usize,
}

/// Why an image got no prediction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictionError {
    #[error("inference failed: {0}")]
    Failed(String),
    #[error("the inference thread has stopped")]
    Stopped,
}

/// A request's images do not fit in the queue.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the queue holds {depth} of at most {capacity} images, {wanted} more do not fit; retry later")]
pub struct QueueFull {
    pub depth: usize,
    pub capacity: usize,
    pub wanted: usize,
    /// When the queue should have drained, at its current rate (1 to 60 s).
    pub retry_after: Duration,
}

/// Number of admitted images not yet started, with its bound and how fast it drains.
struct Queue {
    depth: AtomicUsize,
    capacity: usize,
    /// Images per second the model gets through (f64 bits; 0 until the first run).
    drain_rate: AtomicU64,
    metrics: ServiceMetrics,
}

/// One admitted image's place in the queue, given back when dropped (its batch started, or the
/// image was refused or abandoned on the way).
pub struct QueueSlot {
    queue: Arc<Queue>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.queue.depth.fetch_sub(1, Ordering::AcqRel);
        self.queue.metrics.queue_depth_changed(-1);
    }
}

impl Queue {
    /// Counts `images` more in the queue, all or none.
    fn reserve(&self, images: usize) -> Result<(), QueueFull> {
        let mut depth = self.depth.load(Ordering::Acquire);
        loop {
            if depth + images > self.capacity {
                return Err(QueueFull {
                    depth,
                    capacity: self.capacity,
                    wanted: images,
                    retry_after: self.time_to_drain(depth),
                });
            }
            match self.depth.compare_exchange_weak(depth, depth + images, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(current) => depth = current,
            }
        }
        self.metrics.queue_depth_changed(images as i64);
        Ok(())
    }

    fn time_to_drain(&self, images: usize) -> Duration {
        let rate = f64::from_bits(self.drain_rate.load(Ordering::Relaxed));
        if rate <= 0.0 {
            return RETRY_AFTER_MIN;
        }
        let seconds = (images as f64 / rate).ceil();
        Duration::from_secs_f64(seconds.clamp(RETRY_AFTER_MIN.as_secs_f64(), RETRY_AFTER_MAX.as_secs_f64()))
    }

    /// Folds one run into the drain rate (exponential average, so a slow outlier fades).
    fn observe_run(&self, images: usize, elapsed: Duration) {
        let rate = images as f64 / elapsed.as_secs_f64().max(1e-6);
        let old = f64::from_bits(self.drain_rate.load(Ordering::Relaxed));
        let new = if old > 0.0 { 0.8 * old + 0.2 * rate } else { rate };
        self.drain_rate.store(new.to_bits(), Ordering::Relaxed);
    }
}

struct Job {
    pixels: Vec<f32>,
    queued_at: Instant,
    deadline: Instant,
    /// Held while the image waits; released when its batch starts.
    slot: Option<QueueSlot>,
    reply: oneshot::Sender<Result<Prediction, PredictionError>>,
}

impl Job {
    /// Nobody will read the answer: the deadline has passed or the caller is gone.
    fn is_abandoned(&self, now: Instant) -> bool {
        now >= self.deadline || self.reply.is_closed()
    }
}

/// Handle to the inference thread. The thread ends when the last handle is dropped.
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    in_preparation: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    queue: Arc<Queue>,
    image_len: usize,
}

/// Counts an image as "being prepared" (decoded/preprocessed) until dropped, so the batching
/// thread knows more work is about to arrive.
pub struct PreparationGuard {
    counter: Arc<AtomicUsize>,
}

impl Drop for PreparationGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks the thread dead when it returns or unwinds.
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Batcher {
    /// Starts the inference thread, which owns `classifier`.
    pub fn spawn(
        mut classifier: Classifier,
        config: BatchConfig,
        metrics: ServiceMetrics,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let image_len = classifier.spec().image_len();
        let config = BatchConfig { max_batch: classifier.batch_limit(config.max_batch.max(1)), ..config };
        Batcher::spawn_runner(move |pixels, count| classifier.classify(pixels, count), image_len, config, metrics)
    }

    /// Starts the inference thread around `run`, which classifies `count` images stored back to
    /// back in `pixels` (each `image_len` values).
    fn spawn_runner<R>(
        run: R,
        image_len: usize,
        config: BatchConfig,
        metrics: ServiceMetrics,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)>
    where
        R: FnMut(&[f32], usize) -> anyhow::Result<Vec<Prediction>> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job>();
        let in_preparation = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let admitted = Arc::new(Queue {
            depth: AtomicUsize::new(0),
            capacity: config.max_queue,
            drain_rate: AtomicU64::new(0),
            metrics: metrics.clone(),
        });
        let worker = Worker {
            run,
            queue,
            in_preparation: Arc::clone(&in_preparation),
            admitted: Arc::clone(&admitted),
            max_batch: config.max_batch.max(1),
            max_wait: config.max_wait,
            metrics,
            input: Vec::new(),
        };
        let flag = AliveFlag(Arc::clone(&alive));
        let handle = std::thread::Builder::new().name("inference".into()).spawn(move || {
            let _flag = flag;
            worker.run();
        })?;
        Ok((Batcher { jobs, in_preparation, alive, queue: admitted, image_len }, handle))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Reserves a queue slot for each of `images` images, all or none.
    pub fn admit(&self, images: usize) -> Result<Vec<QueueSlot>, QueueFull> {
        self.queue.reserve(images)?;
        Ok((0..images).map(|_| QueueSlot { queue: Arc::clone(&self.queue) }).collect())
    }

    /// Reserves a queue slot for one image.
    pub fn admit_one(&self) -> Result<QueueSlot, QueueFull> {
        self.queue.reserve(1)?;
        Ok(QueueSlot { queue: Arc::clone(&self.queue) })
    }

    /// Images admitted and not yet started.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth.load(Ordering::Acquire)
    }

    /// Call before decoding an image; drop the guard once the image is submitted (or refused).
    pub fn preparing(&self) -> PreparationGuard {
        self.in_preparation.fetch_add(1, Ordering::AcqRel);
        PreparationGuard { counter: Arc::clone(&self.in_preparation) }
    }

    /// Queues one preprocessed image in its admitted `slot`; the returned receiver yields its
    /// prediction. The image is dropped unrun once `deadline` passes or the receiver is dropped.
    pub fn submit(
        &self,
        pixels: Vec<f32>,
        slot: QueueSlot,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Prediction, PredictionError>>, PredictionError> {
        if pixels.len() != self.image_len {
            return Err(PredictionError::Failed(format!(
                "image tensor has {} values, expected {}",
                pixels.len(),
                self.image_len
            )));
        }
        let (reply, result) = oneshot::channel();
        let job = Job { pixels, queued_at: Instant::now(), deadline, slot: Some(slot), reply };
        self.jobs.send(job).map_err(|_| PredictionError::Stopped)?;
        Ok(result)
    }
}

struct Worker<R> {
    run: R,
    queue: mpsc::Receiver<Job>,
    in_preparation: Arc<AtomicUsize>,
    admitted: Arc<Queue>,
    max_batch: usize,
    max_wait: Duration,
    metrics: ServiceMetrics,
    /// Reused input buffer of the batch (max_batch × image size).
    input: Vec<f32>,
}

impl<R> Worker<R>
where
    R: FnMut(&[f32], usize) -> anyhow::Result<Vec<Prediction>>,
{
    fn run(mut self) {
        tracing::info!(
            max_batch = self.max_batch,
            max_wait_ms = self.max_wait.as_secs_f64() * 1e3,
            max_queue = self.admitted.capacity,
            "inference thread started"
        );
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(()) = self.collect(&mut batch) {
            self.run_batch(&mut batch);
        }
        tracing::info!("inference thread stopped");
    }

    /// Fills `batch`; `None` once every sender is gone and the queue is drained.
    fn collect(&self, batch: &mut Vec<Job>) -> Option<()> {
        let first = self.queue.recv().ok()?;
        batch.push(first);
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.max_batch {
            match self.queue.try_recv() {
                Ok(job) => {
                    batch.push(job);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            if self.in_preparation.load(Ordering::Acquire) == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.queue.recv_timeout((deadline - now).min(POLL)) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(())
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>) {
        self.drop_abandoned(batch);
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        for job in batch.iter_mut() {
            self.metrics.observe_queue_wait(started.duration_since(job.queued_at));
            job.slot = None;
        }
        let jobs: &[Job] = batch;
        let mut outcomes = Vec::with_capacity(jobs.len());
        isolate(0..jobs.len(), &mut |range| self.run_images(&jobs[range]), &mut outcomes);
        let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
        if failed > 0 {
            tracing::error!(batch = jobs.len(), failed, "images failed inference");
        }
        for (job, outcome) in batch.drain(..).zip(outcomes) {
            // The caller may have gone away meanwhile: nothing to do then.
            let _ = job.reply.send(outcome);
        }
    }

    /// Drops (unrun) the images nobody waits for any more.
    fn drop_abandoned(&self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        let before = batch.len();
        batch.retain(|job| !job.is_abandoned(now));
        let dropped = before - batch.len();
        if dropped > 0 {
            self.metrics.count_abandoned(dropped);
            tracing::debug!(dropped, "abandoned images dropped before inference");
        }
    }

    /// One ONNX Runtime run over `jobs`.
    fn run_images(&mut self, jobs: &[Job]) -> Result<Vec<Prediction>, PredictionError> {
        let count = jobs.len();
        self.input.clear();
        for job in jobs {
            self.input.extend_from_slice(&job.pixels);
        }
        let started = Instant::now();
        let run = &mut self.run;
        let input = &self.input;
        let outcome = catch_unwind(AssertUnwindSafe(|| run(input, count)));
        let elapsed = started.elapsed();
        let result = match outcome {
            Ok(Ok(predictions)) if predictions.len() == count => Ok(predictions),
            Ok(Ok(predictions)) => {
                Err(PredictionError::Failed(format!("{} predictions for {count} images", predictions.len())))
            }
            Ok(Err(e)) => Err(PredictionError::Failed(format!("{e:#}"))),
            Err(_) => Err(PredictionError::Failed("ONNX Runtime call panicked".into())),
        };
        match &result {
            Ok(_) => {
                self.metrics.observe_batch(count, elapsed);
                self.admitted.observe_run(count, elapsed);
                tracing::debug!(batch = count, ms = elapsed.as_secs_f64() * 1e3, "batch done");
            }
            Err(error) => {
                self.metrics.count_failed_run();
                tracing::warn!(batch = count, %error, "ONNX Runtime run failed");
            }
        }
        result
    }
}

/// Runs the items of `range` together; if that fails, runs each half on its own, recursively,
/// and so pins a failure to the items it comes from: the others still get their results. A batch
/// with one bad item costs about 2·log2(n) extra runs; a batch that fails as a whole (the model
/// is broken) 2n-1 runs, after which every item carries the error.
fn isolate<T, E>(
    range: Range<usize>,
    run: &mut impl FnMut(Range<usize>) -> Result<Vec<T>, E>,
    outcomes: &mut Vec<Result<T, E>>,
) {
    match run(range.clone()) {
        Ok(results) => outcomes.extend(results.into_iter().map(Ok)),
        Err(error) if range.len() <= 1 => outcomes.push(Err(error)),
        Err(_) => {
            let middle = range.start + range.len() / 2;
            isolate(range.start..middle, run, outcomes);
            isolate(middle..range.end, run, outcomes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A stand-in model for faults ONNX Runtime cannot be made to show on demand: each "image" is
    /// one value, predicted as its own class; an image of value `POISON` fails the whole run.
    const POISON: f32 = -1.0;

    fn fake_model(runs: Arc<Mutex<Vec<Vec<f32>>>>) -> impl FnMut(&[f32], usize) -> anyhow::Result<Vec<Prediction>> {
        move |pixels: &[f32], count: usize| {
            assert_eq!(pixels.len(), count);
            runs.lock().unwrap().push(pixels.to_vec());
            if pixels.contains(&POISON) {
                anyhow::bail!("the model failed on this batch");
            }
            Ok(pixels.iter().map(|&v| Prediction { class_index: v as usize, score: 1.0 }).collect())
        }
    }

    fn config(max_batch: usize) -> BatchConfig {
        BatchConfig { max_batch, max_wait: Duration::from_secs(60), max_queue: 64 }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[test]
    fn isolation_pins_failures_to_their_items() {
        for (len, bad) in
            [(1, vec![0]), (7, vec![]), (8, vec![3]), (8, vec![0, 7]), (13, vec![2, 3, 11]), (5, vec![0, 1, 2, 3, 4])]
        {
            let mut runs = 0;
            let mut outcomes = Vec::new();
            isolate(
                0..len,
                &mut |range: Range<usize>| {
                    runs += 1;
                    if range.clone().any(|i| bad.contains(&i)) {
                        Err(format!("run over {range:?} failed"))
                    } else {
                        Ok(range.collect::<Vec<_>>())
                    }
                },
                &mut outcomes,
            );
            assert_eq!(outcomes.len(), len);
            for (i, outcome) in outcomes.iter().enumerate() {
                match outcome {
                    Ok(value) => assert!(!bad.contains(&i) && *value == i, "item {i} got {value}"),
                    Err(error) => {
                        assert!(bad.contains(&i) && error.contains(&format!("{i}..{}", i + 1)), "{i}: {error}")
                    }
                }
            }
            if bad.is_empty() {
                assert_eq!(runs, 1);
            }
            assert!(runs < 2 * len, "{runs} runs for {len} items");
        }
    }

    #[test]
    fn a_failing_image_fails_only_itself() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let metrics = ServiceMetrics::new("test").unwrap();
        let (batcher, thread) =
            Batcher::spawn_runner(fake_model(Arc::clone(&runs)), 1, config(8), metrics.clone()).unwrap();
        // Held while submitting, so all six images land in one batch.
        let preparing = batcher.preparing();
        let values = [1.0, 2.0, POISON, 4.0, 5.0, 6.0];
        let slots = batcher.admit(values.len()).unwrap();
        let replies: Vec<_> =
            values.iter().zip(slots).map(|(&value, slot)| batcher.submit(vec![value], slot, far()).unwrap()).collect();
        drop(preparing);
        let outcomes: Vec<_> = replies.into_iter().map(|reply| reply.blocking_recv().unwrap()).collect();
        for (value, outcome) in values.iter().zip(&outcomes) {
            match outcome {
                Ok(prediction) => assert_eq!(prediction.class_index, *value as usize),
                Err(PredictionError::Failed(reason)) => {
                    assert_eq!(*value, POISON);
                    assert!(reason.contains("the model failed"), "{reason}");
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
        let runs = runs.lock().unwrap();
        assert_eq!(runs[0], values, "the first run is the whole batch");
        assert!(runs.len() > 1 && runs.len() <= 11, "{runs:?}");
        assert_eq!(batcher.queue_depth(), 0);
        let text = metrics.render();
        assert!(text.contains("infer_images_total 5"), "{text}");
        assert!(text.contains(&format!("infer_failed_runs_total {}", runs.len() - 3)), "{text}");
        drop(batcher);
        thread.join().unwrap();
    }

    #[test]
    fn abandoned_images_are_dropped_before_they_run() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let metrics = ServiceMetrics::new("test").unwrap();
        let (batcher, thread) =
            Batcher::spawn_runner(fake_model(Arc::clone(&runs)), 1, config(8), metrics.clone()).unwrap();
        let preparing = batcher.preparing();
        let mut slots = batcher.admit(3).unwrap();
        let kept = batcher.submit(vec![1.0], slots.pop().unwrap(), far()).unwrap();
        // The caller went away (request timed out or client disconnected): receiver dropped.
        drop(batcher.submit(vec![2.0], slots.pop().unwrap(), far()).unwrap());
        // The deadline passes while the image waits.
        let expired = batcher.submit(vec![3.0], slots.pop().unwrap(), Instant::now()).unwrap();
        drop(preparing);
        assert_eq!(kept.blocking_recv().unwrap().unwrap().class_index, 1);
        assert!(expired.blocking_recv().is_err(), "an expired image is dropped, not answered");
        assert_eq!(*runs.lock().unwrap(), vec![vec![1.0]], "only the image still awaited ran");
        assert_eq!(batcher.queue_depth(), 0, "dropped images give their slots back");
        let text = metrics.render();
        assert!(text.contains("infer_abandoned_images_total 2"), "{text}");
        assert!(text.contains("infer_images_total 1"), "{text}");
        drop(batcher);
        thread.join().unwrap();
    }

    #[test]
    fn the_queue_admits_whole_requests_up_to_its_bound() {
        let metrics = ServiceMetrics::new("test").unwrap();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let config = BatchConfig { max_queue: 5, ..config(4) };
        let (batcher, thread) = Batcher::spawn_runner(fake_model(runs), 1, config, metrics.clone()).unwrap();
        let three = batcher.admit(3).unwrap();
        let full = batcher.admit(3).err().expect("3 + 3 > 5");
        assert_eq!((full.depth, full.capacity, full.wanted), (3, 5, 3));
        assert_eq!(full.retry_after, RETRY_AFTER_MIN, "no drain rate known yet");
        let two = batcher.admit(2).unwrap();
        assert!(batcher.admit(1).is_err());
        assert!(metrics.render().contains("infer_queue_depth 5"));
        drop(three);
        assert_eq!(batcher.queue_depth(), 2);
        assert!(metrics.render().contains("infer_queue_depth 2"));
        drop(two);
        assert_eq!(batcher.admit(5).unwrap().len(), 5);
        drop(batcher);
        thread.join().unwrap();
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let queue = Queue {
            depth: AtomicUsize::new(0),
            capacity: 10,
            drain_rate: AtomicU64::new(0),
            metrics: ServiceMetrics::new("test").unwrap(),
        };
        assert_eq!(queue.time_to_drain(100), RETRY_AFTER_MIN);
        queue.observe_run(10, Duration::from_secs(1));
        assert_eq!(queue.time_to_drain(5), RETRY_AFTER_MIN);
        assert_eq!(queue.time_to_drain(45), Duration::from_secs(5));
        assert_eq!(queue.time_to_drain(100_000), RETRY_AFTER_MAX);
    }
}
