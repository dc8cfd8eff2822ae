"""``toolkit notebooks run | lab``: execute the validation notebooks into a report folder, or open them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from toolkit.settings import REPO_ROOT, Settings


def notebooks_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "lab":
        return _lab(args, settings)
    from toolkit.validation.notebooks import NOTEBOOKS_DIR, run_notebooks, summary_lines

    parameters = {} if args.ci else None  # --ci: each notebook's own (CI-sized) defaults
    reports = Path(args.reports)
    print(
        f"executing the notebooks in {NOTEBOOKS_DIR} against {settings.parse_url} (papermill) ...", flush=True
    )
    out_dir, runs = run_notebooks(reports, parameters=parameters, log=lambda line: print(line, flush=True))
    print("\n".join(summary_lines(out_dir, runs)))
    return 0 if all(run.error is None for run in runs) else 1


def lab_command_line(port: int | None, *, as_root: bool) -> list[str]:
    """The ``jupyter lab`` command: the venv's own kernel, ``notebooks/`` open, bound to localhost.

    JupyterLab refuses to start as root ("Running as root is not recommended. Use --allow-root to
    bypass."), which is how containers, CI and these machines run; the server only listens on
    127.0.0.1, so root adds no exposure beyond what the user already has."""
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter), "lab", f"--notebook-dir={REPO_ROOT / 'notebooks'}", "--ServerApp.ip=127.0.0.1"]
    if as_root:
        command.append("--allow-root")
    if port:
        command.append(f"--ServerApp.port={port}")
    return command


def _lab(args: argparse.Namespace, settings: Settings) -> int:
    """JupyterLab on this stack (the notebooks read its settings through TOOLKIT_STACK_DIR)."""
    env = {**os.environ, "TOOLKIT_STACK_DIR": str(settings.stack_dir)}
    command = lab_command_line(args.port, as_root=os.geteuid() == 0)
    os.execve(command[0], command, env)
    return 0  # not reached


def add_parser(sub: argparse._SubParsersAction, func) -> None:
    p = sub.add_parser(
        "notebooks", help="execute the validation notebooks into reports/<UTC timestamp>/, or open them"
    )
    p.add_argument("action", choices=["run", "lab"])
    p.add_argument(
        "--reports", default=str(REPO_ROOT / "reports"), help="folder for the report folders (run)"
    )
    p.add_argument("--ci", action="store_true", help="run at each notebook's CI-sized defaults (run)")
    p.add_argument("--port", type=int, help="JupyterLab port (lab)")
    p.set_defaults(func=func)
