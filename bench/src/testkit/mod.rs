//! The test kit: what the integration tests of every crate share to run the project's real
//! binaries against real services. Child processes with one way to signal and stop them
//! ([`process`]), free ports, the workspace's binaries and the shared assets (here), servers of a
//! test's own ([`stack`]), a test database ([`mongo`]), the CIFAR-10 test batch ([`cifar`]),
//! Prometheus samples ([`metrics`]) and the benchmarks' percentile ([`percentile`]).

pub mod cifar;
pub mod metrics;
pub mod mongo;
pub mod process;
pub mod stack;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub use crate::stats::percentile;
pub use cifar::{cifar_batch, cifar_image, png_bytes};
pub use metrics::{expect_sample, sample, scrape_sample};
pub use mongo::TestDb;
pub use process::{alive, log_tails, signal, ChildGuard, Children, Signal};
pub use stack::{next_free_ports, Part, PrivateMongo, PrivateStack, StackPorts};

/// The workspace's root folder (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace folder").to_path_buf()
}

/// `target/<profile>`: where cargo puts the workspace's binaries. Test executables live in its
/// `deps/` folder.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's folder");
    deps.parent().expect("target/<profile>").to_path_buf()
}

/// A binary of any workspace package (a test can only name its own package's). `scripts/test`
/// (`cargo test --workspace`) builds them all; when one is missing or older than a source file
/// of the workspace, the first call in a test process runs `cargo test --workspace --no-run`,
/// the same build. (Building one package alone, `cargo build -p`, would resolve dependency
/// features differently and compile a second copy of half the dependency tree.)
pub fn workspace_binary(bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = profile_dir().join(bin);
    if !is_fresh(&path) {
        BUILT.get_or_init(build_workspace);
    }
    assert!(path.is_file(), "{} is missing after building the workspace", path.display());
    path
}

fn build_workspace() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args(["test", "--workspace", "--no-run", "--quiet"]);
    if profile_dir().ends_with("release") {
        build.arg("--release");
    }
    // What cargo set for this test's package must not leak into the build: some build scripts
    // (ring's) watch CARGO_MANIFEST_DIR, and a changed value rebuilds half the tree.
    for (key, _) in std::env::vars_os() {
        if is_set_by_cargo_for_tests(&key.to_string_lossy()) {
            build.env_remove(key);
        }
    }
    let status = build.status().unwrap_or_else(|e| panic!("cannot run cargo to build the binaries: {e}"));
    assert!(status.success(), "`cargo test --workspace --no-run` failed");
}

/// True if `binary` exists and is newer than `Cargo.lock` and every file under a `src/` folder
/// of the workspace.
fn is_fresh(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = workspace_root();
    let mut pending: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .filter(|p| p.is_dir())
        .collect();
    let mut newest = root.join("Cargo.lock").metadata().and_then(|m| m.modified()).ok();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest.is_none_or(|n| n <= built)
}

/// The variables cargo sets when it runs a test of one package.
fn is_set_by_cargo_for_tests(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// A file the test needs, or a failure that says how to get it.
pub fn required(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.is_file(), "{} is missing: {how}", path.display());
    path
}

/// The shared test assets: `$IOT_ASSETS_DIR`, or `../shared/assets` beside the workspace (the
/// producers' own lookup, so tests and binaries agree).
pub fn assets_dir() -> PathBuf {
    iot_ingest::assets::default_dir()
}

/// One file of the shared assets, or a failure that says how to get it.
pub fn asset(name: &str) -> PathBuf {
    required(assets_dir().join(name), "set IOT_ASSETS_DIR to the assets folder (see ../shared/assets/SOURCES.md)")
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, or where `scripts/setup` installs it.
pub fn ort_library() -> PathBuf {
    let default = workspace_root().join(".cache/onnxruntime/lib/libonnxruntime.so");
    required(PathBuf::from(env_or("ORT_DYLIB_PATH", &default.to_string_lossy())), "run scripts/setup")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

/// `n` distinct loopback ports nobody listens on right now (all held while choosing, so none
/// repeats), e.g. for a cluster's host file.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    held.iter().map(|l| l.local_addr().expect("address").port()).collect()
}

/// A name no other test run uses, for databases, topics and groups: `<prefix>_<pid>_<n>_<ms>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), now_ms())
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// Feeds every committed input of the fuzz target `target` (`fuzz/corpus/TARGET/`) through
/// `entry_point`, the function the fuzzer calls, on the stable toolchain: a fixed find stays fixed
/// on machines without nightly or cargo-fuzz (docs/fuzzing.md).
pub fn replay_fuzz_corpus(target: &str, entry_point: fn(&[u8])) {
    let dir = workspace_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    for input in inputs {
        let data = std::fs::read(&input).unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry_point(&data)));
        assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
    }
}
