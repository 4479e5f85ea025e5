"""The pipeline's configuration against the Rust contract: topics, brokers, partitions, indexes,
model sources, and the workloads the ansible deploy role waits for."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from check_deploy.ansible import check_ansible_waits
from check_deploy.common import ROOT, Problems
from check_deploy.manifests import Pod, find

if TYPE_CHECKING:
    from check_deploy.checks import Context


def check_pipeline(objects: list[dict], pods: list[Pod], ctx: Context, problems: Problems) -> None:
    schema = ctx.contract  # every key is there: contract.load refuses an incomplete one
    config = find(objects, "ConfigMap", next((o["metadata"]["name"] for o in objects if o.get("kind") == "ConfigMap"
                                             and o["metadata"]["name"].startswith("pipeline-config")), ""))
    if config is None:
        problems.add("k8s", "no ConfigMap pipeline-config")
        return
    data = config["data"]
    for key, const in (("kafka-topic", "TOPIC_IMAGES"), ("kafka-dlq-topic", "TOPIC_DEAD_LETTERS"),
                       ("kafka-alert-topic", "TOPIC_ALERTS")):
        if data.get(key) != schema[const]:
            problems.add("k8s/config/pipeline.env", f"{key}={data.get(key)} but iot_schema::{const} is {schema[const]}")
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
    records = schema["DEFAULT_COLLECTION"]
    for collection, const in ((records, "INDEXED_FIELDS"),
                              (records + schema["CHANGE_LOG_SUFFIX"], "CHANGE_LOG_INDEXED_FIELDS")):
        fields = [field for on, field in indexed if on == collection]
        if fields != schema[const]:
            problems.add("k8s/mongo/init-iot.js", f"creates indexes on {collection} {fields}; iot_schema::write::{const} "
                                                  f"is {','.join(schema[const])}")
    if f'getSiblingDB("{schema["DEFAULT_DB"]}")' not in script or f".{schema['DEFAULT_COLLECTION']}." not in script:
        problems.add("k8s/mongo/init-iot.js", f"does not index {schema['DEFAULT_DB']}.{schema['DEFAULT_COLLECTION']}")
    check_model_sources(objects, problems)
    check_ansible_waits(objects, problems)


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
