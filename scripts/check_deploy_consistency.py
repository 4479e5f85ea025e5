#!/usr/bin/env python3
"""Checks that the deployment files agree with the code they deploy (run by scripts/check-deploy).

Schemas say a manifest is well formed; this says it is *right* for this project:

- images: every project image a manifest uses is a target of docker/Dockerfile and an entry of the
  kustomization's `images:`; the binaries the Dockerfile installs are bin targets of the workspace;
  .dockerignore lets in what the build needs and keeps out build output and secrets;
- command lines: every flag a manifest passes to a binary is one the binary accepts, and the binary
  itself accepts the whole command line (it is run with `--help` appended, so clap parses every flag
  and value before printing help); every environment variable is one the binary (or the entrypoint
  script in front of it) reads, and its value parses as that flag's value;
- entrypoint scripts (docker/dataflow-cluster.sh) are run for every process index with stand-ins
  for the binaries, and the host file they write must name the pods of that very workload through
  its headless service;
- ports: containerPorts, EXPOSE, listen addresses, probes, Services, Prometheus annotations;
- paths: every absolute path a container is given lies on one of its volumes or in its image, and a
  file on a volume an init container fills is one that init container makes;
- references: ConfigMap/Secret keys, PVCs, Service hosts (`kafka-0.kafka:9092`), the Kafka quorum,
  topic names and Mongo indexes against the iot-schema crate, replicas against partitions and
  process counts;
- NetworkPolicies: every connection a pod makes is allowed, and every client label a pod carries is
  one it uses (least privilege); Pod Security "restricted" and resource requests/limits.

Then it proves it can fail: it breaks the manifests in several known ways (a flag, an env var, a
port, a mount, a label...) and each break must be reported.

usage: check_deploy_consistency.py --manifests BUILT.yaml --bin-dir target/debug
"""

from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROJECT_IMAGE_PREFIX = "iot-dataflow/"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash"}
BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")
CLUSTER_DOMAIN = "cluster.local"


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------------------
# docker/Dockerfile
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    files: dict[str, str | None] = field(default_factory=dict)  # image path -> repo source (or None)
    dirs: set[str] = field(default_factory=set)  # directories known to exist (WORKDIR, mkdir, COPY dirs)
    copied_dirs: set[str] = field(default_factory=set)  # whole folders copied from another stage
    env: dict[str, str] = field(default_factory=dict)
    expose: set[int] = field(default_factory=set)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None

    def inherit(self, parent: "Stage") -> None:
        self.files = dict(parent.files)
        self.dirs = set(parent.dirs)
        self.copied_dirs = set(parent.copied_dirs)
        self.env = dict(parent.env)
        self.expose = set(parent.expose)
        self.entrypoint = parent.entrypoint
        self.cmd = parent.cmd
        self.user = parent.user

    def has_path(self, path: str) -> bool:
        if path in self.files or path.rstrip("/") in self.dirs:
            return True
        if any(f.startswith(path.rstrip("/") + "/") for f in self.files):
            return True
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.copied_dirs)

    def find_executable(self, name: str) -> str | None:
        if "/" in name:
            return name if name in self.files else None
        for d in BIN_DIRS:
            if f"{d}/{name}" in self.files:
                return f"{d}/{name}"
        return None


@dataclass
class DockerBuild:
    stages: dict[str, Stage]
    cargo_packages: list[str]
    cargo_bins: list[str]  # --bin selections of the cargo build (empty: all bins of the packages)
    built_binaries: list[str]  # names installed out of target/release
    context_sources: list[str]  # repo paths COPY'd from the build context


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def json_or_shell(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


def parse_dockerfile(path: Path, problems: Problems) -> DockerBuild:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    cargo_packages: list[str] = []
    cargo_bins: list[str] = []
    built: list[str] = []
    context_sources: list[str] = []
    stage: Stage | None = None
    for keyword, rest in dockerfile_instructions(path.read_text()):
        if keyword == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            stage = Stage(name)
            if base in stages:
                stage.inherit(stages[base])
            else:
                stage.dirs |= {"/", "/tmp", "/etc", "/usr", "/usr/local/bin", "/usr/bin", "/bin"}
                for shell in ("/bin/sh", "/bin/bash", "/usr/bin/env"):
                    stage.files[shell] = None
            stages[name] = stage
        elif stage is None:
            continue
        elif keyword == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                if sep:
                    stage.env[key] = value
        elif keyword == "EXPOSE":
            stage.expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = json_or_shell(rest)
            stage.cmd = None
        elif keyword == "CMD":
            stage.cmd = json_or_shell(rest)
        elif keyword == "USER":
            stage.user = rest.strip()
        elif keyword == "WORKDIR":
            stage.dirs.add(rest.strip())
        elif keyword == "RUN":
            body = re.sub(r"--mount=\S+", "", rest)
            for match in re.finditer(r"mkdir -p ((?:/[^\s&;]+\s*)+)", body):
                stage.dirs |= set(match.group(1).split())
            for match in re.finditer(r"cargo build(?P<rest>[^&]*)", body):
                cargo_packages += re.findall(r"-p ([\w-]+)", match.group("rest"))
                cargo_bins += re.findall(r"--bin ([\w-]+)", match.group("rest"))
            built += re.findall(r"install [^&]*?target/release/([\w.-]+)", body)
        elif keyword == "COPY":
            tokens = shlex.split(rest)
            options = [t for t in tokens if t.startswith("--")]
            sources, dest = [t for t in tokens if not t.startswith("--")][:-1], tokens[-1]
            from_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            to_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                if source in (".", "./"):  # the whole context, for the build stage
                    continue
                target = f"{dest.rstrip('/')}/{PurePosixPath(source).name}" if to_dir else dest
                if from_stage is not None:
                    src_stage = stages.get(from_stage)
                    if from_stage == "builder" or (src_stage and source in src_stage.files):
                        stage.files[target] = None
                    else:
                        stage.copied_dirs.add(target)
                    continue
                context_sources.append(source.rstrip("/"))
                repo_path = ROOT / source
                if not repo_path.exists():
                    problems.add(f"{path.name} COPY {source}", "the source does not exist in the repository")
                    continue
                if repo_path.is_dir():
                    base = dest.rstrip("/")
                    stage.dirs.add(base)
                    for f in sorted(repo_path.rglob("*")):
                        if f.is_file():
                            stage.files[f"{base}/{f.relative_to(repo_path).as_posix()}"] = str(f.relative_to(ROOT))
                else:
                    stage.files[target] = source
    return DockerBuild(stages, list(dict.fromkeys(cargo_packages)), cargo_bins, built, context_sources)


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern decides; a `!` pattern lets a path back in."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        candidates = [pat]
        if pat.startswith("**/"):
            candidates.append(pat[3:])
        matched = False
        for cand in candidates:
            if cand == "**" or fnmatch.fnmatch(path, cand) or path.startswith(cand + "/"):
                matched = True
            elif pat.startswith("**/") and any(
                fnmatch.fnmatch("/".join(path.split("/")[i:]), cand) or ("/" + cand + "/") in ("/" + path + "/")
                for i in range(len(path.split("/")))
            ):
                matched = True
        if matched:
            included = negate
    return included


def check_docker(build: DockerBuild, metadata: dict, problems: Problems) -> dict[str, list[str]]:
    """Returns the bin targets of each workspace package."""
    packages = {p["name"]: p for p in metadata["packages"] if p["id"] in metadata["workspace_members"]}
    bins = {name: [t["name"] for t in p["targets"] if "bin" in t["kind"]] for name, p in packages.items()}
    for package in build.cargo_packages:
        if package not in packages:
            problems.add("docker/Dockerfile", f"`cargo build -p {package}`: no such workspace package")
    buildable = {b for p in build.cargo_packages for b in bins.get(p, [])}
    for binary in build.cargo_bins:
        if binary not in buildable:
            problems.add("docker/Dockerfile", f"`cargo build --bin {binary}`: no package built there has that bin target")
    if build.cargo_bins:
        buildable &= set(build.cargo_bins)
    for binary in build.built_binaries:
        if binary not in buildable:
            problems.add("docker/Dockerfile", f"installs target/release/{binary}, which no built package has as a bin target")
    # .dockerignore: what the build reads must get in; build output, caches and secrets must not.
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock"] + [
        str(Path(p["manifest_path"]).relative_to(ROOT)) for p in packages.values()
    ] + [str(Path(t["src_path"]).relative_to(ROOT)) for p in packages.values() for t in p["targets"]
         if "bin" in t["kind"] or "lib" in t["kind"]]
    for source in build.context_sources:
        repo_path = ROOT / source
        files = [f for f in repo_path.rglob("*") if f.is_file()] if repo_path.is_dir() else [repo_path]
        needed += [str(f.relative_to(ROOT)) for f in files]
    for path in needed:
        if not dockerignore_includes(patterns, path):
            problems.add(".dockerignore", f"excludes {path}, which the image build needs")
    for path in ["target/debug/dataflow", ".cache/venv/bin/python", ".stack/logs/x.log",
                 "k8s/secrets/mongo.env", "ansible/vault.yml", ".git/config", "dataflow/target/x"]:
        if dockerignore_includes(patterns, path):
            problems.add(".dockerignore", f"lets {path} into the build context")
    return bins


