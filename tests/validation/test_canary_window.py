"""Traffic until the judge can decide, on the real stack: the second round is sized by the judge's need."""

from __future__ import annotations

from toolkit.parse import ParseClient
from toolkit.rollout import read_flags
from toolkit.settings import Settings
from toolkit.validation.canary import CanaryConfig
from toolkit.validation.canary_window import run_until_decided
from toolkit.validation.traffic import TrafficPlan

# Wide tolerances, so that the fewest batches the test can judge (4 per path) decide: what is checked
# here is the loop, not the judge's verdict on the paths.
WIDE = (
    CanaryConfig(min_samples=4, success_tolerance=0.5)
    .with_metric("success_rate", tolerance=0.6)
    .with_metric("error_rate", tolerance=0.6)
    .with_metric("end_to_end_ms", tolerance=20.0)
    .with_metric("memories_per_s", tolerance=0.95)
    .with_metric("history_bytes", tolerance=20.0)
)
PILOT = TrafficPlan(
    batches=2, batch_sizes=(5,), users=2, min_users_per_path=1, percent=50, workload="synthetic"
)


async def test_a_pilot_too_small_is_topped_up_to_what_the_judge_needs(
    settings: Settings, parse: ParseClient
) -> None:
    before = await read_flags(parse, settings)
    lines: list[str] = []
    window = await run_until_decided(settings, WIDE, PILOT, max_batches_per_path=20, log=lines.append)

    rounds = window.rounds
    # Round 1: one batch per path, fewer than min_samples: the judge asks for 4 per path.
    assert rounds.loc[0, ["submitted", "n_canary", "n_baseline"]].tolist() == [2, 1, 1]
    assert (rounds.loc[0, "verdict"], rounds.loc[0, "batches_needed"]) == ("not enough data", 4)
    # Round 2 tops each path up to the need (with a 10 % margin: ceil(4.4) = 5), then it decides.
    assert rounds.loc[1, "submitted"] == 2 * (5 - 1)
    assert window.verdict.verdict != "not enough data", window.verdict.reasons
    assert (window.verdict.n_canary, window.verdict.n_baseline) == (5, 5)
    assert window.stopped == "decided after 2 round(s)"
    assert any(line.startswith("traffic: 8/8 batches final") for line in lines), lines
    assert await read_flags(parse, settings) == before  # the flags were set once and put back


async def test_a_need_over_the_cap_fills_the_window_to_the_cap_then_stops_with_the_reason(
    settings: Settings, parse: ParseClient
) -> None:
    window = await run_until_decided(settings, WIDE, PILOT, max_batches_per_path=3)
    # The pilot's need (4 per path) is over the cap, but a small window's need is noisy: the window is
    # filled up to the cap first (2 more per path), and only a full window that still falls short stops.
    assert window.rounds["submitted"].tolist() == [2, 2 * (3 - 1)]
    assert window.verdict.verdict == "not enough data"
    assert (window.verdict.n_canary, window.verdict.n_baseline) == (3, 3)
    assert window.stopped == "the judge needs 4 batches per path, over the cap of 3"
