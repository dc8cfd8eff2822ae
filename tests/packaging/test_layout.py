"""The package's architecture, as imports: the parts, the direction between them, and no import circle.

``toolkit/`` has one folder per part (README, "Architecture"). The service parts (``api``, ``parse``,
``temporal``) never reach up into the validation layer, the command line or the test helpers; the
validation layer uses the service only through its public surface; command-line parsing stays in
``toolkit/cli``; and no two modules import each other, directly or around a longer circle.

Every rule is a function over a package folder, so each is also run once on a small package built here
that breaks it: a rule that cannot fail is not a check.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "toolkit"

SERVICE_PARTS = ("api", "parse", "temporal")
UPPER_PARTS = ("validation", "cli", "testing")
# What the validation layer may import from the service: public modules, never a private one (``_x``) and
# never a private name. Anything else it needs belongs on this surface first.
SERVICE_SURFACE = frozenset(
    {
        "toolkit.api.legacy_limit",
        "toolkit.parse",
        "toolkit.parse.batch_requests",
        "toolkit.parse.cleanup",
        "toolkit.parse.codec",
        "toolkit.parse.errors",
        "toolkit.parse.memory_writer",
        "toolkit.parse.models",
        "toolkit.parse.schema",
        "toolkit.parse.users",
        "toolkit.temporal.batch_types",
        "toolkit.temporal.client",
        "toolkit.temporal.external_storage",
        "toolkit.temporal.starter",
        "toolkit.temporal.workflows",
    }
)


def _module_name(package: Path, path: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: Path) -> dict[str, Path]:
    return {_module_name(package, path): path for path in sorted(package.rglob("*.py"))}


def _imports(package: Path, path: Path) -> Iterator[tuple[str, str]]:
    """``(module, name)`` for every import in ``path``, at any depth (a function-level import counts too).

    ``from a.b import c`` gives ``("a.b.c", "")`` when ``c`` is a module of the package, else
    ``("a.b", "c")``.
    """
    known = _modules(package)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield (submodule, "") if submodule in known else (node.module, alias.name)


def _part(module: str) -> str:
    """``toolkit.api.app`` → ``api``; a module at the root (``toolkit.settings``) is its own part."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def service_reaching_up(package: Path) -> list[str]:
    """Service modules that import the validation layer, the command line or the test helpers."""
    root = package.name
    return [
        f"{module} imports {target}"
        for module, path in _modules(package).items()
        if _part(module) in SERVICE_PARTS
        for target, _ in _imports(package, path)
        if target.startswith(f"{root}.") and _part(target) in UPPER_PARTS
    ]


def validation_off_the_surface(package: Path, surface: frozenset[str]) -> list[str]:
    """Validation imports of the service that are not on its public surface (a module or a private name)."""
    root = package.name
    offences = []
    for module, path in _modules(package).items():
        if _part(module) != "validation":
            continue
        for target, name in _imports(package, path):
            if not target.startswith(f"{root}.") or _part(target) not in SERVICE_PARTS:
                continue
            if target not in surface or name.startswith("_"):
                offences.append(f"{module} imports {target}{'.' + name if name else ''}")
    return offences


