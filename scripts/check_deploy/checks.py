"""The checks over the built manifests: each workload's containers against their images and
binaries, paths, ports, probes, Services, and the connections between pods."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from check_deploy.binaries import Binaries, check_command_line
from check_deploy.common import ROOT, SHELLS, Problems
from check_deploy.dockerfile import DockerBuild, Stage, check_images, image_target
from check_deploy.entrypoint import check_cluster, run_entrypoint_script, script_env_names
from check_deploy.manifests import (
    Pod,
    config_value,
    effective_env,
    expand_args,
    find,
    pods_of,
    resolve_hosts,
    selector_matches,
    service_port_target,
    service_pods,
    volume_mounts,
)
from check_deploy.network import check_least_privilege, ingress_allowed
from check_deploy.pipeline import check_pipeline


@dataclass
class Context:
    build: DockerBuild
    bins: dict[str, list[str]]
    binaries: Binaries
    kustomization: dict
    contract: dict  # the constants `contract` printed (check_deploy.contract)
    workdir: Path
    binaries_available: set[str] = field(default_factory=set)


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


@dataclass
class Walk:
    """What one pass over the manifests gathers on its way, for the checks across workloads."""

    objects: list[dict]
    ctx: Context
    pods: list[Pod]
    problems: Problems = field(default_factory=Problems)
    checked_commands: int = 0
    connections: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # pod -> (pod, port) it reaches
    used_targets: set[str] = field(default_factory=set)
    used_ports: dict[str, set[int]] = field(default_factory=dict)


def check_manifests(objects: list[dict], ctx: Context) -> tuple[Problems, int]:
    walk = Walk(objects, ctx, pods_of(objects))
    problems, pods = walk.problems, walk.pods
    for pod in pods:
        check_pod(walk, pod)

    for target, stage in ctx.build.stages.items():
        if target in walk.used_ports and stage.expose - walk.used_ports[target]:
            problems.add(f"docker/Dockerfile target {target}",
                         f"EXPOSEs {sorted(stage.expose - walk.used_ports[target])}, which no container uses")
    check_images(objects, walk.used_targets, ctx, problems)
    check_services(objects, pods, problems)
    check_dashboards(objects, ctx, problems)
    check_pipeline(objects, pods, ctx, problems)
    for pod in pods:
        for target_where, port in walk.connections.get(pod.where, set()):
            target = next(p for p in pods if p.where == target_where)
            if target is not pod and not ingress_allowed(pod, target, port, objects):
                problems.add(pod.where, f"connects to {target.where}:{port}, which its NetworkPolicies do not allow")
    check_least_privilege(pods, walk.connections, objects, problems)
    return problems, walk.checked_commands


def check_pod(walk: Walk, pod: Pod) -> None:
    check_pod_security(pod, walk.problems)
    walk.connections.setdefault(pod.where, set())
    for container, is_init in pod.containers():
        check_container(walk, pod, container, is_init)
    if pod.annotations.get("prometheus.io/scrape") == "true":
        port = int(pod.annotations.get("prometheus.io/port", "0"))
        all_ports = {int(p["containerPort"]) for c, _ in pod.containers() for p in c.get("ports", [])}
        if port not in all_ports:
            walk.problems.add(pod.where, f"prometheus.io/port {port} is not a containerPort")
        images = {image_target(c["image"]) for c, init in pod.containers() if not init} - {None}
        for target in images:
            check_route_exists(pod.where, target, pod.annotations.get("prometheus.io/path", "/metrics"), walk.ctx,
                               walk.problems)


def check_container(walk: Walk, pod: Pod, container: dict, is_init: bool) -> None:
    """The hosts it reaches; then, for a project image, the image, its command line and its probes."""
    problems = walk.problems
    where = f"{pod.where} {'init' if is_init else ''}container {container['name']}".replace("  ", " ")
    target = image_target(container["image"])
    env0, referenced0 = effective_env(pod, container, walk.objects, 0, where, problems)
    texts = list(env0.values()) + expand_args(container.get("command", []) + container.get("args", []), env0, set())
    for target_pod, port in resolve_hosts("\n".join(texts), pod.namespace, walk.objects, walk.pods, where, problems):
        walk.connections[pod.where].add((target_pod.where, port))
    if target is None:
        return
    walk.used_targets.add(target)
    stage = walk.ctx.build.stages.get(target)
    if stage is None:
        problems.add(where, f"image {container['image']}: docker/Dockerfile has no target {target}")
        return
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
        return
    ports = {int(p["containerPort"]) for p in container.get("ports", [])}
    walk.used_ports.setdefault(target, set()).update(ports)
    for port in ports - stage.expose:
        problems.add(where, f"containerPort {port} is not EXPOSEd by image {target} (EXPOSE {sorted(stage.expose)})")
    process = Process(pod, container, is_init, where, target, stage, argv, ports)
    # Every process of a StatefulSet or an Indexed Job gets its own environment (index, pod name).
    indexes = range(pod.replicas) if (pod.indexed or pod.kind == "StatefulSet") else range(1)
    for index in indexes:
        env, referenced = effective_env(pod, container, walk.objects, index, where, Problems()) if index else (env0, referenced0)
        if not check_process(walk, process, index, env, referenced):
            break
    check_probes(walk, process)


@dataclass
class Process:
    """One container of a project image, with what its checks share."""

    pod: Pod
    container: dict
    is_init: bool
    where: str
    target: str
    stage: Stage
    argv: list[str]
    ports: set[int]

    @property
    def image_binaries(self) -> set[str]:
        return {PurePosixPath(p).name for p, src in self.stage.files.items()
                if src is None and any(p == f"{d}/{PurePosixPath(p).name}" for d in ("/usr/local/bin",))}


def check_process(walk: Walk, process: Process, index: int, env: dict[str, str], referenced: set[str]) -> bool:
    """Process `index` of a container: its paths, listen addresses and command line. False: stop at
    this process (the others would only repeat the problem)."""
    problems, where, stage, target = walk.problems, process.where, process.stage, process.target
    env = {**stage.env, **env}
    full = expand_args(process.argv, env, referenced)
    for value in list(env.values()) + full:
        for token in re.split(r"[\s=]", value):
            if token.startswith("/") and not token.startswith("//") and index == 0:
                if token in SHELLS or (len(full) > 2 and full[0] in SHELLS and token == full[0]):
                    continue
                check_path(where, token, process.pod, process.container, stage, walk.objects, problems)
            listen = re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", token)
            if listen and int(listen.group(1)) not in process.ports and index == 0 and not process.is_init:
                problems.add(where, f"listens on {token} but declares no containerPort {listen.group(1)}")
    if full[0] in SHELLS and len(full) >= 3 and full[1] == "-c":
        if index == 0:
            for word in re.findall(r"(?:^|&&|\|\||;|\|)\s*([\w./-]+)", full[2]):
                if stage.find_executable(word) is None and word not in ("cut", "echo", "cat", "test", "exec", "set"):
                    problems.add(where, f"the shell command runs {word}, which image {target} does not have")
        return True
    executable = stage.find_executable(full[0])
    if executable is None:
        problems.add(where, f"runs {full[0]}, which is not in image {target}")
        return False
    source = stage.files.get(executable)
    binary_name = PurePosixPath(executable).name
    extra_readers: set[str] = set()
    if source is not None:  # a script from the repository in front of a binary
        recorded = check_wrapper_script(walk, process, index, env, full, source)
        if recorded is None:
            return False
        extra_readers = script_env_names(ROOT / source)
        binary_name, full = recorded[0], recorded
    if binary_name not in walk.ctx.binaries_available:
        problems.add(where, f"{binary_name} is not a binary of the workspace")
        return False
    if index == 0:
        check_command_line(where, binary_name, full[1:], env, extra_readers, referenced, walk.ctx.binaries, problems)
        walk.checked_commands += 1
    return True


def check_wrapper_script(walk: Walk, process: Process, index: int, env: dict[str, str], full: list[str],
                         source: str) -> list[str] | None:
    """Runs the entrypoint script with stand-ins and checks the host file it writes; returns the
    command line it exec'd, or None when it failed."""
    problems, where, pod, container = walk.problems, process.where, process.pod, process.container
    script = ROOT / source
    hostname = f"{pod.hostname_prefix}-{index}"
    rc, stderr, recorded, run_env = run_entrypoint_script(script, full[1:], env, process.image_binaries, hostname,
                                                          walk.ctx.workdir)
    if rc != 0 or recorded is None:
        problems.add(where, f"{source} fails for process {index}: {stderr.strip().splitlines()[-1] if stderr.strip() else rc}")
        return None
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
    check_cluster(pod, container, env, index, hostfile_lines, walk.objects, walk.pods, where, problems,
                  walk.connections[pod.where])
    return recorded


