"""Profile planning: defaults, validation, nearest-opt selection, unsupported-shape error, per-input shapes."""

from __future__ import annotations

import re

import pytest

from fairsample.core.engine_spec import ShapeProfile
from fairsample.core.errors import ConfigError
from fairsample.export.trt_profiles import (
    BAD_BATCH,
    BAD_STATIC_DIM,
    DUPLICATE_PROFILE,
    NO_PROFILES,
    UNEXPECTED_DYNAMIC_DIM,
    UNSUPPORTED_SHAPE,
    default_profiles,
    describe_profiles,
    input_shapes,
    profile_to_dict,
    select_profile,
    validate_profiles,
)


def _prefix(template: str) -> str:
    return re.escape(template.split("{")[0])


def test_defaults_are_b_and_2b_at_native_resolution() -> None:
    profiles = default_profiles(32, 4)
    assert [(p.min, p.opt, p.max) for p in profiles] == [
        ((1, 32, 32), (4, 32, 32), (4, 32, 32)),
        ((1, 32, 32), (8, 32, 32), (8, 32, 32)),
    ]


def test_defaults_add_resolutions_and_user_profiles_without_duplicates() -> None:
    user = ShapeProfile(min=(1, 16, 16), opt=(2, 24, 24), max=(4, 32, 32))
    profiles = default_profiles((32, 48), 1, resolutions=[64], extra=[user, profile_to_dict(user)])
    assert [p.opt for p in profiles] == [(1, 32, 48), (2, 32, 48), (1, 64, 64), (2, 64, 64), (2, 24, 24)]


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_bad_batch_is_rejected(batch: object) -> None:
    with pytest.raises(ConfigError, match=_prefix(BAD_BATCH)):
        default_profiles(32, batch)  # type: ignore[arg-type]


def test_validate_checks_order_emptiness_and_duplicates() -> None:
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        validate_profiles([{"min": (1, 8, 8), "opt": (4, 8, 8), "max": (2, 8, 8)}])
    with pytest.raises(ConfigError, match=re.escape(NO_PROFILES)):
        validate_profiles([])
    p = ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(2, 8, 8))
    with pytest.raises(ConfigError, match=_prefix(DUPLICATE_PROFILE)):
        validate_profiles([p, p])
    with pytest.raises(ConfigError, match="must be a ShapeProfile"):
        validate_profiles([(1, 2, 3)])  # type: ignore[list-item]


def test_selection_prefers_nearest_resolution_then_batch() -> None:
    profiles = (
        ShapeProfile(min=(1, 32, 32), opt=(2, 64, 64), max=(8, 96, 96)),
        ShapeProfile(min=(1, 32, 32), opt=(8, 48, 48), max=(8, 96, 96)),
        ShapeProfile(min=(1, 32, 32), opt=(2, 48, 48), max=(8, 96, 96)),
    )
    assert select_profile(profiles, 2, 64, 64) == 0  # exact opt
    assert select_profile(profiles, 6, 48, 48) == 1  # same H·W distance 0, N nearer to 8
    assert select_profile(profiles, 3, 48, 48) == 2  # N nearer to 2
    assert select_profile(profiles, 2, 40, 56) == 2  # L1 |dH|+|dW| = 16 beats 24+8=32


def test_selection_only_considers_containing_profiles_and_ties_go_first() -> None:
    profiles = (
        ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(2, 8, 8)),
        ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(4, 8, 8)),
        ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(8, 8, 8)),
    )
    assert select_profile(profiles, 2, 8, 8) == 0
    assert select_profile(profiles, 3, 8, 8) == 1
    assert select_profile(profiles, 8, 8, 8) == 2


def test_unsupported_shape_lists_every_range() -> None:
    profiles = default_profiles(32, 2)
    with pytest.raises(ConfigError, match=_prefix(UNSUPPORTED_SHAPE)) as info:
        select_profile(profiles, 5, 32, 32)
    msg = str(info.value)
    assert "N=5, H=32, W=32" in msg and describe_profiles(profiles) in msg and "\n" not in msg


def test_input_shapes_fill_dynamic_dims_and_keep_static_ones() -> None:
    p = ShapeProfile(min=(1, 8, 8), opt=(2, 16, 8), max=(4, 16, 16))
    assert input_shapes(p, "sample", (-1, 4, -1, -1)) == ((1, 4, 8, 8), (2, 4, 16, 8), (4, 4, 16, 16))
    assert input_shapes(p, "timestep", ("N",)) == ((1,), (2,), (4,))
    assert input_shapes(p, "encoder_hidden_states", (-1, 77, 768))[1] == (2, 77, 768)


def test_input_shapes_reject_specialised_and_unexpected_dynamic_dims() -> None:
    p = ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(4, 8, 8))
    with pytest.raises(ConfigError, match=_prefix(BAD_STATIC_DIM)):
        input_shapes(p, "sample", (2, 4, -1, -1))  # N specialised to 2 by the exporter
    with pytest.raises(ConfigError, match=_prefix(UNEXPECTED_DYNAMIC_DIM)):
        input_shapes(p, "encoder_hidden_states", (-1, "S", 768))
    with pytest.raises(ConfigError, match="rank 3"):
        input_shapes(p, "sample", (-1, 4, -1))
