"""A canary window big enough to decide: real traffic until the judge has the batches it needs.

When its window is too small the judge (:func:`toolkit.validation.canary.judge`) answers ``not enough
data`` and says how many batches per path it needs (:attr:`CanaryVerdict.batches_needed`, worked out by
simulation of its own test on windows like this one). On a stack where the toolkit makes the traffic
(local, staging, the runbook's soak) this module closes the loop: a pilot of ``plan.batches``, then
traffic for the shortfall, judged again after each round, until the verdict is decided, the need
exceeds ``max_batches_per_path``, or ``max_rounds`` rounds have run. The number of batches is computed
from the window, not guessed.

Judging after every round is sequential testing: it raises the chance of a false alarm a little above
``alpha``. A failure still needs an effect beyond its tolerance, or a hard gate; a pass needs every
tolerance within what the window could detect, which more batches only make more certain.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.validation.canary import BASELINE, CANARY, CanaryConfig, CanaryVerdict, judge
from toolkit.validation.metrics import collect_batches
from toolkit.validation.traffic import CLOCK_MARGIN, TrafficPlan, flags_at, generate_traffic, paths_for

__all__ = ["ROUND_COLUMNS", "CanaryWindow", "judge_window", "run_until_decided"]

ROUND_COLUMNS = ["round", "submitted", "n_canary", "n_baseline", "verdict", "batches_needed", "seconds"]
# A need is an estimate from the batches seen so far: ask for a little more, to save a round.
_MARGIN = 1.1


@dataclass
class CanaryWindow:
    since: datetime
    until: datetime
    batches: pd.DataFrame  # collect_batches rows of the window
    verdict: CanaryVerdict
    rounds: pd.DataFrame  # ROUND_COLUMNS, one row per round of traffic
    stopped: str  # why the rounds stopped, in words


async def judge_window(
    settings: Settings,
    config: CanaryConfig,
    since: datetime,
    until: datetime,
    *,
    baseline_since: datetime | None = None,
) -> tuple[pd.DataFrame, CanaryVerdict]:
    """Read ``[since, until)`` and judge it. With ``baseline_since``, a window holding fewer than
    ``min_samples`` legacy batches (high percentages) is judged against every legacy batch since then."""
    window = await collect_batches(settings, since, until)
    baseline = None
    if baseline_since is not None and int((window["storage"] == BASELINE).sum()) < config.min_samples:
        earlier = await collect_batches(settings, baseline_since, until)
        baseline = earlier[earlier["storage"] == BASELINE]
    return window, judge(window, config, until=until, baseline=baseline)


def _have(verdict: CanaryVerdict, own_baseline: bool) -> int:
    """Batches per path the window holds (the canary's alone when the baseline is borrowed)."""
    return min(verdict.n_canary, verdict.n_baseline) if own_baseline else verdict.n_canary


def _shortfall(verdict: CanaryVerdict, sides: int, own_baseline: bool) -> int | None:
    """Batches to submit next (over all sides), or None when no number of batches is known to help."""
    if verdict.batches_needed is None:
        return None
    need = math.ceil(verdict.batches_needed * _MARGIN)
    return max(need - _have(verdict, own_baseline), 2) * sides


async def run_until_decided(
    settings: Settings,
    config: CanaryConfig,
    plan: TrafficPlan,
    *,
    max_batches_per_path: int,
    max_rounds: int = 4,
    users: list[ParseUser] | None = None,
    baseline_since: datetime | None = None,
    log: Callable[[str], None] | None = None,
) -> CanaryWindow:
    """Traffic through the API (``plan``: the pilot) and judgement, round after round, until decided.

    ``plan.percent`` sets the flags once for every round (and puts them back as ``plan.restore_flags``
    says); None leaves them to the caller (the runbook). ``baseline_since`` as in :func:`judge_window`.
    """
    say = log or (lambda _line: None)
    pool = users if users is not None else []
    rounds: list[dict[str, object]] = []
    async with ParseClient(settings) as parse:
        async with flags_at(
            parse, settings, plan.percent, restore=plan.restore_flags, settle_s=plan.settle_s
        ) as (_, during):
            sides = len(paths_for(during))
            since = datetime.now(UTC) - CLOCK_MARGIN
            batches = plan.batches
            while True:
                started = time.perf_counter()
                this_round = dataclasses.replace(
                    plan, batches=batches, percent=None, seed=plan.seed + len(rounds)
                )
                say(f"round {len(rounds) + 1}: {batches} batches through the API")
                await generate_traffic(settings, this_round, users=pool, progress=say)
                until = datetime.now(UTC) + CLOCK_MARGIN
                window, verdict = await judge_window(
                    settings, config, since, until, baseline_since=baseline_since
                )
                rounds.append(
                    {
                        "round": len(rounds) + 1,
                        "submitted": batches,
                        "n_canary": verdict.n_canary,
                        "n_baseline": verdict.n_baseline,
                        "verdict": verdict.verdict,
                        "batches_needed": verdict.batches_needed,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                say(
                    f"round {len(rounds)}: {verdict.n_canary} {CANARY} and {verdict.n_baseline} {BASELINE} "
                    f"batches judged: {verdict.verdict}"
                    + (f", about {verdict.batches_needed} per path needed" if verdict.batches_needed else "")
                )
                own_baseline = int((window["storage"] == BASELINE).sum()) >= config.min_samples or sides == 2
                more = _shortfall(verdict, sides, own_baseline)
                if verdict.verdict != "not enough data":
                    stopped = f"decided after {len(rounds)} round(s)"
                elif more is not None and verdict.batches_needed > max_batches_per_path:  # type: ignore[operator]
                    # A need worked out from a small window is noisy (in one runbook, pilots of 8 per path
                    # asked for 16, 16, then 1,352): fill the window up to the cap, and give up only when
                    # a full window still falls short.
                    room = max_batches_per_path - _have(verdict, own_baseline)
                    if room > 0 and len(rounds) < max_rounds:
                        batches = room * sides
                        continue
                    stopped = (
                        f"the judge needs {verdict.batches_needed} batches per path, "
                        f"over the cap of {max_batches_per_path}"
                    )
                elif more is None:
                    stopped = (
                        f"the judge needs more than {config.max_batches_per_path} batches per path, "
                        f"over the cap of {max_batches_per_path}"
                    )
                elif len(rounds) >= max_rounds:
                    stopped = f"still not enough data after {max_rounds} rounds"
                else:
                    batches = more
                    continue
                break
    say(f"canary window: {stopped}")
    frame = pd.DataFrame(rounds, columns=ROUND_COLUMNS)
    frame["batches_needed"] = pd.array(frame["batches_needed"].tolist(), dtype="Int64")
    return CanaryWindow(since, until, window, verdict, frame, stopped)
