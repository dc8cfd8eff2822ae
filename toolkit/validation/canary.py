"""The canary judge: is the reference path at least as good as the legacy path, measured on real batches?

Modelled on Spinnaker Kayenta's judge ("NetflixACAJudge"), plus what Kayenta does not do: it knows what
its window could have detected.

1. Each metric of the canary (here: the ``reference`` path) is compared with the baseline (the
   ``legacy`` path) over the same window by a two-sided Mann–Whitney U test, which assumes no
   distribution (latencies are skewed and multi-modal). A difference that is statistically significant
   *and* larger than the metric's effect-size tolerance classifies the metric ``high`` or ``low``.
   Too few samples on either side is ``nodata``.
2. **What it could detect.** For every metric the judge works out the smallest regression its test
   would have flagged with probability ``power`` (0.8) at ``alpha``, for the batches it has
   (:mod:`toolkit.validation.power`: *by simulation* of this very test on windows shaped like this
   one, not by a formula; that module says why). A metric with no significant difference is ``pass``
   only when a regression as small as its tolerance would have been caught; otherwise it is
   ``inconclusive``, with the batches per path it would need. "No regression found" is then not
   mistaken for "no regression".
3. A metric *fails* when its class is the bad direction for it (``high`` latency, ``low`` success
   rate); ``low`` history bytes are an improvement, not a failure.
4. The score is the weighted share of the metrics that were decided (pass, high, low) and did not
   fail, 0–100, held against the ``marginal`` and ``pass`` thresholds. Kayenta's defaults (75 and 95)
   are ours.
5. Hard gates sit beside the score and override it: no timed-out or stuck canary batch, no Parse
   *infrastructure* error on the canary (a memory Parse refused for its own data, such as a metadata
   key with a dot, is the user's data, not the path's health: the success-rate comparison covers it),
   the canary's success rate not below the baseline's by more than a tolerance, and the plan's history
   budget (10 KB for a 100-memory batch) per canary batch, or per chunk file of a chunked batch.

The verdict: ``fail`` on a failed gate, a failed critical metric or a score under ``marginal``;
``not enough data`` when a path has fewer than ``min_samples`` finished batches or any metric is
inconclusive (with :attr:`CanaryVerdict.batches_needed`); otherwise ``pass`` or ``marginal`` by score.
The success-rate difference carries a confidence interval (Newcombe's hybrid score interval, built
from two Wilson intervals), because with a few hundred memories a 1-point difference is noise.

Everything here is a pure function over the DataFrame of :func:`toolkit.validation.metrics.collect_batches`;
reading the servers is the caller's business (notebook 03, the runbook's gate).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, norm

from toolkit.parse.models import FINISHED_STATUSES
from toolkit.validation.power import (
    BinomialModel,
    PowerTarget,
    ShiftModel,
    WindowModel,
    batches_needed,
    smallest_change,
    smallest_p_value,
)

__all__ = [
    "BASELINE",
    "CANARY",
    "DEFAULT_METRICS",
    "FINISHED",
    "CanaryConfig",
    "CanaryVerdict",
    "InvalidCanaryConfig",
    "MetricSpec",
    "classify",
    "is_infrastructure_error",
    "judge",
    "metric_samples",
    "newcombe_interval",
    "path_percentiles",
    "wilson_interval",
]

CANARY = "reference"
BASELINE = "legacy"
# The statuses a batch ends in (the request model's own list).
FINISHED = FINISHED_STATUSES

Direction = Literal["increase", "decrease", "either"]
Effect = Literal["ratio", "difference"]
MetricClass = Literal["pass", "high", "low", "inconclusive", "nodata"]
Verdict = Literal["pass", "marginal", "fail", "not enough data"]

METRIC_COLUMNS = [
    "metric",
    "class",
    "failed",
    "weight",
    "direction",
    "effect_kind",
    "tolerance",
    "n_baseline",
    "n_canary",
    "baseline_median",
    "canary_median",
    "baseline_p95",
    "canary_p95",
    "baseline_p99",
    "canary_p99",
    "effect",
    "p_value",
    # The smallest regression this window would have flagged with probability `power` (same unit as
    # `effect`: a ratio, or a difference in the rate), whether that is within the tolerance, and if not
    # the batches per path needed for it.
    "detectable_effect",
    "detectable",
    "batches_needed",
]
GATE_COLUMNS = ["gate", "passed", "detail"]


class InvalidCanaryConfig(ValueError):
    """A judge parameter out of range (e.g. thresholds not 0 <= marginal <= pass <= 100)."""


@dataclass(frozen=True)
class MetricSpec:
    """One compared metric.

    ``direction`` says which change is bad: ``increase`` (latency, errors, history), ``decrease``
    (success, throughput) or ``either``. ``effect`` is how far apart the two paths are:
    ``ratio`` = canary median / baseline median (tolerance 0.25 allows 0.75–1.25), or
    ``difference`` = canary mean − baseline mean (for rates in 0–1; tolerance 0.02 = 2 points).
    """

    name: str
    direction: Direction
    effect: Effect
    tolerance: float
    weight: float
    # A critical metric that fails fails the whole verdict whatever the score (Kayenta's "critical").
    critical: bool = False


DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("success_rate", "decrease", "difference", 0.02, 30, critical=True),
    MetricSpec("error_rate", "increase", "difference", 0.02, 15),
    MetricSpec("end_to_end_ms", "increase", "ratio", 0.25, 25),
    MetricSpec("memories_per_s", "decrease", "ratio", 0.25, 15),
    MetricSpec("history_bytes", "increase", "ratio", 0.10, 15),
)


@dataclass(frozen=True)
class CanaryConfig:
    metrics: tuple[MetricSpec, ...] = DEFAULT_METRICS
    # Significance level of the Mann–Whitney test.
    alpha: float = 0.05
    # Finished batches needed on each path before anything is judged.
    min_samples: int = 5
    # A metric passes only if a regression as small as its tolerance would have been flagged with this
    # probability (toolkit.validation.power: simulations of the judge's own test, reproducible by seed).
    power: float = 0.8
    simulations: int = 400
    # The most batches per path the judge computes a need for (a bigger need is reported as "more").
    max_batches_per_path: int = 2000
    marginal_threshold: float = 75.0
    pass_threshold: float = 95.0
    # Hard gate: canary memory success rate may be at most this far below the baseline's.
    success_tolerance: float = 0.02
    # Confidence level of the success-rate difference interval.
    confidence: float = 0.95
    # An unfinished canary batch older than this (at the end of the window) counts as a timeout.
    batch_timeout_s: float = 600.0
    # The plan's "history < 10 KB per batch" for the new path; None switches the gate off.
    max_canary_history_bytes: int | None = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.marginal_threshold <= self.pass_threshold <= 100:
            raise InvalidCanaryConfig(
                f"need 0 <= marginal ({self.marginal_threshold}) <= pass ({self.pass_threshold}) <= 100"
            )
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise InvalidCanaryConfig("alpha and confidence must lie strictly between 0 and 1")
        # The exact test's smallest p-value at n against n is 2 / C(2n, n): 0.10 at 3 against 3, so with
        # fewer samples than that allows, no metric could ever be flagged at this alpha.
        floor = smallest_p_value(self.min_samples, self.min_samples)
        if floor >= self.alpha:
            raise InvalidCanaryConfig(
                f"min_samples={self.min_samples} can never flag a metric at alpha={self.alpha:g}: the "
                f"smallest two-sided Mann–Whitney p-value at {self.min_samples} against "
                f"{self.min_samples} is {floor:.3g}"
            )
        if not 0 < self.power < 1 or self.simulations < 50 or self.max_batches_per_path < self.min_samples:
            raise InvalidCanaryConfig(
                "need 0 < power < 1, simulations >= 50 and max_batches_per_path >= min_samples"
            )
        if not self.metrics or any(m.weight <= 0 or m.tolerance < 0 for m in self.metrics):
            raise InvalidCanaryConfig("need at least one metric, each with weight > 0 and tolerance >= 0")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise InvalidCanaryConfig(f"metric names repeat: {names}")

    def with_metric(self, name: str, **changes: object) -> CanaryConfig:
        """A copy with one metric's spec changed (e.g. a notebook parameter for a tolerance)."""
        if name not in {m.name for m in self.metrics}:
            raise InvalidCanaryConfig(f"no metric {name!r}")
        metrics = tuple(replace(m, **changes) if m.name == name else m for m in self.metrics)  # type: ignore[arg-type]
        return replace(self, metrics=metrics)


