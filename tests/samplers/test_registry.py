"""SAMPLERS registry and ``get_sampler``."""

from __future__ import annotations

import re

import pytest

from fairsample.core.errors import ConfigError
from fairsample.samplers import _UNKNOWN_SAMPLER, SAMPLERS, get_sampler, sample_conditional


def test_conditional_is_registered() -> None:
    assert SAMPLERS["conditional"] is sample_conditional
    assert get_sampler("conditional") is sample_conditional


def test_unknown_sampler_lists_sorted_names() -> None:
    with pytest.raises(ConfigError, match=re.escape(_UNKNOWN_SAMPLER.format(names=sorted(SAMPLERS), name="edm"))):
        get_sampler("edm")