# ---------------------------------------------------------------------------------------------------
# The binaries: their --help, and whether they accept a command line
# ---------------------------------------------------------------------------------------------------


@dataclass
class CliSpec:
    longs: dict[str, bool] = field(default_factory=dict)  # --flag -> takes a value
    shorts: dict[str, bool] = field(default_factory=dict)
    envs: dict[str, tuple[str, bool]] = field(default_factory=dict)  # ENV -> (--flag, takes a value)


OPTION_LINE = re.compile(r"^\s{1,10}(?:-([A-Za-z0-9]),? ?)?(?:--([A-Za-z0-9][\w-]*))?(?:[ =](<[^>]+>|\[<[^>]+>\]))?")


def parse_help(text: str) -> CliSpec:
    spec = CliSpec()
    blocks: list[list[str]] = []
    for line in text.splitlines():
        match = OPTION_LINE.match(line)
        if match and (match.group(1) or match.group(2)) and re.match(r"^\s{1,10}-", line):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    for block in blocks:
        match = OPTION_LINE.match(block[0])
        assert match
        short, long, value = match.group(1), match.group(2), match.group(3)
        takes_value = value is not None
        if long:
            spec.longs[f"--{long}"] = takes_value
        if short:
            spec.shorts[f"-{short}"] = takes_value
        env = re.search(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)=", " ".join(block))
        if env and long:
            spec.envs[env.group(1)] = (f"--{long}", takes_value)
    return spec


