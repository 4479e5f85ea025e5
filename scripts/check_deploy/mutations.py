"""The proof that the check can fail: known breaks of the manifests, each of which must be reported."""

from __future__ import annotations

import copy

from check_deploy.checks import Context, check_manifests
from check_deploy.common import Problems
from check_deploy.manifests import find


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


def mutate_dashboard_metric(objs):
    dashboard = next(o for o in objs if o.get("kind") == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {}))
    key = next(iter(dashboard["data"]))
    dashboard["data"][key] = dashboard["data"][key].replace("iot_producer_errors", "iot_producer_mistakes")


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
    ("a dashboard query of a metric the follower does not export", mutate_dashboard_metric),
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
