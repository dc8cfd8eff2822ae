"""One window of real canary traffic, shared by the canary tests (it is the slow part: ~20 s)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from toolkit.settings import Settings
from toolkit.validation.metrics import collect_batches
from toolkit.validation.traffic import TrafficPlan, TrafficResult, generate_traffic

# 4 batches on each path (users alternate between the paths), small and mixed.
PLAN = TrafficPlan(
    batches=8, batch_sizes=(2, 4, 6), users=4, min_users_per_path=2, percent=50, workload="synthetic"
)


@dataclass(frozen=True)
class CanaryWindow:
    plan: TrafficPlan
    traffic: TrafficResult
    batches: pd.DataFrame


@pytest.fixture(scope="session")
async def canary_window(settings: Settings) -> CanaryWindow:
    traffic = await generate_traffic(settings, PLAN)
    window = await collect_batches(settings, traffic.since, traffic.until)
    # Only this traffic's batches: the window may hold another test's.
    return CanaryWindow(PLAN, traffic, window[window["batch_id"].isin(traffic.submitted["batch_id"])])
