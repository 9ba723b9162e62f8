"""ConditioningPlan validation: [B, S, D] cond, [B or 1, S, D] uncond, B opaque cells."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.samplers import ConditioningPlan
from fairsample.samplers.base import _BAD_CELLS, _BAD_PLAN_TENSOR, _BAD_UNCOND_SHAPE


def test_shared_null_row_is_expanded() -> None:
    plan = ConditioningPlan(cond=torch.randn(3, 4, 16), uncond=torch.randn(1, 4, 16), cells=["a", "b", "c"])
    assert plan.batch_size == 3
    assert plan.cells == ("a", "b", "c")
    rows = plan.uncond_rows()
    assert rows.shape == (3, 4, 16)
    assert torch.equal(rows[2], plan.uncond[0])


def test_cells_are_opaque_objects() -> None:
    cells = (CellKey((("tone", "dark"),), "1"), None, 3)
    plan = ConditioningPlan(cond=torch.zeros(3, 2, 8), uncond=torch.zeros(3, 2, 8), cells=cells)
    assert plan.cells == cells


def test_plan_is_frozen() -> None:
    plan = ConditioningPlan(cond=torch.zeros(1, 2, 8), uncond=torch.zeros(1, 2, 8), cells=("a",))
    with pytest.raises(AttributeError):
        plan.cells = ("b",)  # type: ignore[misc]


def test_uncond_shape_must_match() -> None:
    msg = _BAD_UNCOND_SHAPE.format(got=[2, 4, 16], b=3, s=4, d=16, cond=[3, 4, 16])
    with pytest.raises(ConfigError, match=re.escape(msg)):
        ConditioningPlan(cond=torch.zeros(3, 4, 16), uncond=torch.zeros(2, 4, 16), cells=("a", "b", "c"))


def test_cells_must_match_the_batch() -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_CELLS.format(got=1, b=2))):
        ConditioningPlan(cond=torch.zeros(2, 4, 16), uncond=torch.zeros(1, 4, 16), cells=("a",))


@pytest.mark.parametrize(
    ("cond", "got"),
    [
        (torch.zeros(2, 16), "torch.float32 [2, 16]"),
        (torch.zeros(2, 4, 16, dtype=torch.long), "torch.int64 [2, 4, 16]"),
    ],
)
def test_cond_must_be_a_3d_float_tensor(cond: torch.Tensor, got: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_PLAN_TENSOR.format(name="cond", got=got))):
        ConditioningPlan(cond=cond, uncond=torch.zeros(1, 4, 16), cells=("a", "b"))