class Binaries:
    """Runs the workspace's binaries from one folder (target/debug), with a clean environment."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self._help: dict[tuple[str, ...], CliSpec] = {}
        self.env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.path(argv[0]))] + argv[1:], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def help(self, command: tuple[str, ...]) -> CliSpec:
        if command not in self._help:
            result = self.run(list(command) + ["--help"])
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)} --help` failed: {result.stderr.strip()[:300]}")
            self._help[command] = parse_help(result.stdout)
        return self._help[command]


def subcommand_of(binary: str, argv: list[str], binaries: Binaries) -> tuple[str, ...]:
    """`dataflow count ...` -> ("dataflow", "count"): a first word that is a subcommand."""
    if argv and not argv[0].startswith("-"):
        result = binaries.run([binary, argv[0], "--help"])
        if result.returncode == 0:
            return (binary, argv[0])
    return (binary,)


TRUTHY = {"true", "1", "yes", "on", "y"}


def check_command_line(where: str, binary: str, argv: list[str], env: dict[str, str], extra_env_readers: set[str],
                       referenced: set[str], binaries: Binaries, problems: Problems) -> None:
    command = subcommand_of(binary, argv, binaries)
    rest = argv[len(command) - 1:]
    spec = binaries.help(command)
    name = " ".join(command)
    for token in rest:
        if token == "--":
            break
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in spec.longs:
                problems.add(where, f"`{name}` has no flag {flag}")
        elif re.fullmatch(r"-[A-Za-z]", token) and token not in spec.shorts:
            problems.add(where, f"`{name}` has no flag {token}")
    env_flags: list[str] = []
    given = {t.split("=", 1)[0] for t in rest if t.startswith("-")}
    for var, value in env.items():
        if var in spec.envs:
            flag, takes_value = spec.envs[var]
            if flag in given:
                continue
            if takes_value:
                env_flags += [flag, value]
            elif value.lower() in TRUTHY:
                env_flags.append(flag)
        elif var not in extra_env_readers and var not in referenced:
            problems.add(where, f"`{name}` reads no environment variable {var} (its --help lists: "
                                f"{', '.join(sorted(spec.envs)) or 'none'})")
    # clap parses (and checks the value of) every argument before it acts on --help.
    result = binaries.run(list(command) + rest + env_flags + ["--help"])
    if result.returncode != 0:
        error = next((line for line in result.stderr.splitlines() if line.strip()), "exit status %d" % result.returncode)
        problems.add(where, f"`{name}` rejects its command line {shlex.join(rest + env_flags)}: {error.strip()}")


# ---------------------------------------------------------------------------------------------------
# Manifests: workloads, effective environment, hosts
# ---------------------------------------------------------------------------------------------------


@dataclass
class Pod:
    workload: dict
    kind: str
    name: str
    namespace: str
    spec: dict
    labels: dict
    annotations: dict
    replicas: int
    indexed: bool
    hostname_prefix: str  # <prefix>-<index> is each pod's hostname (StatefulSet, Indexed Job)

    @property
    def where(self) -> str:
        return f"{self.kind}/{self.name}"

    def containers(self) -> list[tuple[dict, bool]]:
        return [(c, True) for c in self.spec.get("initContainers", [])] + [(c, False) for c in self.spec["containers"]]


def pods_of(objects: list[dict]) -> list[Pod]:
    pods = []
    for obj in objects:
        kind = obj.get("kind")
        if kind not in WORKLOAD_KINDS:
            continue
        meta = obj["metadata"]
        spec = obj["spec"]
        job_spec = spec["jobTemplate"]["spec"] if kind == "CronJob" else spec
        template = job_spec["template"]
        indexed = kind in ("Job", "CronJob") and job_spec.get("completionMode") == "Indexed"
        if kind in ("Job", "CronJob"):
            replicas = int(job_spec.get("completions", 1))
        else:
            replicas = int(spec.get("replicas", 1))
        # A CronJob's Jobs are named <cronjob>-<scheduled time>; any number stands for it.
        prefix = f"{meta['name']}-29000000" if kind == "CronJob" else meta["name"]
        pods.append(Pod(obj, kind, meta["name"], meta.get("namespace", "default"), template["spec"],
                        template.get("metadata", {}).get("labels", {}),
                        template.get("metadata", {}).get("annotations", {}), replicas, indexed, prefix))
    return pods


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name), None)


def config_value(objects: list[dict], kind: str, name: str, key: str) -> str | None:
    obj = find(objects, kind, name)
    if obj is None:
        return None
    if kind == "Secret":
        if key in obj.get("data", {}):
            return base64.b64decode(obj["data"][key]).decode()
        return obj.get("stringData", {}).get(key)
    return obj.get("data", {}).get(key)


REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def effective_env(pod: Pod, container: dict, objects: list[dict], index: int, where: str,
                  problems: Problems) -> tuple[dict[str, str], set[str]]:
    """The container's environment as the kubelet would give it, and the names used as $(NAME)."""
    env: dict[str, str] = {}
    referenced: set[str] = set()
    if pod.indexed:
        env["JOB_COMPLETION_INDEX"] = str(index)

    def expand(value: str) -> str:
        def sub(match: re.Match) -> str:
            referenced.add(match.group(1))
            if match.group(1) not in env:
                problems.add(where, f"$({match.group(1)}) is not defined before it is used")
                return match.group(0)
            return env[match.group(1)]
        return REF.sub(sub, value)

    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                obj = find(objects, kind, source[key]["name"])
                if obj is None:
                    problems.add(where, f"envFrom {kind} {source[key]['name']} does not exist")
                    continue
                for k in obj.get("data", {}):
                    env[k] = config_value(objects, kind, obj["metadata"]["name"], k) or ""
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]))
            continue
        value_from = item.get("valueFrom", {})
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in value_from:
                ref = value_from[key]
                value = config_value(objects, kind, ref["name"], ref["key"])
                if value is None:
                    problems.add(where, f"env {name}: {kind} {ref['name']} has no key {ref['key']}")
                    value = ""
                env[name] = value
        if "fieldRef" in value_from:
            field_path = value_from["fieldRef"]["fieldPath"]
            env[name] = {"metadata.namespace": pod.namespace,
                         "metadata.name": f"{pod.hostname_prefix}-{index}"}.get(field_path, "10.0.0.1")
        if "resourceFieldRef" in value_from:
            env[name] = "1"
    return env, referenced


def expand_args(values: list[str], env: dict[str, str], referenced: set[str]) -> list[str]:
    def sub(match: re.Match) -> str:
        referenced.add(match.group(1))
        return env.get(match.group(1), match.group(0))
    return [REF.sub(sub, str(v)) for v in values]


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_pods(service: dict, pods: list[Pod]) -> list[Pod]:
    selector = service["spec"].get("selector")
    if not selector:
        return []
    return [p for p in pods if p.namespace == service["metadata"].get("namespace", "default")
            and all(p.labels.get(k) == v for k, v in selector.items())]


def service_port_target(service: dict, port: int, pods: list[Pod]) -> int | None:
    """The container port that Service port `port` reaches, or None if the Service has no such port."""
    for sp in service["spec"].get("ports", []):
        if int(sp["port"]) != port:
            continue
        target = sp.get("targetPort", sp["port"])
        if isinstance(target, int):
            return target
        for pod in service_pods(service, pods):
            for c, _ in pod.containers():
                for cp in c.get("ports", []):
                    if cp.get("name") == target:
                        return int(cp["containerPort"])
        return -1
    return None


HOST_PORT = re.compile(r"(?<![\w.-])([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*):(\d{2,5})(?![\d])")


