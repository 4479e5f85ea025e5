"""The command line: parse the Dockerfile, ask cargo and the binaries, check the manifests, report."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from check_deploy import __doc__ as package_doc
from check_deploy import contract
from check_deploy.binaries import Binaries
from check_deploy.checks import Context, check_manifests
from check_deploy.common import ROOT, Problems
from check_deploy.dockerfile import DOCKERFILE, check_docker, parse_dockerfile
from check_deploy.manifests import pods_of
from check_deploy.mutations import run_mutations


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="check_deploy", description=package_doc.split("\n")[0])
    parser.add_argument("--manifests", required=True, type=Path, help="kustomize build output (k8s/)")
    parser.add_argument("--bin-dir", required=True, type=Path, help="folder of the workspace binaries")
    parser.add_argument("--kustomization", default=ROOT / "k8s" / "kustomization.yaml", type=Path)
    parser.add_argument("--no-mutations", action="store_true", help="skip the proof that the check can fail")
    return parser.parse_args()


def cargo_metadata() -> dict:
    return json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                                     cwd=ROOT, check=True, capture_output=True, text=True).stdout)


def report(problems: Problems) -> int:
    if problems:
        print(f"\n{len(problems)} consistency problem(s):")
        for item in problems.items:
            print(f"  - {item}")
        return 1
    print("consistency: ok")
    return 0


def main() -> int:
    options = arguments()
    problems = Problems()
    try:
        constants = contract.load(options.bin_dir)
    except contract.ContractError as err:
        problems.add("iot-schema contract", str(err))
        return report(problems)
    build = parse_dockerfile(DOCKERFILE, problems)
    bins = check_docker(build, cargo_metadata(), problems)
    objects = [d for d in yaml.safe_load_all(options.manifests.read_text()) if d]
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        ctx = Context(build, bins, Binaries(options.bin_dir), yaml.safe_load(options.kustomization.read_text()),
                      constants, Path(tmp))
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
    return report(problems)


if __name__ == "__main__":
    sys.exit(main())
