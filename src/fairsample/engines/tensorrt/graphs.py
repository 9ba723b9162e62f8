"""Bounded per-shape CUDA-graph bookkeeping of the TensorRT engine (ENGINES.md §9): eager warm-up, capture, replay and
least-recently-used eviction (:class:`CudaGraphLRU`, pure Python, unit-tested on CPU), and the captured graph with its
static buffers (:class:`_GraphEntry`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from torch import Tensor

from fairsample.core.errors import ConfigError

DEFAULT_MAX_GRAPHS = 8
"""CUDA graphs kept per engine (one per exact (profile, N, H, W)); least recently used ones are dropped."""
BAD_GRAPH_LRU = "`capacity` must be an int >= 0 and `warmup_calls` an int >= 1, got {capacity!r} and {warmup!r}."

K = TypeVar("K", bound=Hashable)
G = TypeVar("G")


class CudaGraphLRU(Generic[K, G]):
    """Bounded per-shape CUDA-graph bookkeeping (ENGINES.md §9): eager warm-up, capture, replay, LRU eviction.

    :meth:`decide` returns ``"eager"`` for the first ``warmup_calls`` calls at a key (the warm-up TensorRT needs
    before capture, and no capture for one-off shapes), then ``"capture"`` once, then ``"replay"``. At most
    ``capacity`` graphs are kept; storing one more evicts the least recently used. ``capacity=0`` disables graphs.
    :meth:`clear` (after every refit) drops every graph and the warm-up counts.

    Example:
        >>> lru = CudaGraphLRU(capacity=1)
        >>> [lru.decide("a"), lru.decide("a")]
        ['eager', 'capture']
        >>> lru.store("a", "graph-a")
        []
        >>> lru.decide("a"), lru.decide("b"), lru.decide("b")
        ('replay', 'eager', 'capture')
        >>> lru.store("b", "graph-b"), len(lru)
        (['graph-a'], 1)
    """

    def __init__(self, capacity: int = DEFAULT_MAX_GRAPHS, *, warmup_calls: int = 1) -> None:
        if not (isinstance(capacity, int) and capacity >= 0 and isinstance(warmup_calls, int) and warmup_calls >= 1):
            raise ConfigError(BAD_GRAPH_LRU.format(capacity=capacity, warmup=warmup_calls))
        self.capacity = capacity
        self.warmup_calls = warmup_calls
        self._graphs: OrderedDict[K, G] = OrderedDict()
        self._seen: OrderedDict[K, int] = OrderedDict()
        self.hits = 0
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: object) -> bool:
        return key in self._graphs

    def decide(self, key: K) -> Literal["eager", "capture", "replay"]:
        """Record a call at ``key`` and say how to run it."""
        if key in self._graphs:
            self._graphs.move_to_end(key)
            self.hits += 1
            return "replay"
        if self.capacity == 0:
            return "eager"
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        while len(self._seen) > 4 * self.capacity:  # bound the warm-up table too
            self._seen.popitem(last=False)
        return "capture" if count > self.warmup_calls else "eager"

    def store(self, key: K, graph: G) -> list[G]:
        """Keep ``graph`` for ``key``; returns the evicted graphs (free them)."""
        self._seen.pop(key, None)
        self._graphs[key] = graph
        self._graphs.move_to_end(key)
        self.captures += 1
        evicted: list[G] = []
        while len(self._graphs) > self.capacity:
            evicted.append(self._graphs.popitem(last=False)[1])
        return evicted

    def values(self) -> list[G]:
        """The stored graphs, least recently used first."""
        return list(self._graphs.values())

    def get(self, key: K) -> G:
        """The stored graph for ``key`` (KeyError when absent)."""
        return self._graphs[key]

    def clear(self) -> list[G]:
        """Drop every graph and warm-up count; returns the dropped graphs."""
        dropped = list(self._graphs.values())
        self._graphs.clear()
        self._seen.clear()
        return dropped


@dataclass
class _GraphEntry:
    """One captured CUDA graph with its static input and output buffers."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[Tensor, Tensor, Tensor]
    output: Tensor