def resolve_hosts(text: str, namespace: str, objects: list[dict], pods: list[Pod], where: str,
                  problems: Problems) -> list[tuple[Pod, int]]:
    """Every in-cluster `host:port` in text -> (the pods it reaches, their container port).

    A host is `<service>` or `<pod>.<service>`, optionally followed by `.<namespace>[.svc[.cluster.local]]`;
    only hosts whose first or second DNS label is a Service of the output are considered.
    """
    services = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Service"}
    found = []
    for host, port_text in HOST_PORT.findall(text):
        port = int(port_text)
        labels = host.split(".")
        if labels[0] in services:
            svc_name, pod_name, rest = labels[0], None, labels[1:]
        elif len(labels) > 1 and labels[1] in services:
            svc_name, pod_name, rest = labels[1], labels[0], labels[2:]
        else:
            continue
        expected_suffixes = [[], [namespace], [namespace, "svc"], [namespace, "svc"] + CLUSTER_DOMAIN.split(".")]
        if rest not in expected_suffixes:
            problems.add(where, f"{host}: not a name of this namespace's Service {svc_name}")
            continue
        service = services[svc_name]
        headless = service["spec"].get("clusterIP") == "None"
        targets = service_pods(service, pods)
        if not targets:
            problems.add(where, f"{host}:{port}: Service {svc_name} selects no pod")
            continue
        if pod_name is not None:
            if not headless:
                problems.add(where, f"{host}: per-pod names need a headless Service; {svc_name} is not one")
            match = re.fullmatch(r"(.+)-(\d+)", pod_name)
            owner = next((p for p in targets if match and p.hostname_prefix == match.group(1)), None)
            if owner is None or not match or int(match.group(2)) >= owner.replicas:
                problems.add(where, f"{host}: no pod {pod_name} behind Service {svc_name}")
                continue
            if owner.kind == "StatefulSet" and owner.workload["spec"].get("serviceName") != svc_name:
                problems.add(where, f"{host}: StatefulSet {owner.name} has serviceName "
                                    f"{owner.workload['spec'].get('serviceName')}, not {svc_name}")
            if owner.kind in ("Job", "CronJob") and owner.spec.get("subdomain") != svc_name:
                problems.add(where, f"{host}: the pods of {owner.where} have subdomain "
                                    f"{owner.spec.get('subdomain')}, not {svc_name}")
            targets = [owner]
        # A headless Service's names lead straight to the pods; a ClusterIP Service maps its port.
        target_port = port if headless else service_port_target(service, port, pods)
        if target_port is None or target_port == -1:
            problems.add(where, f"{host}:{port}: Service {svc_name} has no port {port} that reaches its pods")
            continue
        for target in targets:
            ports = {int(cp["containerPort"]) for c, _ in target.containers() for cp in c.get("ports", [])}
            if target_port not in ports:
                problems.add(where, f"{host}:{port}: {target.where} has no containerPort {target_port}")
            found.append((target, target_port))
    return found


# ---------------------------------------------------------------------------------------------------
# Entrypoint scripts (run with stand-ins for the binaries)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# NetworkPolicies
# ---------------------------------------------------------------------------------------------------


def namespace_labels(objects: list[dict], namespace: str) -> dict:
    ns = find(objects, "Namespace", namespace)
    labels = dict((ns or {}).get("metadata", {}).get("labels", {}) or {})
    labels["kubernetes.io/metadata.name"] = namespace
    return labels


def ingress_allowed(source: Pod, target: Pod, port: int, objects: list[dict]) -> bool:
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"
                and o["metadata"].get("namespace", "default") == target.namespace
                and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])
                and selector_matches(o["spec"].get("podSelector", {}), target.labels)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(int(p.get("port", port)) == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_selector = peer.get("namespaceSelector")
                if ns_selector is not None:
                    if not selector_matches(ns_selector, namespace_labels(objects, source.namespace)):
                        continue
                elif source.namespace != target.namespace:
                    continue
                if "podSelector" in peer and not selector_matches(peer["podSelector"], source.labels):
                    continue
                return True
    return False


def check_least_privilege(pods: list[Pod], connections: dict[str, set[tuple[str, int]]], objects: list[dict],
                          problems: Problems) -> None:
    """A podSelector peer of an ingress rule must select only pods that use that access."""
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        targets = [p for p in pods if selector_matches(policy["spec"].get("podSelector", {}), p.labels)]
        for rule in policy["spec"].get("ingress") or []:
            rule_ports = {int(p["port"]) for p in rule.get("ports") or [] if "port" in p}
            for peer in rule.get("from") or []:
                if "namespaceSelector" in peer or "podSelector" not in peer:
                    continue
                for source in pods:
                    if not selector_matches(peer["podSelector"], source.labels):
                        continue
                    for target in targets:
                        if target is source:
                            continue
                        used = {port for name, port in connections.get(source.where, set()) if name == target.where}
                        if not used or (rule_ports and not used & rule_ports):
                            problems.add(f"NetworkPolicy/{policy['metadata']['name']}",
                                         f"lets {source.where} reach {target.where} on {sorted(rule_ports) or 'any port'}, "
                                         f"but it never connects there (remove the label that grants it)")


# ---------------------------------------------------------------------------------------------------
# The iot-schema crate: the names the pipeline is built on
# ---------------------------------------------------------------------------------------------------


def schema_constants() -> dict[str, str]:
    text = (ROOT / "schema" / "src" / "lib.rs").read_text()
    consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]*)";', text))
    write = (ROOT / "schema" / "src" / "write.rs").read_text()
    consts.update(re.findall(r'pub const ([A-Z_]+): &str = "([^"]*)";', write))
    for name in ("INDEXED_FIELDS", "CHANGE_LOG_INDEXED_FIELDS"):
        match = re.search(rf"\b{name}: &\[&str\] = &\[([^\]]*)\]", write)
        fields = []
        for item in (match.group(1).split(",") if match else []):
            item = item.strip()
            if item.startswith('"'):
                fields.append(item.strip('"'))
            elif item:
                fields.append(consts.get(item.split("::")[-1], f"<unknown {item}>"))
        consts[name] = ",".join(fields)
    return consts


# ---------------------------------------------------------------------------------------------------
# The checks over the built manifests
# ---------------------------------------------------------------------------------------------------


@dataclass
class Context:
    build: DockerBuild
    bins: dict[str, list[str]]
    binaries: Binaries
    kustomization: dict
    schema: dict[str, str]
    workdir: Path
    binaries_available: set[str] = field(default_factory=set)


def image_target(image: str) -> str | None:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: name.rfind(":")]
    return name[len(PROJECT_IMAGE_PREFIX):] if name.startswith(PROJECT_IMAGE_PREFIX) else None