def import_circles(package: Path) -> list[list[str]]:
    """Every circle of imports between the package's modules (Tarjan's strongly connected components)."""
    modules = _modules(package)
    graph = {
        module: sorted(
            {target for target, _ in _imports(package, path) if target in modules and target != module}
        )
        for module, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return circles


def parsing_command_lines(package: Path) -> list[str]:
    """Modules outside ``cli`` that use argparse: the stack's processes start through ``toolkit <command>``,
    so library modules take settings and arguments, never argv."""
    return [
        module
        for module, path in _modules(package).items()
        if _part(module) != "cli" and any(target == "argparse" for target, _ in _imports(package, path))
    ]


def importing_the_cli(package: Path) -> list[str]:
    root = package.name
    return [
        module
        for module, path in _modules(package).items()
        if _part(module) != "cli" and module != f"{root}.__main__"
        for target, _ in _imports(package, path)
        if target == f"{root}.cli" or target.startswith(f"{root}.cli.")
    ]


def importing_test_helpers(package: Path) -> list[str]:
    root = package.name
    return [
        f"{module} imports {target}"
        for module, path in _modules(package).items()
        if _part(module) != "testing"
        for target, _ in _imports(package, path)
        if target == f"{root}.testing" or target.startswith(f"{root}.testing.")
    ]


# ---- the package as it is ------------------------------------------------------------------------------


def test_the_service_never_imports_validation_cli_or_test_helpers() -> None:
    assert service_reaching_up(PACKAGE) == []


def test_validation_uses_the_service_through_its_public_surface() -> None:
    assert validation_off_the_surface(PACKAGE, SERVICE_SURFACE) == []


def test_no_import_circle() -> None:
    assert import_circles(PACKAGE) == []


def test_production_code_never_imports_the_test_helpers() -> None:
    assert importing_test_helpers(PACKAGE) == []


def test_only_the_cli_package_parses_command_lines() -> None:
    assert parsing_command_lines(PACKAGE) == []


def test_library_modules_do_not_import_the_cli() -> None:
    assert importing_the_cli(PACKAGE) == []


def test_the_parents_of_the_workflow_module_do_nothing_on_import() -> None:
    # The workflow sandbox re-imports a workflow module's parent packages: no import and no call there,
    # only a docstring and constants.
    for init in (PACKAGE / "__init__.py", PACKAGE / "temporal" / "__init__.py"):
        for node in ast.parse(init.read_text()).body:
            constant = isinstance(node, ast.Expr | ast.Assign) and isinstance(node.value, ast.Constant)
            assert constant, (
                f"{init.relative_to(PACKAGE.parent)}: line {node.lineno} does something on import"
            )


def test_each_part_is_a_folder() -> None:
    parts = {path.name for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith("_")}
    assert parts >= {"api", "parse", "temporal", "validation", "stack", "cli", "testing"}
    # At the root only what every part shares: settings, ports, timing, rollout flags, webhook signing.
    root = {path.name for path in PACKAGE.glob("*.py")}
    assert root == {
        "__init__.py",
        "__main__.py",
        "settings.py",
        "ports.py",
        "timing.py",
        "rollout.py",
        "webhooks.py",
    }


# ---- each rule fails on a package that breaks it ---------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "toolkit"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == package.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(source)
    return package


def test_the_rules_catch_a_package_that_breaks_them(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "api/app.py": "from toolkit.validation import bench\n",
            "parse/store.py": "def f():\n    from toolkit.testing import helpers\n",
            "parse/_client.py": "import argparse\n",
            "temporal/workflows.py": "from toolkit.temporal import activities\n",
            "temporal/activities.py": "from toolkit.temporal.workflows import NAME\nimport toolkit.cli\n",
            "validation/bench.py": "from toolkit.parse._client import Client\n"
            "from toolkit.parse import _secret\n",
            "validation/__init__.py": "",
            "testing/helpers.py": "",
            "cli/__init__.py": "",
        },
    )
    assert service_reaching_up(package) == [
        "toolkit.api.app imports toolkit.validation.bench",
        "toolkit.parse.store imports toolkit.testing.helpers",
        "toolkit.temporal.activities imports toolkit.cli",
    ]
    assert validation_off_the_surface(package, frozenset({"toolkit.parse"})) == [
        "toolkit.validation.bench imports toolkit.parse._client.Client",
        "toolkit.validation.bench imports toolkit.parse._secret",
    ]
    assert import_circles(package) == [["toolkit.temporal.activities", "toolkit.temporal.workflows"]]
    assert parsing_command_lines(package) == ["toolkit.parse._client"]
    assert importing_the_cli(package) == ["toolkit.temporal.activities"]
    assert importing_test_helpers(package) == ["toolkit.parse.store imports toolkit.testing.helpers"]