@dataclass(frozen=True)
class CanaryVerdict:
    verdict: Verdict
    score: float | None
    n_canary: int
    n_baseline: int
    metrics: pd.DataFrame  # METRIC_COLUMNS, one row per metric
    gates: pd.DataFrame  # GATE_COLUMNS, one row per hard gate
    success_rate_canary: float | None
    success_rate_baseline: float | None
    # Canary − baseline memory success rate, with its confidence interval.
    success_diff: float | None
    success_diff_low: float | None
    success_diff_high: float | None
    reasons: list[str] = field(default_factory=list)
    # With "not enough data": finished batches per path (in total) the judge needs to decide; None when
    # it has enough, or when more than CanaryConfig.max_batches_per_path would be needed.
    batches_needed: int | None = None
    alpha: float = 0.05
    power: float = 0.8

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def _detectable(self, metric: str) -> float | None:
        rows = self.metrics[self.metrics["metric"] == metric]
        if rows.empty or pd.isna(rows.iloc[0]["detectable_effect"]):
            return None
        return float(rows.iloc[0]["detectable_effect"])

    @property
    def detectable_latency_ratio(self) -> float | None:
        """The smallest end-to-end slowdown (canary / baseline median) this window would have caught."""
        return self._detectable("end_to_end_ms")

    @property
    def detectable_success_drop(self) -> float | None:
        """The smallest drop of the memory success rate (a fraction: 0.02 = 2 points) it would have caught."""
        diff = self._detectable("success_rate")
        return None if diff is None else -diff

    def what_it_could_detect(self) -> str:
        """One sentence: the smallest regressions this window would have caught, against the tolerances."""
        parts = []
        for row in self.metrics.to_dict("records"):
            found = ""
            if row["class"] in ("high", "low"):
                found = f", and it found a significant {row['effect']:.3g}" + (
                    "×" if row["effect_kind"] == "ratio" else ""
                )
            parts.append(f"{row['metric']} {_describe_change(row)}{found}")
        return (
            f"With {self.n_canary} canary and {self.n_baseline} baseline batches, at alpha {self.alpha:g} "
            f"and power {self.power:g}, this window would have caught: " + "; ".join(parts) + "."
        )

    def summary(self) -> dict[str, object]:
        """Plain values for a record (a notebook's summary, a runbook row)."""
        ratio, drop = self.detectable_latency_ratio, self.detectable_success_drop
        return {
            "verdict": self.verdict,
            "score": None if self.score is None else round(self.score, 1),
            "n_canary": self.n_canary,
            "n_baseline": self.n_baseline,
            "success_rate_canary": self.success_rate_canary,
            "success_rate_baseline": self.success_rate_baseline,
            "success_diff": self.success_diff,
            "success_diff_ci": [self.success_diff_low, self.success_diff_high],
            "detectable_latency_ratio": None if ratio is None or math.isinf(ratio) else round(ratio, 3),
            "detectable_success_drop": None if drop is None or math.isinf(drop) else round(drop, 4),
            "batches_needed_per_path": self.batches_needed,
            "reasons": list(self.reasons),
        }


