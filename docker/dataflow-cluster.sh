#!/bin/sh
# Starts one process of a timely cluster in Kubernetes, then runs `dataflow count` with the
# cluster flags filled in; the container's args are passed on after them.
#
# Every pod of the cluster runs the same spec, so each one works out its place from its own name:
#   - a StatefulSet pod is <name>-<ordinal>; an Indexed Job pod is <job>-<index> (and gets
#     JOB_COMPLETION_INDEX), so the process index (-p) is the number after the last dash;
#   - the peers are <prefix>-0 .. <prefix>-(N-1), reachable as
#     <prefix>-<i>.<service>.<namespace>.svc.<cluster domain> through the headless service.
#
# Environment:
#   DATAFLOW_PROCESSES  N, the number of processes (-n); must equal the replicas/completions.
#   DATAFLOW_SERVICE    the headless service (StatefulSet serviceName, or the Job's subdomain).
#   POD_NAMESPACE       the pod's namespace (from the downward API).
#   DATAFLOW_PORT       timely's port on every process (default 2101).
#   CLUSTER_DOMAIN      default cluster.local.
#   DATAFLOW_HOSTFILE   where the host file is written (default /tmp/dataflow-hosts).
#   DATAFLOW_BIN        the dataflow binary (default dataflow, on PATH).
set -eu

die() {
    echo "dataflow-cluster: $*" >&2
    exit 64
}

processes=${DATAFLOW_PROCESSES:?dataflow-cluster: set DATAFLOW_PROCESSES to the number of processes}
service=${DATAFLOW_SERVICE:?dataflow-cluster: set DATAFLOW_SERVICE to the headless service name}
namespace=${POD_NAMESPACE:?dataflow-cluster: set POD_NAMESPACE (downward API metadata.namespace)}
port=${DATAFLOW_PORT:-2101}
domain=${CLUSTER_DOMAIN:-cluster.local}
hostfile=${DATAFLOW_HOSTFILE:-/tmp/dataflow-hosts}
# The pod's hostname: the StatefulSet pod name, or <job>-<index> for an Indexed Job (whose pod
# *name* has a random suffix too).
pod=$(hostname)

case $pod in
    *-*) ;;
    *) die "pod name '$pod' does not end in -<index>; run this in a StatefulSet or an Indexed Job" ;;
esac
prefix=${pod%-*}
index=${JOB_COMPLETION_INDEX:-${pod##*-}}
case $index in
    '' | *[!0-9]*) die "pod name '$pod' does not end in a number (process index)" ;;
esac
case $processes in
    '' | *[!0-9]* | 0) die "DATAFLOW_PROCESSES='$processes' is not a positive number" ;;
esac
[ "$index" -lt "$processes" ] ||
    die "process index $index is not below DATAFLOW_PROCESSES=$processes; scale replicas and DATAFLOW_PROCESSES together"

{
    echo "# written by dataflow-cluster for $pod: one host:port line per process, in process order"
    i=0
    while [ "$i" -lt "$processes" ]; do
        if [ "$i" -eq "$index" ]; then
            # This process listens here. Binding to every interface avoids depending on its own
            # DNS record, which the headless service publishes a moment after the pod starts.
            echo "0.0.0.0:$port"
        else
            echo "$prefix-$i.$service.$namespace.svc.$domain:$port"
        fi
        i=$((i + 1))
    done
} >"$hostfile"

echo "dataflow-cluster: process $index of $processes, peers $prefix-*.$service.$namespace.svc.$domain:$port" >&2
exec "${DATAFLOW_BIN:-dataflow}" count -n "$processes" -p "$index" -h "$hostfile" "$@"