def check_probes(walk: Walk, process: Process) -> None:
    """Probes name real ports, and their HTTP paths are served by the image."""
    container = process.container
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if not probe:
            continue
        for kind in ("httpGet", "tcpSocket"):
            if kind in probe:
                port = probe[kind]["port"]
                names = {p.get("name") for p in container.get("ports", [])}
                if (isinstance(port, int) and port not in process.ports) or (isinstance(port, str) and port not in names):
                    walk.problems.add(process.where, f"{probe_name} port {port} is not a port of the container")
                if kind == "httpGet":
                    check_route_exists(process.where, process.target, probe["httpGet"]["path"], walk.ctx, walk.problems)


def check_route_exists(where: str, target: str, route: str, ctx: Context, problems: Problems) -> None:
    # The routes each binary serves come from the Rust constants (iot_schema::infer), through `contract`.
    stage = ctx.build.stages.get(target)
    binaries = sorted(PurePosixPath(p).name for p, src in (stage.files.items() if stage else [])
                      if src is None and p.startswith("/usr/local/bin/"))
    routes = ctx.contract["HTTP_ROUTES"]
    if not any(route in routes.get(binary, []) for binary in binaries):
        problems.add(where, f"HTTP path {route} is served by no binary of image {target} ({', '.join(binaries) or 'none'}; "
                            f"see `contract` in schema/src/bin)")


def check_dashboards(objects: list[dict], ctx: Context, problems: Problems) -> None:
    """Grafana dashboards (ConfigMaps labelled grafana_dashboard) are JSON whose queries name only
    metrics the follower exports (`DATAFLOW_METRICS` from `contract`)."""
    exported = set(ctx.contract["DATAFLOW_METRICS"])
    for obj in objects:
        labels = obj.get("metadata", {}).get("labels", {})
        if obj.get("kind") != "ConfigMap" or "grafana_dashboard" not in labels:
            continue
        where = f"ConfigMap/{obj['metadata']['name']}"
        for key, text in obj.get("data", {}).items():
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as err:
                problems.add(where, f"{key} is not JSON: {err}")
                continue
            exprs = [t.get("expr", "") for p in dashboard.get("panels", []) for t in p.get("targets", [])]
            if not exprs:
                problems.add(where, f"{key} has no panel with a query")
            for expr in exprs:
                for metric in sorted(set(re.findall(r"\biot_[a-z_]+\b", expr)) - exported):
                    problems.add(where, f"{key} queries {metric}, which dataflow --serve does not export "
                                        f"(see iot_schema::monitor::METRICS)")


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