def _describe_change(row: dict[str, object]) -> str:
    """``row``'s detectable regression in words, e.g. "1.31× or more (tolerance 1.25×)"."""
    value, tolerance = row["detectable_effect"], float(row["tolerance"])  # type: ignore[arg-type]
    if value is None or pd.isna(value):
        return "not computed"
    value = float(value)  # type: ignore[arg-type]
    if row["effect_kind"] == "ratio":
        bound = 1 - tolerance if row["direction"] == "decrease" else 1 + tolerance
        shown = "no change of any size" if math.isinf(value) or value == 0 else f"{value:.3g}× or worse"
        return f"{shown} (tolerance {bound:.3g}×)"
    shown = "no change of any size" if math.isinf(value) else f"{abs(value) * 100:.2g} points or worse"
    return f"{shown} (tolerance {tolerance * 100:.2g} points)"


# ---- statistics ----------------------------------------------------------------------------------
def _z(confidence: float) -> float:
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(
    s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """p1 − p2 and its interval (Newcombe's hybrid score method 10, from two Wilson intervals)."""
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one trial")
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1, confidence)
    l2, u2 = wilson_interval(s2, n2, confidence)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return diff, max(-1.0, low), min(1.0, high)


def _effect(canary: np.ndarray, baseline: np.ndarray, kind: Effect) -> float:
    if kind == "difference":
        return float(canary.mean() - baseline.mean())
    c, b = float(np.median(canary)), float(np.median(baseline))
    if b == 0:
        return 1.0 if c == 0 else math.inf
    return c / b


