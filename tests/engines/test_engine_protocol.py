"""TorchEngine satisfies the Engine protocol and describes itself (ENGINES.md §2.2)."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import Engine, EngineSpec, TorchEngine
from fairsample.engines.torch_engine import _BAD_PREDICTION_TYPE, _NOT_A_UNET

from .conftest import HIDDEN_DIM


def test_is_an_engine(engine: TorchEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.backend == "torch"
    assert engine.device == torch.device("cpu")
    assert engine.capabilities == frozenset({"dynamic_shapes", "refit"})


def test_spec_reads_the_unet_config(engine: TorchEngine) -> None:
    assert engine.spec == EngineSpec(
        in_channels=3,
        out_channels=3,
        sample_size=(8, 8),
        seq_len=None,
        hidden_dim=HIDDEN_DIM,
        prediction_type="epsilon",
        precision="fp32",
    )


def test_manifest_is_read_only_and_names_versions(engine: TorchEngine) -> None:
    assert engine.manifest["backend"] == "torch"
    assert engine.manifest["torch_version"] == torch.__version__
    assert engine.manifest["batch_invariant"] is True
    with pytest.raises(TypeError):
        engine.manifest["backend"] = "tensorrt"  # type: ignore[index]


def test_rejects_bad_prediction_type(make_unet) -> None:
    msg = _BAD_PREDICTION_TYPE.format(allowed=["epsilon", "v_prediction", "sample"], value="eps")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        TorchEngine(make_unet(), prediction_type="eps")


def test_rejects_non_unet() -> None:
    with pytest.raises(ConfigError, match=_NOT_A_UNET.format(type_name="Linear")):
        TorchEngine(torch.nn.Linear(2, 2), prediction_type="epsilon")  # type: ignore[arg-type]


def test_from_bundle_uses_unet_and_prediction_type(make_unet) -> None:
    class Bundle:
        unet = make_unet()
        prediction_type = "v_prediction"

    engine = TorchEngine.from_bundle(Bundle())
    assert engine.spec.prediction_type == "v_prediction"
    assert engine.unet is Bundle.unet
