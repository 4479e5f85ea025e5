"""The built Kubernetes manifests: workloads, their effective environment, Services and host names."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from check_deploy.common import CLUSTER_DOMAIN, WORKLOAD_KINDS, Problems


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
                if value is None and ref.get("optional"):
                    continue  # Kubernetes leaves the variable unset, as the binary expects
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


def volume_mounts(pod: Pod, container: dict) -> list[tuple[str, dict, bool]]:
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    for claim in pod.workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "persistentVolumeClaim": {}}
    return [(m["mountPath"].rstrip("/") or "/", volumes.get(m["name"], {}), bool(m.get("readOnly")))
            for m in container.get("volumeMounts", [])]
