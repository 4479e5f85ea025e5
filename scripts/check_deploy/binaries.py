"""The workspace's binaries: their --help, and whether they accept a manifest's command line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from check_deploy.common import Problems


@dataclass
class CliSpec:
    longs: dict[str, bool] = field(default_factory=dict)  # --flag -> takes a value
    shorts: dict[str, bool] = field(default_factory=dict)
    envs: dict[str, tuple[str, bool]] = field(default_factory=dict)  # ENV -> (--flag, takes a value)


OPTION_LINE = re.compile(r"^\s{1,10}(?:-([A-Za-z0-9]),? ?)?(?:--([A-Za-z0-9][\w-]*))?(?:[ =](<[^>]+>|\[<[^>]+>\]))?")


def parse_help(text: str) -> CliSpec:
    spec = CliSpec()
    blocks: list[list[str]] = []
    for line in text.splitlines():
        match = OPTION_LINE.match(line)
        if match and (match.group(1) or match.group(2)) and re.match(r"^\s{1,10}-", line):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    for block in blocks:
        match = OPTION_LINE.match(block[0])
        assert match
        short, long, value = match.group(1), match.group(2), match.group(3)
        takes_value = value is not None
        if long:
            spec.longs[f"--{long}"] = takes_value
        if short:
            spec.shorts[f"-{short}"] = takes_value
        # `[env: NAME=value]`, or `[env: NAME]` when clap hides the value (a secret).
        env = re.search(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)[=\]]", " ".join(block))
        if env and long:
            spec.envs[env.group(1)] = (f"--{long}", takes_value)
    return spec


class Binaries:
    """Runs the workspace's binaries from one folder (target/debug), with a clean environment."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self._help: dict[tuple[str, ...], CliSpec] = {}
        self.env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.path(argv[0]))] + argv[1:], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def help(self, command: tuple[str, ...]) -> CliSpec:
        if command not in self._help:
            result = self.run(list(command) + ["--help"])
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)} --help` failed: {result.stderr.strip()[:300]}")
            self._help[command] = parse_help(result.stdout)
        return self._help[command]


def subcommand_of(binary: str, argv: list[str], binaries: Binaries) -> tuple[str, ...]:
    """`dataflow count ...` -> ("dataflow", "count"): a first word that is a subcommand."""
    if argv and not argv[0].startswith("-"):
        result = binaries.run([binary, argv[0], "--help"])
        if result.returncode == 0:
            return (binary, argv[0])
    return (binary,)


TRUTHY = {"true", "1", "yes", "on", "y"}


def check_command_line(where: str, binary: str, argv: list[str], env: dict[str, str], extra_env_readers: set[str],
                       referenced: set[str], binaries: Binaries, problems: Problems) -> None:
    command = subcommand_of(binary, argv, binaries)
    rest = argv[len(command) - 1:]
    spec = binaries.help(command)
    name = " ".join(command)
    for token in rest:
        if token == "--":
            break
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in spec.longs:
                problems.add(where, f"`{name}` has no flag {flag}")
        elif re.fullmatch(r"-[A-Za-z]", token) and token not in spec.shorts:
            problems.add(where, f"`{name}` has no flag {token}")
    env_flags: list[str] = []
    given = {t.split("=", 1)[0] for t in rest if t.startswith("-")}
    for var, value in env.items():
        if var in spec.envs:
            flag, takes_value = spec.envs[var]
            if flag in given:
                continue
            if takes_value:
                env_flags += [flag, value]
            elif value.lower() in TRUTHY:
                env_flags.append(flag)
        elif var not in extra_env_readers and var not in referenced:
            problems.add(where, f"`{name}` reads no environment variable {var} (its --help lists: "
                                f"{', '.join(sorted(spec.envs)) or 'none'})")
    # clap parses (and checks the value of) every argument before it acts on --help.
    result = binaries.run(list(command) + rest + env_flags + ["--help"])
    if result.returncode != 0:
        error = next((line for line in result.stderr.splitlines() if line.strip()), "exit status %d" % result.returncode)
        problems.add(where, f"`{name}` rejects its command line {shlex.join(rest + env_flags)}: {error.strip()}")
