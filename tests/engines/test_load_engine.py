"""``load_engine``: the torch backend from a bundle; other names fail with the supported list."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import _UNKNOWN_BACKEND, BACKENDS, Engine, TorchEngine, load_engine


def test_loads_the_torch_backend(make_unet) -> None:
    engine = load_engine(SimpleNamespace(unet=make_unet(), prediction_type="v_prediction"))
    assert isinstance(engine, TorchEngine) and isinstance(engine, Engine)
    assert engine.spec.prediction_type == "v_prediction"
    assert engine.device == torch.device("cpu")


def test_passes_dtype(make_unet) -> None:
    engine = load_engine(SimpleNamespace(unet=make_unet(), prediction_type="epsilon"), dtype=torch.bfloat16)
    assert engine.spec.precision == "bf16"


@pytest.mark.parametrize("backend", ["TensorRT", "Torch", "ort"])
def test_unknown_backend_lists_supported_ones(make_unet, backend: str) -> None:
    bundle = SimpleNamespace(unet=make_unet(), prediction_type="epsilon")
    msg = _UNKNOWN_BACKEND.format(supported=list(BACKENDS), backend=backend)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        load_engine(bundle, backend=backend)
    with pytest.raises(ValueError):
        load_engine(bundle, backend=backend)
