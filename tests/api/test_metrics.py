"""Operator metrics, scraped for real: the API's own /metrics and the stack worker's Temporal SDK metrics."""

from __future__ import annotations

import asyncio
import re
import sys
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from toolkit import stack
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_api_metrics_count_routes_statuses_errors_latency_and_accepted_batches(
    api: ApiServer, http: httpx.AsyncClient, user: ParseUser
) -> None:
    # The session's shared API: what this test adds is the difference between two scrapes.
    before = _samples((await http.get(f"{api.url}/metrics")).text)
    headers = {"X-Parse-Session-Token": user.session_token}
    accepted = await http.post(
        f"{api.url}/v1/memory/batch", json={"memories": chitchat_memories(4)}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    storage = accepted.json()["storage"]
    status_url = f"{api.url}{accepted.json()['status_url']}"
    for _ in range(3):
        assert (await http.get(status_url, headers=headers)).status_code == 200
    assert (await http.get(f"{api.url}/v1/batch/{'9' * 32}/status", headers=headers)).status_code == 404
    assert (await http.get(f"{api.url}/v1/batch/x/status")).status_code == 401
    assert (await http.get(f"{api.url}/no/such/path/{'z' * 40}")).status_code == 404

    scrape = await http.get(f"{api.url}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    after = _samples(scrape.text)

    def added(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    status_route = "/v1/batch/{batch_id}/status"
    requests = "batch_api_requests_total"
    assert added(requests, route="/v1/memory/batch", method="POST", status="202") == 1
    assert added(requests, route=status_route, method="GET", status="200") == 3
    assert added(requests, route=status_route, method="GET", status="404") == 1
    assert added(requests, route=status_route, method="GET", status="401") == 1
    # An unknown path is counted under one label, never under its own raw path.
    assert added(requests, route="unmatched", method="GET", status="404") == 1
    assert "z" * 40 not in scrape.text
    assert added(requests, route="/metrics", method="GET", status="200") == 1  # the first scrape
    assert added("batch_api_error_responses_total", **{"class": "4xx"}) == 3
    assert added("batch_api_error_responses_total", **{"class": "5xx"}) == 0
    assert added("batch_api_batches_accepted_total", storage=storage) == 1
    assert added("batch_api_memories_accepted_total", storage=storage) == 4
    assert added("batch_api_request_duration_seconds_count", route=status_route, method="GET") == 5
    assert added("batch_api_request_duration_seconds_sum", route=status_route, method="GET") > 0
    # /metrics is for operators: not part of the API's OpenAPI document.
    assert "/metrics" not in (await http.get(f"{api.url}/openapi.json")).json()["paths"]


async def test_the_stack_worker_exports_temporal_sdk_metrics(
    settings: Settings, http: httpx.AsyncClient, api: ApiServer, user: ParseUser
) -> None:
    rows = {row.name: row for row in await asyncio.to_thread(stack.status, settings)}
    assert rows["api"].metrics_url == f"{settings.api_url}/metrics"
    worker_url = rows["worker"].metrics_url
    assert worker_url == f"http://{settings.bind_host}:{settings.worker_metrics_port}/metrics"
    assert f"WORKER_METRICS_PORT={settings.worker_metrics_port}" in settings.stack_env_file.read_text()

    # A batch through the stack's worker, so task metrics exist whatever ran before.
    headers = {"X-Parse-Session-Token": user.session_token}
    accepted = await http.post(
        f"{api.url}/v1/memory/batch", json={"memories": chitchat_memories(2)}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    for _ in range(150):
        status = (await http.get(f"{api.url}{accepted.json()['status_url']}", headers=headers)).json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.2)
    assert status["status"] == "completed"

    scrape = await http.get(worker_url)
    assert scrape.status_code == 200
    names = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {"temporal_request", "temporal_num_pollers", "temporal_workflow_completed"} <= names, sorted(names)
    queue = re.escape(settings.temporal_task_queue)
    assert re.search(rf'temporal_workflow_completed\{{[^}}]*task_queue="{queue}"', scrape.text)


async def test_a_second_worker_on_the_host_serves_its_metrics_on_another_port(
    settings: Settings, stack_environ: dict[str, str], http: httpx.AsyncClient, tmp_path
) -> None:
    # Scaling out starts more workers from the same stack.env, so they all read one WORKER_METRICS_PORT,
    # which the stack's worker holds. The newcomer must still start (it used to exit with "Address
    # already in use") and say where its metrics are.
    ready = tmp_path / "second-worker.ready"
    log_path = tmp_path / "second-worker.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "toolkit", "-v", "worker", "--ready-file", str(ready),
            env=stack_environ, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        for _ in range(300):
            if ready.exists() or process.returncode is not None:
                break
            await asyncio.sleep(0.1)
        text = log_path.read_text()
        assert ready.exists(), f"second worker not ready (exit {process.returncode}):\n{text}"
        match = re.search(r"metrics on port (\d+)", text)
        assert match, text
        port = int(match.group(1))
        assert port != settings.worker_metrics_port

        # The SDK's exporter serves an empty page until the worker records its first metric: wait for
        # the worker's own start counter, labelled with its task queue.
        def worker_starts(text: str) -> list[float]:
            return [
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if family.name == "temporal_worker_start"  # the parser names the sample ..._total
                and sample.labels.get("task_queue") == settings.temporal_task_queue
            ]

        for _ in range(300):
            scrape = await http.get(f"http://{settings.bind_host}:{port}/metrics")
            assert scrape.status_code == 200
            if worker_starts(scrape.text):
                break
            await asyncio.sleep(0.1)
        assert worker_starts(scrape.text) == [1.0], scrape.text[-2000:]
    finally:
        process.terminate()
        await process.wait()
