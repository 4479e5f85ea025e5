# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this
# Shared settings for scripts/setup, scripts/stack and scripts/check-deploy. Sourced, not run.
# Every path and version lives here once, so the two scripts cannot drift apart.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Installs (what setup produces) and runtime data (what the stack writes): both git-ignored.
CACHE_DIR=${IOT_CACHE_DIR:-$ROOT/.cache}
STACK_DIR=${IOT_STACK_DIR:-$ROOT/.stack}
# Absolute paths: they end up in server configs and in the SQLite URL.
case $CACHE_DIR in /*) ;; *) CACHE_DIR=$ROOT/$CACHE_DIR ;; esac
case $STACK_DIR in /*) ;; *) STACK_DIR=$ROOT/$STACK_DIR ;; esac

# Pinned versions.
KAFKA_VERSION=3.9.1          # KRaft, runs on Java 17; jars from Maven Central
SLF4J_VERSION=1.7.36         # the slf4j-api that kafka 3.9 is built against
FERRETDB_VERSION=v1.24.2     # v2 needs PostgreSQL+DocumentDB; v1 has the SQLite handler
ORT_VERSION=1.32.0           # must match the onnxruntime pin in scripts/requirements-dev.txt

VENV_DIR=$CACHE_DIR/venv
VENV_PY=$VENV_DIR/bin/python
PY_REQUIREMENTS=$ROOT/scripts/requirements-dev.txt
# The offline deployment checkers (scripts/check-deploy), in a venv of their own: ansible's pins
# and the stack's pins do not have to agree.
DEPLOY_VENV_DIR=$CACHE_DIR/deploy-venv
DEPLOY_REQUIREMENTS=$ROOT/scripts/requirements-deploy.txt
BENCH_VENV_DIR=$CACHE_DIR/bench-venv
BENCH_REQUIREMENTS=$ROOT/scripts/requirements-bench.txt
ORT_LIB_DIR=$CACHE_DIR/onnxruntime/lib
ORT_LIB=$ORT_LIB_DIR/libonnxruntime.so
KAFKA_HOME=$CACHE_DIR/kafka
KAFKA_LIBS=$KAFKA_HOME/libs
FERRETDB_BIN=$CACHE_DIR/bin/ferretdb
FERRETDB_PATCHES="sqlite-id-index update-atomic id-filter-pushdown id-range-pushdown update-batch-txn"  # what scripts/setup fixes in the source before building

# Stack addresses (overridable so two checkouts can run side by side).
KAFKA_HOST=${IOT_KAFKA_HOST:-127.0.0.1}
KAFKA_PORT=${IOT_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${IOT_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_PARTITIONS=${IOT_KAFKA_PARTITIONS:-4}
KAFKA_HEAP=${IOT_KAFKA_HEAP:-512m}
MONGO_HOST=${IOT_MONGO_HOST:-127.0.0.1}
MONGO_PORT=${IOT_MONGO_PORT:-27017}
# FerretDB's debug HTTP listener (metrics, pprof): off ("-") unless asked for, e.g. 127.0.0.1:8088.
FERRETDB_DEBUG_ADDR=${IOT_FERRETDB_DEBUG_ADDR:--}

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# True when the Kafka jars for the pinned version are all in place.
kafka_installed() { [[ -f $KAFKA_LIBS/.complete && $(cat "$KAFKA_LIBS/.complete") == "$KAFKA_VERSION" ]]; }

# True when the venv exists and was built from the current requirements file.
venv_installed() { venv_current "$VENV_DIR" "$PY_REQUIREMENTS"; }

# venv_current DIR REQUIREMENTS: DIR is a venv stamped with the hash of REQUIREMENTS (venv_stamp).
venv_current() {
  [[ -x $1/bin/python && -f $1/.requirements.sha256 ]] &&
    [[ $(cat "$1/.requirements.sha256") == "$(sha256sum <"$2" | cut -d' ' -f1)" ]]
}

# venv_stamp DIR REQUIREMENTS: after a successful install, so a changed file reinstalls next time.
venv_stamp() { sha256sum <"$2" | cut -d' ' -f1 >"$1/.requirements.sha256"; }

# The binary's own report; also proves it starts (a build without version.txt panics here).
ferretdb_installed() {
  [[ -x $FERRETDB_BIN ]] || return 1
  local out
  out=$("$FERRETDB_BIN" --version 2>/dev/null) || return 1
  grep -qx "version: $FERRETDB_VERSION" <<<"$out" &&
    [[ $(cat "$FERRETDB_BIN.patches" 2>/dev/null) == "$FERRETDB_PATCHES" ]]
}