def volume_mounts(pod: Pod, container: dict) -> list[tuple[str, dict, bool]]:
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    for claim in pod.workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "persistentVolumeClaim": {}}
    return [(m["mountPath"].rstrip("/") or "/", volumes.get(m["name"], {}), bool(m.get("readOnly")))
            for m in container.get("volumeMounts", [])]


def check_path(where: str, path: str, pod: Pod, container: dict, stage: Stage, objects: list[dict],
               problems: Problems) -> None:
    path = path.rstrip("/")
    mounts = sorted(volume_mounts(pod, container), key=lambda m: -len(m[0]))
    mount = next((m for m in mounts if path == m[0] or path.startswith(m[0] + "/")), None)
    if mount is None:
        if not stage.has_path(path):
            problems.add(where, f"{path} is on no volume of the container and not in image {stage.name}")
        return
    mount_path, volume, _ = mount
    relative = path[len(mount_path):].lstrip("/")
    if not relative:
        return
    if "configMap" in volume or "secret" in volume:
        kind, name = ("ConfigMap", volume["configMap"]["name"]) if "configMap" in volume else ("Secret", volume["secret"]["secretName"])
        if config_value(objects, kind, name, relative.split("/")[0]) is None:
            problems.add(where, f"{path}: {kind} {name} (mounted at {mount_path}) has no key {relative}")
    elif "emptyDir" in volume:
        # An empty volume: the file must be made by an init container that mounts it.
        makers = []
        for init in pod.spec.get("initContainers", []):
            if any(m["name"] == volume.get("name") for m in init.get("volumeMounts", [])):
                words = " ".join(init.get("command", []) + init.get("args", []))
                for _, v, _ in volume_mounts(pod, init):
                    if "configMap" in v:
                        cm = find(objects, "ConfigMap", v["configMap"]["name"])
                        words += " " + " ".join((cm or {}).get("data", {}).values())
                makers.append(words)
        name = PurePosixPath(relative).name
        if not any(re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", w) for w in makers) and not any(
                m[0] == mount_path and not m[2] for m in mounts):
            problems.add(where, f"{path}: no init container makes {name} on the empty volume at {mount_path}")


