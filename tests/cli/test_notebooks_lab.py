"""`make lab` (= `toolkit notebooks lab`) as root, as in containers, CI and on these machines: JupyterLab
refused to start ("Running as root is not recommended. Use --allow-root to bypass."). The suite runs as
root here and in CI; as any other user the same test checks the lab serves the notebooks."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from toolkit.testing.ports import free_port

TOOLKIT = Path(sys.executable).with_name("toolkit")


def test_lab_serves_the_notebooks(stack_environ: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        lab = subprocess.Popen(
            [str(TOOLKIT), "notebooks", "lab", "--port", str(port)],
            env={**stack_environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "BROWSER": "true"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline and lab.poll() is None:
            found = re.search(rf"127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)", log.read_text())
            token = found.group(1) if found else None
            time.sleep(0.2)
        assert token is not None, f"exit {lab.poll()}: {log.read_text()[-2000:]}"
        contents = httpx.get(
            f"http://127.0.0.1:{port}/api/contents", params={"token": token}, timeout=10
        ).json()
        names = {item["name"] for item in contents["content"]}
        assert {"03_canary_comparison.ipynb", "04_rollout_runbook.ipynb"} <= names
    finally:
        lab.terminate()
        lab.wait(timeout=30)
