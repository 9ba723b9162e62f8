"""CUDA-graph LRU bookkeeping: warm-up, capture, replay, eviction, clear-after-refit, capacity 0 (ENGINES.md §9)."""

from __future__ import annotations

import pytest

from fairsample.core.errors import ConfigError
from fairsample.engines.tensorrt.graphs import CudaGraphLRU


def test_warmup_then_capture_then_replay() -> None:
    lru: CudaGraphLRU[tuple[int, ...], str] = CudaGraphLRU(capacity=2, warmup_calls=2)
    key = (0, 2, 32, 32)
    assert [lru.decide(key), lru.decide(key), lru.decide(key)] == ["eager", "eager", "capture"]
    assert lru.store(key, "g") == []
    assert lru.decide(key) == "replay" and lru.get(key) == "g" and lru.hits == 1


def test_least_recently_used_is_evicted() -> None:
    lru: CudaGraphLRU[str, str] = CudaGraphLRU(capacity=2)
    for k in ("a", "b"):
        lru.decide(k)
        assert lru.decide(k) == "capture"
        lru.store(k, f"g{k}")
    assert lru.decide("a") == "replay"  # "b" is now least recently used
    lru.decide("c")
    assert lru.decide("c") == "capture"
    assert lru.store("c", "gc") == ["gb"]
    assert "b" not in lru and "a" in lru and len(lru) == 2
    assert lru.values() == ["ga", "gc"]


def test_clear_forces_recapture() -> None:
    lru: CudaGraphLRU[str, str] = CudaGraphLRU(capacity=4)
    lru.decide("a"), lru.decide("a")
    lru.store("a", "ga")
    assert lru.clear() == ["ga"] and len(lru) == 0
    assert [lru.decide("a"), lru.decide("a")] == ["eager", "capture"]


def test_capacity_zero_never_captures_and_warmup_table_is_bounded() -> None:
    off: CudaGraphLRU[int, str] = CudaGraphLRU(capacity=0)
    assert {off.decide(1) for _ in range(5)} == {"eager"}
    lru: CudaGraphLRU[int, str] = CudaGraphLRU(capacity=1)
    for k in range(100):
        lru.decide(k)
    assert len(lru._seen) <= 4


@pytest.mark.parametrize(("capacity", "warmup"), [(-1, 1), (2, 0)])
def test_bad_arguments(capacity: int, warmup: int) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        CudaGraphLRU(capacity, warmup_calls=warmup)