def classify(
    canary: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    spec: MetricSpec,
    *,
    alpha: float = 0.05,
    min_samples: int = 5,
) -> tuple[MetricClass, float | None, float | None]:
    """Classify one metric: ``(class, effect, p_value)``.

    ``high``/``low`` need both a significant Mann–Whitney test and an effect beyond the tolerance,
    so a large but noisy difference and a tiny but certain one both pass (Kayenta's rule).
    """
    c = np.asarray(canary, dtype="float64")
    b = np.asarray(baseline, dtype="float64")
    c, b = c[np.isfinite(c)], b[np.isfinite(b)]
    if len(c) < min_samples or len(b) < min_samples:
        return "nodata", None, None
    effect = _effect(c, b, spec.effect)
    p_value = float(mannwhitneyu(c, b, alternative="two-sided").pvalue)
    # Identical constant samples give p = 1 (or NaN on some scipy versions): no difference.
    if math.isnan(p_value) or p_value >= alpha:
        return "pass", effect, p_value
    centre = 0.0 if spec.effect == "difference" else 1.0
    if effect > centre + spec.tolerance:
        return "high", effect, p_value
    if effect < centre - spec.tolerance:
        return "low", effect, p_value
    return "pass", effect, p_value


def _is_failure(cls: MetricClass, direction: Direction) -> bool:
    if cls == "high":
        return direction in ("increase", "either")
    if cls == "low":
        return direction in ("decrease", "either")
    return False


# ---- from batch rows to samples ------------------------------------------------------------------
def _finished(batches: pd.DataFrame) -> pd.DataFrame:
    return batches[batches["status"].isin(FINISHED)]


def _float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("float64")


def metric_samples(batches: pd.DataFrame, name: str) -> np.ndarray:
    """One value per finished batch for a metric of :data:`DEFAULT_METRICS` (or any numeric column)."""
    done = _finished(batches)
    total = _float(done["total"])
    if name == "success_rate":
        values = _float(done["successful"]) / total
    elif name == "error_rate":
        values = _float(done["failed"]) / total
    elif name == "memories_per_s":
        values = _float(done["successful"]) / (_float(done["end_to_end_ms"]) / 1000.0)
    else:
        values = _float(done[name])
    values = values.replace([np.inf, -np.inf], np.nan).dropna()
    return values.to_numpy(dtype="float64")


