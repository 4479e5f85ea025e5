"""Unit tests of the pieces the consistency check stands on (scripts/check-deploy runs them; the
whole check's own proof is its mutation run). Run: PYTHONPATH=scripts python -m unittest check_deploy.tests"""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

from check_deploy import contract
from check_deploy.binaries import parse_help
from check_deploy.common import Problems
from check_deploy.dockerfile import dockerignore_includes, parse_dockerfile

COMPLETE = {"TOPIC_IMAGES": "t", "TOPIC_DEAD_LETTERS": "t.dlq", "TOPIC_ALERTS": "a", "DEFAULT_DB": "iot", "DEFAULT_COLLECTION": "c",
            "CHANGE_LOG_SUFFIX": "_changes", "INDEXED_FIELDS": ["A"], "CHANGE_LOG_INDEXED_FIELDS": ["B"],
            "HTTP_ROUTES": {"infer-service": ["/healthz"]}, "DATAFLOW_METRICS": ["iot_producer_errors"]}


class ContractTest(unittest.TestCase):
    def test_a_complete_contract_is_read_as_printed(self) -> None:
        self.assertEqual(contract.parse(json.dumps(COMPLETE)), COMPLETE)

    def test_a_missing_constant_is_an_error_not_a_default(self) -> None:
        for key in contract.REQUIRED:
            partial = {k: v for k, v in COMPLETE.items() if k != key}
            with self.assertRaisesRegex(contract.ContractError, f"does not print {key}$"):
                contract.parse(json.dumps(partial))

    def test_a_mistyped_constant_or_no_json_is_an_error(self) -> None:
        with self.assertRaisesRegex(contract.ContractError, "INDEXED_FIELDS as str, not list"):
            contract.parse(json.dumps({**COMPLETE, "INDEXED_FIELDS": "A,B"}))
        with self.assertRaisesRegex(contract.ContractError, "printed no JSON"):
            contract.parse("TOPIC_IMAGES=t")


DOCKERFILE = """\
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS builder
# a comment inside the build stage
RUN --mount=type=cache,target=/r cargo build --release -p iot-ingest \\
    # a comment between continuation lines
    --bin producer \\
    && install -D -m 0755 -t /out target/release/producer
FROM ${BASE} AS runtime
FROM runtime AS ingest
COPY --from=builder /out/producer /usr/local/bin/producer
COPY docker/dataflow-cluster.sh /usr/local/bin/dataflow-cluster
ENV RUST_LOG=info IOT_X="a b"
RUN mkdir -p /data/out /data/in
USER 10001:10001
EXPOSE 9100/tcp 9200
ENTRYPOINT ["/usr/local/bin/producer"]
CMD --help
"""


class DockerfileTest(unittest.TestCase):
    def test_stages_inherit_and_record_what_the_images_hold(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "Dockerfile"
            path.write_text(DOCKERFILE)
            problems = Problems()
            build = parse_dockerfile(path, problems)
        self.assertEqual(problems.items, [])
        self.assertEqual(list(build.stages), ["builder", "runtime", "ingest"])
        self.assertEqual((build.cargo_packages, build.cargo_bins, build.built_binaries),
                         (["iot-ingest"], ["producer"], ["producer"]))
        ingest = build.stages["ingest"]
        self.assertEqual(ingest.files["/usr/local/bin/dataflow-cluster"], "docker/dataflow-cluster.sh")
        self.assertIsNone(ingest.files["/usr/local/bin/producer"])
        self.assertEqual(ingest.env, {"RUST_LOG": "info", "IOT_X": "a b"})
        self.assertTrue(ingest.has_path("/data/out") and ingest.has_path("/data/in"))
        self.assertEqual((ingest.user, ingest.expose), ("10001:10001", {9100, 9200}))
        self.assertEqual((ingest.entrypoint, ingest.cmd), (["/usr/local/bin/producer"], ["/bin/sh", "-c", "--help"]))
        self.assertEqual(build.context_sources, ["docker/dataflow-cluster.sh"])

    def test_a_missing_copy_source_is_reported(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "Dockerfile"
            path.write_text("FROM debian AS x\nCOPY docker/no-such-file /usr/local/bin/x\n")
            problems = Problems()
            parse_dockerfile(path, problems)
        self.assertEqual(problems.items, ["Dockerfile COPY docker/no-such-file: the source does not exist in the repository"])


class DockerignoreTest(unittest.TestCase):
    def test_the_last_matching_pattern_decides(self) -> None:
        patterns = ["*", "!schema/", "!ingest/", "**/target", "ingest/secret.env"]
        self.assertTrue(dockerignore_includes(patterns, "schema/src/lib.rs"))
        self.assertFalse(dockerignore_includes(patterns, "schema/target/x"))
        self.assertFalse(dockerignore_includes(patterns, "ingest/secret.env"))
        self.assertFalse(dockerignore_includes(patterns, ".cache/venv/bin/python"))


class HelpTest(unittest.TestCase):
    def test_flags_values_and_env_vars_are_read_from_clap_help(self) -> None:
        spec = parse_help("""Usage: x [OPTIONS]

Options:
      --listen <LISTEN>
          Address to listen on [env: IOT_LISTEN=] [default: 127.0.0.1:5000]
  -f, --follow
          Keep running [env: IOT_FOLLOW=]
  -h, --help
          Print help
""")
        self.assertEqual(spec.longs, {"--listen": True, "--follow": False, "--help": False})
        self.assertEqual(spec.shorts, {"-f": False, "-h": False})
        self.assertEqual(spec.envs, {"IOT_LISTEN": ("--listen", True), "IOT_FOLLOW": ("--follow", False)})


if __name__ == "__main__":
    unittest.main()
