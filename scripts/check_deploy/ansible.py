"""ansible/: what the deploy role expects of the manifests."""

from __future__ import annotations

import re

from check_deploy.common import ROOT, Problems
from check_deploy.manifests import find


def check_ansible_waits(objects: list[dict], problems: Problems) -> None:
    """The deploy role waits on workloads by name: they must be in the manifests."""
    tasks = ROOT / "ansible" / "roles" / "deploy_pipeline" / "tasks" / "main.yml"
    kinds = {"deployment": "Deployment", "statefulset": "StatefulSet", "job": "Job", "cronjob": "CronJob"}
    for kind, name in re.findall(r"\b(deployment|statefulset|job|cronjob)/([a-z0-9-]+)", tasks.read_text()):
        if find(objects, kinds[kind], name) is None:
            problems.add(str(tasks.relative_to(ROOT)), f"waits for {kind}/{name}, which k8s/ does not define")
