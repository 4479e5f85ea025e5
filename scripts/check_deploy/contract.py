"""The Rust contract constants (topic names, database and collection, indexes, HTTP routes, exit
codes), as the workspace's `contract` binary prints them. Rust prints them so that a renamed or
reformatted constant cannot silently read as unknown here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

# What the checks use; a contract without one of them is an error, never a default.
REQUIRED = {
    "TOPIC_IMAGES": str,
    "TOPIC_DEAD_LETTERS": str,
    "TOPIC_ALERTS": str,
    "DEFAULT_DB": str,
    "DEFAULT_COLLECTION": str,
    "CHANGE_LOG_SUFFIX": str,
    "INDEXED_FIELDS": list,
    "CHANGE_LOG_INDEXED_FIELDS": list,
    "HTTP_ROUTES": dict,
    "DATAFLOW_METRICS": list,
}


class ContractError(Exception):
    pass


def parse(text: str) -> dict:
    try:
        contract = json.loads(text)
    except json.JSONDecodeError as err:
        raise ContractError(f"`contract` printed no JSON: {err}") from None
    if not isinstance(contract, dict):
        raise ContractError("`contract` printed JSON that is not an object")
    for key, kind in REQUIRED.items():
        if key not in contract:
            raise ContractError(f"`contract` does not print {key}")
        if not isinstance(contract[key], kind):
            raise ContractError(f"`contract` prints {key} as {type(contract[key]).__name__}, not {kind.__name__}")
    return contract


def load(bin_dir: Path) -> dict:
    binary = bin_dir / "contract"
    if not binary.exists():
        raise ContractError(f"no binary {binary} (build it: cargo build --workspace --bins)")
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ContractError(f"`{binary}` failed (exit {result.returncode}): {result.stderr.strip()[:300]}")
    return parse(result.stdout)
