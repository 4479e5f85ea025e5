"""docker/Dockerfile (read with dockerfile-parse), .dockerignore and the image names around them."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from dockerfile_parse import DockerfileParser

from check_deploy.common import BIN_DIRS, PROJECT_IMAGE_PREFIX, ROOT, Problems

if TYPE_CHECKING:
    from check_deploy.checks import Context

DOCKERFILE = ROOT / "docker" / "Dockerfile"


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


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, value) of each instruction, continuation lines joined and comments left out."""
    parser = DockerfileParser(str(path), cache_content=True)
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


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
    for keyword, rest in dockerfile_instructions(path):
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


def image_target(image: str) -> str | None:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: name.rfind(":")]
    return name[len(PROJECT_IMAGE_PREFIX):] if name.startswith(PROJECT_IMAGE_PREFIX) else None


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
