"""The memory budget that the console's uploads and previews share: reserve, wait, refuse."""

from __future__ import annotations

from bcd_node.node.memory_budget import Busy, MemoryBudget, TooLarge


def test_memory_budget() -> None:
    budget = MemoryBudget(100)
    with budget.reserve(60, wait=0):
        assert (budget.used, budget.holders) == (60, 1)
        try:
            with budget.reserve(50, wait=0.05):
                raise AssertionError("should not fit")
        except Busy:
            pass
        with budget.reserve(40, wait=0):
            assert budget.used == 100
    assert budget.used == 0
    try:
        with budget.reserve(101, wait=10):
            raise AssertionError("can never fit")
    except TooLarge as exc:
        assert "101" in str(exc)
