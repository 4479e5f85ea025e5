"""What every check shares: the repository root, the problem list, and the project's fixed names."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
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
