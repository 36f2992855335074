"""--max-memory parsing, the memory plan, and the boundary store's spill to disk."""

from __future__ import annotations

import pytest
import torch

from prunecomp.engine import BoundaryStore, MemoryBudgetError, parse_memory, plan_memory


@pytest.mark.parametrize(
    "text, expected",
    [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5gb", 1_500_000_000), ("1GiB", 2**30), ("123", 123), ("auto", None), (None, None)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["2 parsecs", "GB", "-1GB", "0MB"])
def test_parse_memory_rejects_nonsense(text):
    with pytest.raises(MemoryBudgetError, match="memory"):
        parse_memory(text)


def test_plan_leaves_the_rest_of_the_budget_to_boundaries():
    plan = plan_memory(10_000, resident_bytes=1_000, layer_bytes=2_000, boundary_bytes=500)
    assert plan.activation_capacity == 10_000 - 1_000 - 2_000 - 2 * 500
    assert "12 boundaries" in plan.describe("layer-wise", "cpu")
    assert plan_memory(None, 1, 1, 1).activation_capacity is None


def test_plan_says_what_does_not_fit():
    with pytest.raises(MemoryBudgetError, match="too small"):
        plan_memory(1_000, resident_bytes=500, layer_bytes=600, boundary_bytes=10)


def test_store_spills_beyond_capacity_and_reads_back(tmp_path):
    store = BoundaryStore(capacity=4 * 16, spill_dir=tmp_path)
    a, b = [torch.arange(16, dtype=torch.float32)], [torch.ones(4, 4)]
    store.put("a", a)
    store.put("b", b)  # over capacity: goes to disk
    assert store.bytes_in_memory == 64 and store.spilled_writes == 1
    torch.testing.assert_close(store.get("b")[0], b[0])
    store.drop("b")
    assert "b" not in store
    store.close()
    assert not any(tmp_path.iterdir())
