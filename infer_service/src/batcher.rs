//! Dynamic batching: images from concurrent requests are gathered into one ONNX Runtime run on
//! a dedicated thread; each caller gets its own result back through a oneshot channel.
//!
//! A batch starts with the first queued image and grows until it holds `max_batch` images or
//! `max_wait` has passed. It also stops growing as soon as the queue is empty and no image is
//! still being decoded: waiting would then only add latency, since nothing else can arrive
//! before a new request does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::{Classifier, Prediction};

/// How long the batching thread sleeps between checks while images are still being decoded.
const POLL: Duration = Duration::from_micros(200);

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
}

/// Why an image got no prediction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("inference failed: {0}")]
    Failed(String),
    #[error("the inference thread has stopped")]
    Stopped,
}

struct Job {
    pixels: Vec<f32>,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Prediction, InferError>>,
}

/// Handle to the inference thread. The thread ends when the last handle is dropped.
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    in_preparation: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
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
        classifier: Classifier,
        config: BatchConfig,
        metrics: Metrics,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let in_preparation = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let image_len = classifier.spec().image_len();
        let max_batch = classifier.batch_limit(config.max_batch.max(1));
        let worker = Worker {
            classifier,
            queue,
            in_preparation: Arc::clone(&in_preparation),
            max_batch,
            max_wait: config.max_wait,
            metrics,
            input: Vec::new(),
        };
        let flag = AliveFlag(Arc::clone(&alive));
        let handle = std::thread::Builder::new().name("inference".into()).spawn(move || {
            let _flag = flag;
            worker.run();
        })?;
        Ok((Batcher { jobs, in_preparation, alive, image_len }, handle))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Call before decoding an image; drop the guard once the image is submitted (or refused).
    pub fn preparing(&self) -> PreparationGuard {
        self.in_preparation.fetch_add(1, Ordering::AcqRel);
        PreparationGuard { counter: Arc::clone(&self.in_preparation) }
    }

    /// Queues one preprocessed image; the returned receiver yields its prediction.
    pub fn submit(&self, pixels: Vec<f32>) -> Result<oneshot::Receiver<Result<Prediction, InferError>>, InferError> {
        if pixels.len() != self.image_len {
            return Err(InferError::Failed(format!(
                "image tensor has {} values, expected {}",
                pixels.len(),
                self.image_len
            )));
        }
        let (reply, result) = oneshot::channel();
        self.jobs.send(Job { pixels, queued_at: Instant::now(), reply }).map_err(|_| InferError::Stopped)?;
        Ok(result)
    }
}

struct Worker {
    classifier: Classifier,
    queue: mpsc::Receiver<Job>,
    in_preparation: Arc<AtomicUsize>,
    max_batch: usize,
    max_wait: Duration,
    metrics: Metrics,
    /// Reused input buffer of the batch (max_batch × image size).
    input: Vec<f32>,
}

impl Worker {
    fn run(mut self) {
        tracing::info!(
            max_batch = self.max_batch,
            max_wait_ms = self.max_wait.as_secs_f64() * 1e3,
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
        let count = batch.len();
        let started = Instant::now();
        self.input.clear();
        for job in batch.iter() {
            self.metrics.observe_queue_wait(started.duration_since(job.queued_at));
            self.input.extend_from_slice(&job.pixels);
        }
        let classifier = &mut self.classifier;
        let input = &self.input;
        let outcome = catch_unwind(AssertUnwindSafe(|| classifier.classify(input, count)));
        let elapsed = started.elapsed();
        let results: Result<Vec<Prediction>, InferError> = match outcome {
            Ok(Ok(predictions)) if predictions.len() == count => Ok(predictions),
            Ok(Ok(predictions)) => {
                Err(InferError::Failed(format!("{} predictions for {count} images", predictions.len())))
            }
            Ok(Err(e)) => Err(InferError::Failed(format!("{e:#}"))),
            Err(_) => Err(InferError::Failed("ONNX Runtime call panicked".into())),
        };
        match results {
            Ok(predictions) => {
                self.metrics.observe_batch(count, elapsed);
                tracing::debug!(batch = count, ms = elapsed.as_secs_f64() * 1e3, "batch done");
                for (job, prediction) in batch.drain(..).zip(predictions) {
                    // The caller may have gone away (client disconnected): nothing to do then.
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            Err(error) => {
                tracing::error!(batch = count, %error, "batch failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
