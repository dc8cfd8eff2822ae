"""The package's layering: command-line code in toolkit/cli, test helpers out of production code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "toolkit"


def _modules(exclude: tuple[str, ...]) -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if not any(part in exclude for part in path.relative_to(PACKAGE).parts[:-1])
    ]


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_production_code_never_imports_the_test_helpers() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imported(path) if n.startswith("toolkit.testing"))
        for path in _modules(exclude=("testing",))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_the_cli_package_parses_command_lines() -> None:
    # The stack's processes (worker, API) are started through `toolkit <command>`, so argparse belongs to
    # toolkit/cli alone; library modules take settings and arguments, never argv.
    offenders = [
        str(path.relative_to(PACKAGE)) for path in _modules(exclude=("cli",)) if "argparse" in _imported(path)
    ]
    assert offenders == []


def test_library_modules_do_not_import_the_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules(exclude=("cli",))
        if any(name == "toolkit.cli" or name.startswith("toolkit.cli.") for name in _imported(path))
        and path.name != "__main__.py"
    ]
    assert offenders == []
