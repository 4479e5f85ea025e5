//! Assembling a service instance (model, labels, batcher, metrics) and serving it.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::Router;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::batcher::{BatchConfig, Batcher};
use crate::config::ServiceConfig;
use crate::labels::{ClassList, LabelMap, Labeller};
use crate::metrics::ServiceMetrics;
use crate::model::{Classifier, SessionOptions};
use crate::preprocess::Preprocessor;
use crate::runtime;
use crate::server::{self, AppState};

/// A loaded model ready to serve. Loading blocks (file reads, ONNX Runtime session creation).
pub struct Service {
    state: Arc<AppState>,
    inference_thread: JoinHandle<()>,
    max_body_bytes: usize,
}

impl Service {
    pub fn load(config: &ServiceConfig) -> anyhow::Result<Service> {
        let max_queue = config.queue_capacity()?;
        let library = runtime::locate_onnxruntime(config.ort_library.as_deref())?;
        let env = runtime::environment(&library)?;
        let model_id = match &config.model_id {
            Some(id) => id.clone(),
            None => default_model_id(&config.model)?,
        };
        let classifier =
            Classifier::load(&env, &config.model, &SessionOptions { intra_threads: config.intra_threads })?;
        let spec = classifier.spec().clone();

        let classes = ClassList::load(&config.classes)?;
        if let Some(declared) = spec.num_classes {
            if declared != classes.len() {
                bail!(
                    "model {} outputs {declared} scores but {} lists {} classes",
                    config.model.display(),
                    config.classes.display(),
                    classes.len()
                );
            }
        }
        let label_map = match &config.label_map {
            Some(path) => Some(LabelMap::load(path, &classes)?),
            None => None,
        };
        let (height, width) = (u32::try_from(spec.height)?, u32::try_from(spec.width)?);
        let preprocessor = Preprocessor::new(height, width, config.resize_ratio, config.max_image_pixels);
        let metrics = ServiceMetrics::new(&model_id).context("cannot register metrics")?;
        let batch = BatchConfig { max_batch: config.max_batch, max_wait: config.max_wait, max_queue };
        let (batcher, inference_thread) =
            Batcher::spawn(classifier, batch, metrics.clone()).context("cannot start the inference thread")?;
        tracing::info!(
            model_id,
            model = %config.model.display(),
            input = spec.input_name,
            output = spec.output_name,
            height,
            width,
            fixed_batch = ?spec.fixed_batch,
            classes = classes.len(),
            label_map = ?config.label_map,
            "model loaded"
        );
        let state = AppState {
            model_id,
            batcher,
            preprocessor,
            labeller: Labeller::new(classes, label_map),
            metrics,
            max_images_per_request: config.max_images_per_request,
            request_timeout: config.request_timeout,
        };
        Ok(Service { state: Arc::new(state), inference_thread, max_body_bytes: config.max_body_bytes })
    }

    pub fn model_id(&self) -> &str {
        &self.state.model_id
    }

    /// The batcher behind the routes: its queue is the one requests are admitted to.
    pub fn batcher(&self) -> &Batcher {
        &self.state.batcher
    }

    pub fn router(&self) -> Router {
        server::router(Arc::clone(&self.state), self.max_body_bytes)
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let Service { state, inference_thread, .. } = self;
        drop(state);
        axum::serve(listener, router).with_graceful_shutdown(shutdown).await.context("HTTP server failed")?;
        // The inference thread ends once the last request task lets go of the state.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !inference_thread.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if inference_thread.is_finished() {
            if inference_thread.join().is_err() {
                tracing::error!("inference thread panicked");
            }
        } else {
            tracing::warn!("inference thread still busy at shutdown");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `<file stem>-<first 12 hex digits of the file's sha256>`.
pub fn default_model_id(model: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(model).with_context(|| format!("cannot open model {}", model.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("cannot read model {}", model.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let digest = hex::encode(hasher.finalize());
    let stem = model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy());
    Ok(format!("{stem}-{}", &digest[..12]))
}

/// A service running on a background task (tests, the benchmark).
pub struct RunningService {
    addr: SocketAddr,
    model_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Loads `config` and serves it on `listen` (port 0 picks a free port).
    pub async fn start(config: ServiceConfig, listen: SocketAddr) -> anyhow::Result<RunningService> {
        let service = tokio::task::spawn_blocking(move || Service::load(&config)).await??;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let model_id = service.model_id().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "listening");
        Ok(RunningService { addr, model_id, stop: Some(stop), task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Graceful stop: in-flight requests finish, then the server and its inference thread end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task failed")?
    }
}
