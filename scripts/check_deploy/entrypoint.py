"""Entrypoint scripts (docker/dataflow-cluster.sh), run with stand-ins for the binaries, and the
timely host file they write."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from check_deploy.common import Problems
from check_deploy.manifests import Pod, resolve_hosts


def run_entrypoint_script(script: Path, argv: list[str], env: dict[str, str], image_binaries: set[str],
                          hostname: str, workdir: Path) -> tuple[int, str, list[str] | None, dict[str, str]]:
    """Runs a wrapper script with every image binary replaced by a recorder; returns what it exec'd."""
    shims = workdir / "shims"
    shims.mkdir(exist_ok=True)
    record = workdir / "record.json"
    if record.exists():
        record.unlink()
    for name in image_binaries:
        shim = shims / name
        shim.write_text('#!/bin/sh\n{ printf \'%s\\0\' "$(basename "$0")"; for a in "$@"; do printf \'%s\\0\' "$a"; done; } '
                        '>"$CHECK_RECORD"\n')
        shim.chmod(0o755)
    (shims / "hostname").write_text(f"#!/bin/sh\necho {shlex.quote(hostname)}\n")
    (shims / "hostname").chmod(0o755)
    run_env = dict(env)
    run_env.update({"PATH": f"{shims}:/usr/bin:/bin", "CHECK_RECORD": str(record)})
    run_env.setdefault("DATAFLOW_HOSTFILE", str(workdir / "hostfile"))
    result = subprocess.run(["sh", str(script)] + argv, env=run_env, capture_output=True, text=True, timeout=30)
    recorded = record.read_text().split("\0")[:-1] if record.exists() else None
    return result.returncode, result.stderr, recorded, run_env


def script_env_names(script: Path) -> set[str]:
    text = script.read_text()
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))


def check_cluster(pod: Pod, container: dict, env: dict[str, str], index: int, lines: list[str], objects: list[dict],
                  pods: list[Pod], where: str, problems: Problems, pod_connections: set) -> None:
    """A timely host file: one line per process; this process listens, the others are its peers' DNS names."""
    processes = env.get("DATAFLOW_PROCESSES")
    if pod.kind == "StatefulSet":
        expected = pod.replicas
    else:
        job = pod.workload["spec"]["jobTemplate"]["spec"] if pod.kind == "CronJob" else pod.workload["spec"]
        expected = int(job.get("completions", 1))
        if int(job.get("parallelism", 1)) != expected:
            problems.add(where, f"parallelism {job.get('parallelism')} != completions {expected}: "
                                "a timely cluster needs all its processes at once")
    if processes != str(expected):
        problems.add(where, f"DATAFLOW_PROCESSES={processes} but the workload runs {expected} pods")
    if len(lines) != expected:
        problems.add(where, f"the host file has {len(lines)} lines for {expected} processes")
        return
    ports = {int(p["containerPort"]) for p in container.get("ports", [])}
    for i, line in enumerate(lines):
        host, _, port = line.rpartition(":")
        if i == index:
            if host not in ("0.0.0.0", "[::]") or int(port) not in ports:
                problems.add(where, f"process {index} listens on {line}, not on a containerPort of its own")
            continue
        for target, target_port in resolve_hosts(line, pod.namespace, objects, pods, f"{where} host file", problems):
            pod_connections.add((target.where, target_port))
            if target is not pod:
                problems.add(where, f"host file line {line} names a pod of {target.where}, not of {pod.where}")