def _quantile(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def path_percentiles(batches: pd.DataFrame, column: str = "end_to_end_ms") -> pd.DataFrame:
    """Per path: finished batches, p50/p95/p99 of ``column`` (default end-to-end ms)."""
    rows = []
    for storage, group in _finished(batches).groupby("storage"):
        values = _float(group[column]).dropna().to_numpy()
        rows.append(
            {
                "storage": storage,
                "batches": len(values),
                "p50": _quantile(values, 0.50),
                "p95": _quantile(values, 0.95),
                "p99": _quantile(values, 0.99),
            }
        )
    return pd.DataFrame(rows, columns=["storage", "batches", "p50", "p95", "p99"])


# ---- what the window could detect -----------------------------------------------------------------
# Memory rates: per batch, these counts over ``total`` (a binomial model of the memories, not a shift).
_RATE_COUNTS = {"success_rate": "success", "error_rate": "failure"}


def _window_model(spec: MetricSpec, c: np.ndarray, b: np.ndarray, canary: pd.DataFrame, base: pd.DataFrame):
    worse = "lower" if spec.direction == "decrease" else "higher"
    if spec.name in _RATE_COUNTS:
        b_done = _finished(base)
        total = _sum(b_done["total"])
        if not total:
            return None
        sizes = _float(pd.concat([_finished(canary)["total"], b_done["total"]])).dropna().to_numpy()
        return BinomialModel(_sum(b_done["successful"]) / total, sizes, metric=_RATE_COUNTS[spec.name])
    return ShiftModel(c, b, worse=worse, log=spec.effect == "ratio")  # type: ignore[arg-type]


def _tolerance_change(spec: MetricSpec) -> float:
    """The tolerance in the model's unit: a log ratio for ratio metrics, the difference itself otherwise."""
    if spec.effect != "ratio":
        return spec.tolerance
    up = math.log1p(spec.tolerance)
    down = -math.log(1 - spec.tolerance) if spec.tolerance < 1 else math.inf
    return {"increase": up, "decrease": down}.get(spec.direction, min(up, down))


def _as_effect(spec: MetricSpec, change: float) -> float:
    """A regression of ``change`` (model unit) as the judge's ``effect``: a ratio, or a signed difference."""
    if spec.effect == "ratio":
        return math.exp(-change) if spec.direction == "decrease" else math.exp(change)
    return -change if spec.direction == "decrease" else change


def _detection(
    spec: MetricSpec,
    c: np.ndarray,
    b: np.ndarray,
    canary: pd.DataFrame,
    base: pd.DataFrame,
    config: CanaryConfig,
    cache: dict[object, float],
) -> tuple[float | None, bool, WindowModel | None]:
    """(detectable effect, whether the tolerance is within it, the model) for one metric. ``cache``
    holds answers per model: success and error rate mirror each other and share one."""
    model = _window_model(spec, c, b, canary, base)
    if model is None or len(c) == 0 or len(b) == 0:
        return None, False, model
    key = (model.key(), len(c), len(b)) if isinstance(model, BinomialModel) else object()
    if key not in cache:
        cache[key] = smallest_change(model, len(c), len(b), _target(config))
    change = cache[key]
    return _as_effect(spec, change), change <= _tolerance_change(spec), model


def _target(config: CanaryConfig) -> PowerTarget:
    return PowerTarget(
        alpha=config.alpha,
        power=config.power,
        simulations=config.simulations,
        max_batches=config.max_batches_per_path,
    )


def _compare(canary: pd.DataFrame, baseline: pd.DataFrame, config: CanaryConfig) -> pd.DataFrame:
    rows = []
    cache: dict[object, float] = {}
    for spec in config.metrics:
        c, b = metric_samples(canary, spec.name), metric_samples(baseline, spec.name)
        cls, effect, p_value = classify(c, b, spec, alpha=config.alpha, min_samples=config.min_samples)
        detectable_effect, detectable, model = _detection(spec, c, b, canary, baseline, config, cache)
        needed: int | None = None
        if cls == "pass" and not detectable:
            # Not significant, but a regression at the tolerance could have gone unseen: no evidence.
            cls = "inconclusive"
        if cls in ("inconclusive", "nodata") and model is not None:
            needed = batches_needed(
                model, _tolerance_change(spec), _target(config), at_least=config.min_samples
            )
        rows.append(
            {
                "metric": spec.name,
                "class": cls,
                "failed": _is_failure(cls, spec.direction),
                "weight": float(spec.weight),
                "direction": spec.direction,
                "effect_kind": spec.effect,
                "tolerance": spec.tolerance,
                "n_baseline": len(b),
                "n_canary": len(c),
                "baseline_median": _quantile(b, 0.5),
                "canary_median": _quantile(c, 0.5),
                "baseline_p95": _quantile(b, 0.95),
                "canary_p95": _quantile(c, 0.95),
                "baseline_p99": _quantile(b, 0.99),
                "canary_p99": _quantile(c, 0.99),
                "effect": effect,
                "p_value": p_value,
                "detectable_effect": detectable_effect,
                "detectable": detectable,
                "batches_needed": needed,
            }
        )
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    frame["batches_needed"] = pd.array(frame["batches_needed"].tolist(), dtype="Int64")
    return frame


def _score(metrics: pd.DataFrame) -> float | None:
    decided = metrics[metrics["class"].isin(["pass", "high", "low"])]
    if decided.empty:
        return None
    return 100.0 * float(decided.loc[~decided["failed"], "weight"].sum()) / float(decided["weight"].sum())


# ---- hard gates ----------------------------------------------------------------------------------
# Parse error codes that mean "this memory's own data was refused": they happen to the same memories on
# either path, so they say nothing about the path's health (the success-rate comparison covers a path
# that refuses more). Every other Parse error (5xx, internal error 1, connection 100, timeout 124,
# permission 119/209, unknown codes) is the infrastructure's.
DATA_ERROR_CODES: dict[int, str] = {
    105: "invalid field name",
    111: "value of the wrong type for its field",
    116: "object too large",
    121: "invalid nested key (a metadata key with '.' or '$')",
    142: "refused by a validation rule",
}
_PARSE_CODE = re.compile(r"^Parse error (\d+)$")


def is_infrastructure_error(error_type: str) -> bool:
    """Whether a recorded error type (``metrics.error_type``, e.g. ``Parse error 121``) is a Parse
    infrastructure failure rather than a memory refused for its own data. Non-Parse types are neither."""
    text = str(error_type).strip()
    if not text.lower().startswith("parse"):
        return False
    code = _PARSE_CODE.match(text)
    return code is None or int(code.group(1)) not in DATA_ERROR_CODES


def _sum(series: pd.Series) -> int:
    return int(pd.to_numeric(series, errors="coerce").fillna(0).sum())


def _timeouts(canary: pd.DataFrame, until: datetime, timeout_s: float) -> int:
    timed_out = canary["run_status"].isin(["TIMED_OUT"]) if "run_status" in canary else False
    created = pd.to_datetime(canary["created_at"], utc=True)
    stuck = ~canary["status"].isin(FINISHED) & (created < until - timedelta(seconds=timeout_s))
    return int((timed_out | stuck).sum())


def _parse_errors(canary: pd.DataFrame) -> tuple[int, dict[str, int]] | None:
    """(infrastructure errors, data errors by type) recorded on canary batches; None if types were not
    collected."""
    if "error_types" not in canary:
        return None
    infrastructure, data = 0, {}
    for types in canary["error_types"]:
        if not isinstance(types, list | tuple | np.ndarray):
            continue
        for kind in types:
            if is_infrastructure_error(kind):
                infrastructure += 1
            elif str(kind).lower().startswith("parse"):
                data[str(kind)] = data.get(str(kind), 0) + 1
    return infrastructure, data


def _history_gate(canary: pd.DataFrame, budget: int) -> dict[str, object]:
    """The plan's budget is for one batch stored as one file; a chunked batch runs one activity per chunk
    file, so its history is held against the budget per chunk (20 chunks of a 100,000-memory batch
    measured 16–18 KB in all)."""
    done = _finished(canary)
    history = _float(done["history_bytes"])
    chunks = (
        _float(done["chunks"]).fillna(1).clip(lower=1)
        if "chunks" in done
        else pd.Series(1.0, index=done.index)
    )
    per_unit = (history / chunks).dropna()
    if per_unit.empty:
        return {"gate": "history per canary batch", "passed": False, "detail": "no history measured"}
    worst = per_unit.idxmax()
    worst_chunks = int(chunks[worst])
    passed = float(per_unit[worst]) < budget
    if worst_chunks > 1:
        detail = (
            f"largest {float(per_unit[worst]):,.0f} B per chunk ({int(history[worst]):,} B over "
            f"{worst_chunks} chunk files; limit {budget:,} B per batch or chunk)"
        )
    else:
        detail = f"largest {int(history[worst]):,} B (limit {budget:,} B per batch or chunk)"
    return {"gate": "history per canary batch", "passed": passed, "detail": detail}


def _gates(
    canary: pd.DataFrame,
    baseline: pd.DataFrame,
    config: CanaryConfig,
    until: datetime,
    rates: tuple[float | None, float | None],
) -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    timeouts = _timeouts(canary, until, config.batch_timeout_s)
    rows.append(
        {
            "gate": "no timeouts",
            "passed": timeouts == 0,
            "detail": f"{timeouts} canary batches timed out or unfinished after {config.batch_timeout_s:g} s",
        }
    )
    errors = _parse_errors(canary)
    if errors is None:
        # Not measurable (no error types collected) is not evidence of health: it fails.
        detail, passed = "error types not collected", False
    else:
        infrastructure, data = errors
        passed = infrastructure == 0
        detail = f"{infrastructure} Parse infrastructure errors recorded on canary batches"
        if data:
            listed = ", ".join(f"{kind} ×{count}" for kind, count in sorted(data.items()))
            detail += (
                f"; memories refused for their own data ({listed}) are left to the success-rate comparison"
            )
    rows.append({"gate": "no Parse infrastructure errors", "passed": passed, "detail": detail})
    c_rate, b_rate = rates
    if c_rate is None or b_rate is None:
        rows.append({"gate": "success rate", "passed": False, "detail": "no finished memories on a path"})
    else:
        rows.append(
            {
                "gate": "success rate",
                "passed": c_rate >= b_rate - config.success_tolerance,
                "detail": f"canary {c_rate:.2%} vs baseline {b_rate:.2%} "
                f"(may be at most {config.success_tolerance:.2%} lower)",
            }
        )
    if config.max_canary_history_bytes is not None:
        rows.append(_history_gate(canary, config.max_canary_history_bytes))
    return pd.DataFrame(rows, columns=GATE_COLUMNS)


# ---- the judge -----------------------------------------------------------------------------------
def judge(
    batches: pd.DataFrame,
    config: CanaryConfig | None = None,
    *,
    until: datetime | None = None,
    baseline: pd.DataFrame | None = None,
) -> CanaryVerdict:
    """Judge the canary (``storage == "reference"``) against the baseline (``"legacy"``) in ``batches``.

    ``baseline`` replaces the legacy rows of ``batches`` (e.g. at 100 %, when the window holds no
    legacy traffic, the runbook passes the legacy rows of an earlier window). ``until`` is the end
    of the window, for the timeout gate (default: now).
    """
    config = config or CanaryConfig()
    until = (until or datetime.now(UTC)).astimezone(UTC)
    canary = batches[batches["storage"] == CANARY]
    base = baseline if baseline is not None else batches[batches["storage"] == BASELINE]
    if baseline is not None:
        base = base[base["storage"] == BASELINE]
    n_canary, n_baseline = len(_finished(canary)), len(_finished(base))

    c_done, b_done = _finished(canary), _finished(base)
    c_total, b_total = _sum(c_done["total"]), _sum(b_done["total"])
    c_ok, b_ok = _sum(c_done["successful"]), _sum(b_done["successful"])
    c_rate = c_ok / c_total if c_total else None
    b_rate = b_ok / b_total if b_total else None
    diff = low = high = None
    if c_total and b_total:
        diff, low, high = newcombe_interval(c_ok, c_total, b_ok, b_total, config.confidence)

    metrics = _compare(canary, base, config)
    gates = _gates(canary, base, config, until, (c_rate, b_rate))
    score = _score(metrics)
    reasons: list[str] = []
    needs = [int(n) for n in metrics["batches_needed"].dropna()]
    unknown_need = bool(((metrics["class"] == "inconclusive") & metrics["batches_needed"].isna()).any())
    needed: int | None = None if unknown_need else max([config.min_samples, *needs])
    too_many = f"more than {config.max_batches_per_path}"

    if n_canary < config.min_samples or n_baseline < config.min_samples:
        verdict: Verdict = "not enough data"
        reasons.append(
            f"{n_canary} canary and {n_baseline} baseline finished batches; need {config.min_samples} each "
            f"before anything is judged, and about {needed if needed is not None else too_many} per path "
            "to decide at the tolerances"
        )
    else:
        for gate in gates.to_dict("records"):
            if not gate["passed"]:
                reasons.append(f"hard gate '{gate['gate']}' failed: {gate['detail']}")
        specs = {m.name: m for m in config.metrics}
        records = metrics.to_dict("records")
        for row in records:
            if row["failed"]:
                kind = "critical metric" if specs[row["metric"]].critical else "metric"
                reasons.append(
                    f"{kind} {row['metric']} is {row['class']} (effect {row['effect']:.3g}, "
                    f"p={row['p_value']:.3g}, tolerance {row['tolerance']:g})"
                )
        critical_failed = any(row["failed"] and specs[row["metric"]].critical for row in records)
        inconclusive = [row for row in records if row["class"] == "inconclusive"]
        if critical_failed or not gates["passed"].all():
            verdict = "fail"
        elif score is not None and score < config.marginal_threshold:
            verdict = "fail"
            reasons.append(f"score {score:.1f} below marginal {config.marginal_threshold:g}")
        elif inconclusive or score is None:
            verdict = "not enough data"
            for row in inconclusive:
                need = row["batches_needed"]
                reasons.append(
                    f"{row['metric']}: no significant difference, but this window would only have caught "
                    f"{_describe_change(row)}; about {too_many if pd.isna(need) else int(need)} batches "
                    f"per path needed (now {n_canary} canary, {n_baseline} baseline)"
                )
            if score is None and not inconclusive:
                reasons.append("no metric had enough samples")
        elif score >= config.pass_threshold:
            verdict = "pass"
        else:
            verdict = "marginal"
            reasons.append(f"score {score:.1f} below pass {config.pass_threshold:g}")
    if verdict != "not enough data":
        needed = None
    return CanaryVerdict(
        verdict=verdict,
        score=score,
        n_canary=n_canary,
        n_baseline=n_baseline,
        metrics=metrics,
        gates=gates,
        success_rate_canary=c_rate,
        success_rate_baseline=b_rate,
        success_diff=diff,
        success_diff_low=low,
        success_diff_high=high,
        reasons=reasons,
        batches_needed=needed,
        alpha=config.alpha,
        power=config.power,
    )
