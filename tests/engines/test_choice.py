"""backend="auto": the fastest validated engine the machine has, with its reason (issue #15 §3)."""

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import choice


def _machine(monkeypatch, *, cuda: bool, installed: set[str]):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(choice, "_installed", lambda name: name in installed)


@pytest.mark.parametrize(
    ("cuda", "installed", "device", "backend", "where", "why"),
    [
        (True, {"tensorrt", "onnxruntime"}, None, "tensorrt", "cuda", "TensorRT are present"),
        (True, {"onnxruntime"}, None, "torch", "cuda", "TensorRT is not installed"),
        (True, {"tensorrt"}, "cuda:1", "tensorrt", "cuda:1", "TensorRT are present"),
        (True, {"tensorrt", "onnxruntime"}, "cpu", "onnxruntime", "cpu", "fastest validated CPU engine"),
        (False, {"onnxruntime"}, None, "onnxruntime", "cpu", "fastest validated CPU engine"),
        (False, set(), None, "torch", "cpu", "pip install 'fairsample[ort]'"),
    ],
)
def test_auto_order(monkeypatch, cuda, installed, device, backend, where, why):
    _machine(monkeypatch, cuda=cuda, installed=installed)
    c = choice.choose_backend("auto", device)
    assert (c.requested, c.backend, c.device) == ("auto", backend, where)
    assert why in c.reason and c.line().startswith(f"backend: {backend} on {where} (auto: ")


def test_a_named_backend_is_kept(monkeypatch):
    _machine(monkeypatch, cuda=False, installed=set())
    c = choice.choose_backend("torch", None)
    assert (c.backend, c.device, c.requested) == ("torch", "cpu", "torch")


def test_cuda_device_without_cuda_is_an_error(monkeypatch):
    _machine(monkeypatch, cuda=False, installed={"onnxruntime"})
    with pytest.raises(ConfigError, match=r"`device` 'cuda' is not available on this machine"):
        choice.choose_backend("auto", "cuda")


def test_pipeline_records_the_choice(monkeypatch):
    """The pipeline resolves auto, runs that engine and records the choice in every output's manifest."""
    from fairsample.generation.pipeline import FairSamplePipeline

    _machine(monkeypatch, cuda=False, installed=set())  # auto -> torch on cpu (no ONNX export in this test)
    pipe = FairSamplePipeline(backend="auto")
    assert pipe.engine.backend == "torch" and pipe.backend_choice.backend == "torch"
    man = pipe.manifest(pipe.default_config())
    assert man["engine"]["choice"] == {
        "requested": "auto",
        "backend": "torch",
        "device": "cpu",
        "reason": pipe.backend_choice.reason,
    }


def test_default_backend_env(monkeypatch):
    from fairsample.core.config import default_backend

    monkeypatch.delenv("FAIRSAMPLE_BACKEND", raising=False)
    assert default_backend() == "auto"
    monkeypatch.setenv("FAIRSAMPLE_BACKEND", "onnxruntime")
    assert default_backend() == "onnxruntime"
    monkeypatch.setenv("FAIRSAMPLE_BACKEND", "fast")
    with pytest.raises(ConfigError, match=r"\$FAIRSAMPLE_BACKEND='fast' is not a backend"):
        default_backend()