def check_pod_security(pod: Pod, problems: Problems) -> None:
    pod_sc = pod.spec.get("securityContext", {})
    for container, _ in pod.containers():
        where = f"{pod.where} container {container['name']}"
        sc = container.get("securityContext", {})
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            problems.add(where, "runAsNonRoot is not true (Pod Security restricted)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.add(where, "no RuntimeDefault seccompProfile (Pod Security restricted)")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.add(where, "allowPrivilegeEscalation is not false (Pod Security restricted)")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.add(where, "capabilities do not drop ALL (Pod Security restricted)")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.add(where, f"no {resource} {kind[:-1] if kind == 'limits' else 'request'}")


def check_manifests(objects: list[dict], ctx: Context) -> tuple[Problems, int]:
    problems = Problems()
    pods = pods_of(objects)
    checked_commands = 0
    connections: dict[str, set[tuple[str, int]]] = {}
    stages = ctx.build.stages
    used_targets: set[str] = set()
    used_ports: dict[str, set[int]] = {}

    for pod in pods:
        check_pod_security(pod, problems)
        pod_connections = connections.setdefault(pod.where, set())
        indexes = range(pod.replicas) if (pod.indexed or pod.kind == "StatefulSet") else range(1)
        for container, is_init in pod.containers():
            where = f"{pod.where} {'init' if is_init else ''}container {container['name']}".replace("  ", " ")
            target = image_target(container["image"])
            env0, referenced0 = effective_env(pod, container, objects, 0, where, problems)
            texts = list(env0.values()) + expand_args(container.get("command", []) + container.get("args", []), env0, set())
            for target_pod, port in resolve_hosts("\n".join(texts), pod.namespace, objects, pods, where, problems):
                pod_connections.add((target_pod.where, port))
            if target is None:
                continue
            # --- a project image ---
            used_targets.add(target)
            stage = stages.get(target)
            if stage is None:
                problems.add(where, f"image {container['image']}: docker/Dockerfile has no target {target}")
                continue
            if stage.user is None or not stage.user.split(":")[0].isdigit() or stage.user.split(":")[0] == "0":
                problems.add(f"docker/Dockerfile target {target}", f"USER {stage.user} is not a numeric non-root user")
            run_as = container.get("securityContext", {}).get("runAsUser", pod.spec.get("securityContext", {}).get("runAsUser"))
            if run_as is not None and stage.user and str(run_as) != stage.user.split(":")[0]:
                problems.add(where, f"runAsUser {run_as} differs from the image's USER {stage.user}")
            if "command" in container:
                argv = list(container["command"]) + list(container.get("args", []))
            else:
                argv = list(stage.entrypoint or []) + list(container.get("args", stage.cmd or []))
            if not argv:
                problems.add(where, "runs nothing: no command and no ENTRYPOINT")
                continue
            ports = {int(p["containerPort"]) for p in container.get("ports", [])}
            used_ports.setdefault(target, set()).update(ports)
            for port in ports - stage.expose:
                problems.add(where, f"containerPort {port} is not EXPOSEd by image {target} (EXPOSE {sorted(stage.expose)})")
            image_bins = {PurePosixPath(p).name for p, src in stage.files.items()
                          if src is None and any(p == f"{d}/{PurePosixPath(p).name}" for d in ("/usr/local/bin",))}
            for index in indexes:
                env, referenced = effective_env(pod, container, objects, index, where, Problems()) if index else (env0, referenced0)
                env = {**stage.env, **env}
                full = expand_args(argv, env, referenced)
                for value in list(env.values()) + full:
                    for token in re.split(r"[\s=]", value):
                        if token.startswith("/") and not token.startswith("//") and index == 0:
                            if token in SHELLS or (len(full) > 2 and full[0] in SHELLS and token == full[0]):
                                continue
                            check_path(where, token, pod, container, stage, objects, problems)
                        listen = re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", token)
                        if listen and int(listen.group(1)) not in ports and index == 0 and not is_init:
                            problems.add(where, f"listens on {token} but declares no containerPort {listen.group(1)}")
                if full[0] in SHELLS and len(full) >= 3 and full[1] == "-c":
                    if index == 0:
                        for word in re.findall(r"(?:^|&&|\|\||;|\|)\s*([\w./-]+)", full[2]):
                            if stage.find_executable(word) is None and word not in ("cut", "echo", "cat", "test", "exec", "set"):
                                problems.add(where, f"the shell command runs {word}, which image {target} does not have")
                    continue
                executable = stage.find_executable(full[0])
                if executable is None:
                    problems.add(where, f"runs {full[0]}, which is not in image {target}")
                    break
                source = stage.files.get(executable)
                binary_name = PurePosixPath(executable).name
                extra_readers: set[str] = set()
                hostfile_lines: list[str] = []
                if source is not None:  # a script from the repository in front of a binary
                    script = ROOT / source
                    hostname = f"{pod.hostname_prefix}-{index}"
                    rc, stderr, recorded, run_env = run_entrypoint_script(script, full[1:], env, image_bins, hostname, ctx.workdir)
                    if rc != 0 or recorded is None:
                        problems.add(where, f"{source} fails for process {index}: {stderr.strip().splitlines()[-1] if stderr.strip() else rc}")
                        break
                    extra_readers = script_env_names(script)
                    binary_name, full = recorded[0], recorded
                    hostfile = Path(run_env["DATAFLOW_HOSTFILE"])
                    hostfile_lines = [line for line in hostfile.read_text().splitlines()
                                      if line.strip() and not line.startswith("#")] if hostfile.exists() else []
                    default_hostfile = re.search(r"DATAFLOW_HOSTFILE:-([^}]+)\}", script.read_text())
                    if default_hostfile and "DATAFLOW_HOSTFILE" not in env and index == 0:
                        directory = str(PurePosixPath(default_hostfile.group(1)).parent)
                        writable = any((directory == m or directory.startswith(m + "/")) and not ro
                                       for m, _, ro in volume_mounts(pod, container))
                        read_only_root = container.get("securityContext", {}).get("readOnlyRootFilesystem")
                        if read_only_root and not writable:
                            problems.add(where, f"{source} writes its host file in {directory}, which is read-only here")
                    check_cluster(pod, container, env, index, hostfile_lines, objects, pods, where, problems, pod_connections)
                if binary_name not in ctx.binaries_available:
                    problems.add(where, f"{binary_name} is not a binary of the workspace")
                    break
                if index == 0:
                    check_command_line(where, binary_name, full[1:], env, extra_readers, referenced,
                                       ctx.binaries, problems)
                    checked_commands += 1
            # probes and Prometheus annotations name real ports
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                for kind in ("httpGet", "tcpSocket"):
                    if kind in probe:
                        port = probe[kind]["port"]
                        names = {p.get("name") for p in container.get("ports", [])}
                        if (isinstance(port, int) and port not in ports) or (isinstance(port, str) and port not in names):
                            problems.add(where, f"{probe_name} port {port} is not a port of the container")
                        if kind == "httpGet":
                            check_route_exists(where, target, probe["httpGet"]["path"], ctx, problems)
        if pod.annotations.get("prometheus.io/scrape") == "true":
            port = int(pod.annotations.get("prometheus.io/port", "0"))
            all_ports = {int(p["containerPort"]) for c, _ in pod.containers() for p in c.get("ports", [])}
            if port not in all_ports:
                problems.add(pod.where, f"prometheus.io/port {port} is not a containerPort")
            images = {image_target(c["image"]) for c, init in pod.containers() if not init} - {None}
            for target in images:
                check_route_exists(pod.where, target, pod.annotations.get("prometheus.io/path", "/metrics"), ctx, problems)

    for target, stage in stages.items():
        if target in used_ports and stage.expose - used_ports[target]:
            problems.add(f"docker/Dockerfile target {target}",
                         f"EXPOSEs {sorted(stage.expose - used_ports[target])}, which no container uses")
    check_images(objects, used_targets, ctx, problems)
    check_services(objects, pods, problems)
    check_pipeline(objects, pods, ctx, problems)
    for pod in pods:
        for target_where, port in connections.get(pod.where, set()):
            target = next(p for p in pods if p.where == target_where)
            if target is not pod and not ingress_allowed(pod, target, port, objects):
                problems.add(pod.where, f"connects to {target.where}:{port}, which its NetworkPolicies do not allow")
    check_least_privilege(pods, connections, objects, problems)
    return problems, checked_commands


def check_route_exists(where: str, target: str, route: str, ctx: Context, problems: Problems) -> None:
    crates = {"infer-service": "infer_service", "ingest": "ingest", "dataflow": "dataflow"}
    crate = ROOT / crates.get(target, target) / "src"
    # HTTP paths shared by a service and its clients are defined once, in schema (`iot_schema::infer`).
    sources = [*crate.rglob("*.rs"), *(ROOT / "schema" / "src").rglob("*.rs")]
    if not any(f'"{route}"' in f.read_text() for f in sources):
        problems.add(where, f"HTTP path {route} appears in no route of {crate.relative_to(ROOT)} or schema/src")


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


def check_images(objects: list[dict], used: set[str], ctx: Context, problems: Problems) -> None:
    declared = {i["name"] for i in ctx.kustomization.get("images", [])}
    wanted = {PROJECT_IMAGE_PREFIX + t for t in used}
    for name in sorted(wanted - declared):
        problems.add("k8s/kustomization.yaml", f"images: has no entry for {name}, so its registry and tag cannot be set")
    for name in sorted(declared - wanted):
        problems.add("k8s/kustomization.yaml", f"images: entry {name} is used by no manifest")
    finals = {n for n, s in ctx.build.stages.items() if s.entrypoint or s.cmd}
    script = (ROOT / "docker" / "build-images").read_text()
    listed = set(re.search(r"IMAGES=\(([^)]*)\)", script).group(1).split())
    if listed != finals:
        problems.add("docker/build-images", f"builds {sorted(listed)}, but docker/Dockerfile's image targets are {sorted(finals)}")
    for target in sorted(used - finals):
        problems.add("docker/Dockerfile", f"target {target} is used as an image but has no ENTRYPOINT or CMD")


def check_services(objects: list[dict], pods: list[Pod], problems: Problems) -> None:
    for obj in objects:
        kind, name = obj.get("kind"), obj["metadata"]["name"]
        if kind == "Service":
            selected = service_pods(obj, pods)
            if obj["spec"].get("selector") and not selected:
                problems.add(f"Service/{name}", "selects no pod")
            for sp in obj["spec"].get("ports", []):
                if selected and service_port_target(obj, int(sp["port"]), pods) in (None, -1):
                    problems.add(f"Service/{name}", f"targetPort {sp.get('targetPort')} is no port of its pods")
        elif kind == "StatefulSet":
            service = find(objects, "Service", obj["spec"].get("serviceName", ""))
            if service is None or service["spec"].get("clusterIP") != "None":
                problems.add(f"StatefulSet/{name}", f"serviceName {obj['spec'].get('serviceName')} is not a headless Service")
        elif kind == "PodDisruptionBudget":
            if not any(selector_matches(obj["spec"]["selector"], p.labels) for p in pods):
                problems.add(f"PodDisruptionBudget/{name}", "selects no pod")
        elif kind == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            target = find(objects, ref["kind"], ref["name"])
            if target is None:
                problems.add(f"HorizontalPodAutoscaler/{name}", f"scales {ref['kind']}/{ref['name']}, which does not exist")
            elif "replicas" in target["spec"]:
                problems.add(f"{ref['kind']}/{ref['name']}", "sets replicas although an autoscaler owns the count")
        for pod in [p for p in pods if p.workload is obj]:
            for volume in pod.spec.get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim and find(objects, "PersistentVolumeClaim", claim) is None:
                    problems.add(pod.where, f"volume {volume['name']}: no PersistentVolumeClaim {claim}")
                for kind, key, ref in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                    if key in volume and find(objects, kind, volume[key][ref]) is None:
                        problems.add(pod.where, f"volume {volume['name']}: no {kind} {volume[key][ref]}")


def check_pipeline(objects: list[dict], pods: list[Pod], ctx: Context, problems: Problems) -> None:
    schema = ctx.schema
    config = find(objects, "ConfigMap", next((o["metadata"]["name"] for o in objects if o.get("kind") == "ConfigMap"
                                             and o["metadata"]["name"].startswith("pipeline-config")), ""))
    if config is None:
        problems.add("k8s", "no ConfigMap pipeline-config")
        return
    data = config["data"]
    for key, const in (("kafka-topic", "TOPIC_IMAGES"), ("kafka-dlq-topic", "TOPIC_DEAD_LETTERS")):
        if data.get(key) != schema.get(const):
            problems.add("k8s/config/pipeline.env", f"{key}={data.get(key)} but iot_schema::{const} is {schema.get(const)}")
    kafka = find(objects, "StatefulSet", "kafka")
    if kafka:
        replicas = int(kafka["spec"]["replicas"])
        brokers = [b for b in data.get("kafka-brokers", "").split(",") if b]
        if len(brokers) != replicas:
            problems.add("k8s/config/pipeline.env", f"kafka-brokers lists {len(brokers)} brokers; StatefulSet kafka runs {replicas}")
        env = {e["name"]: e.get("value") for e in kafka["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        voters = [v.split("@")[0] for v in (env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or "").split(",") if v]
        if voters != [str(i) for i in range(replicas)]:
            problems.add("StatefulSet/kafka", f"controller quorum voters {voters} do not match its {replicas} replicas")
        if int(data.get("kafka-replication-factor", "0")) > replicas:
            problems.add("k8s/config/pipeline.env", "kafka-replication-factor exceeds the number of brokers")
    partitions = int(data.get("kafka-partitions", "0"))
    for pod in pods:
        commands = {c.get("command", [""])[0] for c, _ in pod.containers()}
        if commands & {"db-consumer", "infer-consumer"} and pod.replicas > partitions:
            problems.add(pod.where, f"{pod.replicas} replicas but only {partitions} partitions: the rest would idle")
    init = find(objects, "ConfigMap", next((o["metadata"]["name"] for o in objects if o.get("kind") == "ConfigMap"
                                           and o["metadata"]["name"].startswith("mongo-init")), ""))
    script = "\n".join((init or {}).get("data", {}).values())
    indexed = re.findall(r"\.(\w+)\.createIndex\(\{\s*(\w+):", script)
    records = schema.get("DEFAULT_COLLECTION", "")
    for collection, const in ((records, "INDEXED_FIELDS"),
                              (records + schema.get("CHANGE_LOG_SUFFIX", ""), "CHANGE_LOG_INDEXED_FIELDS")):
        fields = [field for on, field in indexed if on == collection]
        if ",".join(fields) != schema.get(const):
            problems.add("k8s/mongo/init-iot.js", f"creates indexes on {collection} {fields}; iot_schema::write::{const} "
                                                  f"is {schema.get(const)}")
    if f'getSiblingDB("{schema.get("DEFAULT_DB")}")' not in script or f".{schema.get('DEFAULT_COLLECTION')}." not in script:
        problems.add("k8s/mongo/init-iot.js", f"does not index {schema.get('DEFAULT_DB')}.{schema.get('DEFAULT_COLLECTION')}")
    check_model_sources(objects, problems)
    check_ansible_waits(objects, problems)


def check_ansible_waits(objects: list[dict], problems: Problems) -> None:
    """The deploy role waits on workloads by name: they must be in the manifests."""
    tasks = ROOT / "ansible" / "roles" / "deploy_pipeline" / "tasks" / "main.yml"
    kinds = {"deployment": "Deployment", "statefulset": "StatefulSet", "job": "Job", "cronjob": "CronJob"}
    for kind, name in re.findall(r"\b(deployment|statefulset|job|cronjob)/([a-z0-9-]+)", tasks.read_text()):
        if find(objects, kinds[kind], name) is None:
            problems.add(str(tasks.relative_to(ROOT)), f"waits for {kind}/{name}, which k8s/ does not define")


def check_model_sources(objects: list[dict], problems: Problems) -> None:
    sources = next((o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("model-sources")), None)
    if sources is None:
        return
    entries = {}
    for text in sources["data"].values():
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]) or not parts[2].startswith("https://"):
                problems.add("k8s/infer-service/model-sources.txt", f"not '<sha256> <file> <https url>': {line}")
                continue
            entries[parts[1]] = parts[0]
    download = ROOT / "scripts" / "download-models"
    if download.exists():
        text = download.read_text()
        for name, sha in entries.items():
            if name in text and sha not in text:
                problems.add("k8s/infer-service/model-sources.txt",
                             f"{name}: sha256 {sha[:12]}... differs from the one scripts/download-models checks")


# ---------------------------------------------------------------------------------------------------
# Mutations: the check must catch each of these breaks
# ---------------------------------------------------------------------------------------------------


def container_of(objects: list[dict], kind: str, name: str, container: str) -> dict:
    obj = find(objects, kind, name)
    if obj is None:
        raise LookupError(f"{kind}/{name}")
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    for c in spec["template"]["spec"]["containers"]:
        if c["name"] == container:
            return c
    raise LookupError(f"{kind}/{name} container {container}")


def env_item(container: dict, name: str) -> dict:
    for item in container.get("env", []):
        if item["name"] == name:
            return item
    raise LookupError(f"env {name}")


def mutate_flag(objs):
    c = container_of(objs, "StatefulSet", "dataflow", "dataflow")
    i = next(i for i, a in enumerate(c["args"]) if a.startswith("--") and a != "--follow")
    c["args"][i] += "-typo"


def mutate_flag_value(objs):
    c = container_of(objs, "Job", "producer", "producer")
    c["args"][c["args"].index("--count") + 1] = "many"


def mutate_env_name(objs):
    env_item(container_of(objs, "Deployment", "infer-service", "infer-service"), "IOT_LISTEN")["name"] = "IOT_LISTEN_ADDR"


def mutate_env_value(objs):
    env_item(container_of(objs, "Deployment", "infer-service", "infer-service"), "IOT_INTRA_THREADS")["value"] = "two"


def mutate_port(objs):
    container_of(objs, "Deployment", "infer-service", "infer-service")["ports"][0]["containerPort"] = 5001


def mutate_mount(objs):
    c = container_of(objs, "StatefulSet", "dataflow", "dataflow")
    next(m for m in c["volumeMounts"] if m["name"] == "output")["mountPath"] = "/data/out"


def mutate_model_file(objs):
    env_item(container_of(objs, "Deployment", "infer-service", "infer-service"), "IOT_MODEL")["value"] = "/models/resnet50.onnx"


def mutate_missing_label(objs):
    obj = find(objs, "Deployment", "db-consumer")
    del obj["spec"]["template"]["metadata"]["labels"]["iot-dataflow/kafka-client"]


def mutate_extra_label(objs):
    find(objs, "Job", "producer")["spec"]["template"]["metadata"]["labels"]["iot-dataflow/mongo-client"] = "true"


def mutate_topic(objs):
    next(o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("pipeline-config"))[
        "data"]["kafka-topic"] = "iot-images"


def mutate_replicas(objs):
    find(objs, "StatefulSet", "dataflow")["spec"]["replicas"] = 4


def mutate_subdomain(objs):
    find(objs, "CronJob", "dataflow-batch")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["subdomain"] = "dataflow"


def mutate_image(objs):
    container_of(objs, "Deployment", "db-consumer", "db-consumer")["image"] = "iot-dataflow/ingestion:0.1.0"


def mutate_change_log_index(objs):
    init = next(o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("mongo-init"))
    for key, script in init["data"].items():
        init["data"][key] = script.replace("inferences_changes.createIndex", "inferences.createIndex")


MUTATIONS = [
    ("a dataflow flag renamed", mutate_flag),
    ("a producer flag given a bad value", mutate_flag_value),
    ("an infer_service env var renamed", mutate_env_name),
    ("an infer_service env var given a bad value", mutate_env_value),
    ("the infer-service containerPort changed", mutate_port),
    ("the dataflow output volume moved", mutate_mount),
    ("the model file renamed", mutate_model_file),
    ("db-consumer's kafka-client label removed", mutate_missing_label),
    ("a mongo-client label given to the producer", mutate_extra_label),
    ("the topic renamed", mutate_topic),
    ("dataflow replicas changed without its process count", mutate_replicas),
    ("the batch job's subdomain changed", mutate_subdomain),
    ("an image name that no Dockerfile target builds", mutate_image),
    ("the change log's index put on the records", mutate_change_log_index),
]


def run_mutations(objects: list[dict], baseline: Problems, ctx: Context) -> Problems:
    problems = Problems()
    base = set(baseline.items)
    caught = 0
    for description, mutate in MUTATIONS:
        mutated = copy.deepcopy(objects)
        try:
            mutate(mutated)
        except (LookupError, StopIteration, KeyError, ValueError) as err:
            problems.add("mutation check", f"{description}: cannot apply ({err}); update MUTATIONS with the manifests")
            continue
        found, _ = check_manifests(mutated, ctx)
        new = [p for p in found.items if p not in base]
        if new:
            caught += 1
            print(f"  caught: {description}\n          -> {new[0]}")
        else:
            problems.add("mutation check", f"{description}: NOT caught; the consistency check cannot fail for it")
    print(f"mutations caught: {caught}/{len(MUTATIONS)}")
    return problems


# ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", required=True, type=Path, help="kustomize build output (k8s/)")
    parser.add_argument("--bin-dir", required=True, type=Path, help="folder of the workspace binaries")
    parser.add_argument("--kustomization", default=ROOT / "k8s" / "kustomization.yaml", type=Path)
    parser.add_argument("--no-mutations", action="store_true", help="skip the proof that the check can fail")
    options = parser.parse_args()

    problems = Problems()
    build = parse_dockerfile(DOCKERFILE, problems)
    metadata = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                                         cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    bins = check_docker(build, metadata, problems)
    objects = [d for d in yaml.safe_load_all(options.manifests.read_text()) if d]
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        ctx = Context(build, bins, Binaries(options.bin_dir), yaml.safe_load(options.kustomization.read_text()),
                      schema_constants(), Path(tmp))
        ctx.binaries_available = {b for names in bins.values() for b in names if (options.bin_dir / b).exists()}
        shipped = {p.rsplit("/", 1)[-1] for s in build.stages.values() for p, src in s.files.items()
                   if src is None and p.startswith("/usr/local/bin/")}
        for name in sorted(shipped - ctx.binaries_available):
            problems.add(str(options.bin_dir), f"no binary {name} (build it: cargo build --bins)")
        found, commands = check_manifests(objects, ctx)
        problems.items += found.items
        print(f"checked {commands} command lines of {len(pods_of(objects))} workloads against the binaries' --help")
        if not options.no_mutations and not found.items:
            problems.items += run_mutations(objects, found, ctx).items
    if problems:
        print(f"\n{len(problems)} consistency problem(s):")
        for item in problems.items:
            print(f"  - {item}")
        return 1
    print("consistency: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
