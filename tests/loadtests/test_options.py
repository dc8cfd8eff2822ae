"""The locustfile's option checks, without Locust: a bad value stops the parser with the reason."""

from __future__ import annotations

import argparse
import importlib.util
from types import ModuleType

import pytest

from toolkit.settings import REPO_ROOT


def _options_module() -> ModuleType:
    # loadtests/ is not a package (Locust puts it on sys.path); load the file the way Locust would.
    spec = importlib.util.spec_from_file_location("_options", REPO_ROOT / "loadtests" / "_options.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locust")
    _options_module().add_options(parser, ["concurrent", "large", "stress", "sustained"])
    return parser


def test_defaults_leave_the_flags_alone_and_take_the_scenario_shapes(parser: argparse.ArgumentParser) -> None:
    options = parser.parse_args([])
    assert (options.scenario, options.path, options.workload, options.webhooks) == (
        "concurrent", "current", "chitchat", False,
    )  # fmt: skip
    assert (options.batch_size, options.batches_per_user, options.interval_s) == (None, None, None)
    assert options.stress_steps == (10, 25, 50, 100)
    parsed = parser.parse_args(["--stress-steps", "1, 2,5", "--interval-s", "0", "--gate-success-pct", "100"])
    assert (parsed.stress_steps, parsed.interval_s, parsed.gate_success_pct) == ((1, 2, 5), 0.0, 100.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenario", "soak"], "argument --scenario: invalid choice: 'soak'"),
        (["--path", "canary"], "argument --path: invalid choice: 'canary'"),
        (["--workload", "lorem"], "argument --workload: invalid choice: 'lorem'"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--batch-size", "ten"], "argument --batch-size: must be a whole number, got 'ten'"),
        (["--batches-per-user", "-3"], "argument --batches-per-user: must be at least 1, got -3"),
        (["--interval-s", "-1"], "argument --interval-s: must be at least 0, got -1"),
        (["--interval-s", "nan"], "argument --interval-s: must be at least 0, got nan"),
        (["--job-timeout-s", "0"], "argument --job-timeout-s: must be greater than 0, got 0"),
        (["--stress-steps", "25,10"], "argument --stress-steps: user counts must rise, got '25,10'"),
        (["--gate-success-pct", "101"], "argument --gate-success-pct: must be at most 100, got 101"),
    ],
)
def test_bad_values_stop_the_parser_with_the_reason(
    parser: argparse.ArgumentParser, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
