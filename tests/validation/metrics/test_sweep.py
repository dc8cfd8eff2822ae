"""The sweep is toolkit bench as a DataFrame; its reduction table passes the gates on the real stack."""

from __future__ import annotations

from toolkit.settings import Settings
from toolkit.validation.metrics import payload_gate_failures, payload_reduction, run_sweep
from toolkit.validation.workloads import chitchat_memories


async def test_a_small_sweep_on_both_paths_meets_the_payload_targets(settings: Settings) -> None:
    sweep = await run_sweep(settings, [20], workload="chitchat")
    assert sorted(sweep.path) == ["baseline", "legacy", "reference"]
    assert (sweep.success_rate == 1.0).all() and sweep.error.isna().all()
    table = payload_reduction(sweep)
    row = table.iloc[0]
    assert row.memories == 20 and row.workload == "chitchat"
    # The legacy input carries every memory's text; the reference input carries none of it.
    content_bytes = sum(len(m["content"].encode()) for m in chitchat_memories(20))
    assert row.reference_input_bytes < 100 < content_bytes < row.legacy_input_bytes
    # The formula is pinned with hand-computed figures in test_gates.py; here the row must compare this
    # sweep's two paths the right way round: under 100 B against over content_bytes is > 98 % saved.
    assert 98.0 < row.input_reduction_pct < 100.0
    assert row.reference_history_bytes < 10_000 and row.history_reduction_pct > 50
    # The absolute limits hold at 20 memories; the percentage targets apply from 100 memories up,
    # because a 20-memory legacy input is itself only ~5 KB (measured: 98.6 % smaller, not 99 %).
    assert payload_gate_failures(table) == []
    assert payload_gate_failures(table, reduction_min_memories=20) != []
