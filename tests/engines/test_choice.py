"""backend="auto": the fastest validated engine the machine has, with its reason (issue #15 §3)."""

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import choice


def _machine(monkeypatch, *, cuda: bool, installed: set[str], bf16: bool = False):
    from fairsample.engines import openvino_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(choice, "_installed", lambda name: name in installed)
    why = "the CPU reports avx512_bf16" if bf16 else "the CPU reports neither avx512_bf16 nor amx_bf16"
    monkeypatch.setattr(openvino_engine, "bf16_supported", lambda *a, **k: (bf16, why))


@pytest.mark.parametrize(
    ("cuda", "installed", "device", "backend", "where", "why"),
    [
        (True, {"tensorrt", "onnxruntime"}, None, "tensorrt", "cuda", "TensorRT are present"),
        (True, {"onnxruntime"}, None, "torch", "cuda", "TensorRT is not installed"),
        (True, {"tensorrt"}, "cuda:1", "tensorrt", "cuda:1", "TensorRT are present"),
        (True, {"tensorrt", "onnxruntime"}, "cpu", "onnxruntime", "cpu", "fastest validated CPU engine"),
        (False, {"onnxruntime"}, None, "onnxruntime", "cpu", "fastest validated CPU engine"),
        (False, set(), None, "torch", "cpu", "pip install 'fairsample[ort]'"),
        (False, {"openvino", "onnxruntime", "bf16"}, None, "openvino", "cpu", "avx512_bf16 and OpenVINO is installed"),
        (True, {"openvino", "onnxruntime", "bf16"}, "cpu", "openvino", "cpu", "used after it passes the image gate"),
        (True, {"openvino", "onnxruntime", "bf16"}, None, "torch", "cuda", "TensorRT is not installed"),
        (False, {"openvino", "onnxruntime"}, None, "onnxruntime", "cpu", "fastest validated CPU engine"),
        (False, {"openvino", "bf16"}, None, "openvino", "cpu", "bf16 engine"),
    ],
)
def test_auto_order(monkeypatch, cuda, installed, device, backend, where, why):
    _machine(monkeypatch, cuda=cuda, installed=installed - {"bf16"}, bf16="bf16" in installed)
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


def test_pipeline_falls_back_when_the_bf16_gate_fails(monkeypatch):
    """auto picked OpenVINO bf16, its image gate failed: the float32 engine runs, and the reason says why."""
    from fairsample.core.errors import ValidationFailed
    from fairsample.generation import pipeline as pl

    _machine(monkeypatch, cuda=False, installed={"openvino"}, bf16=True)  # no onnxruntime: the fallback is torch
    real, asked = pl.load_engine, []

    def load(bundle, backend="torch", **kw):
        asked.append(backend)
        if backend == "openvino":
            raise ValidationFailed("the bf16 openvino engine failed its image gate: mean |d| 0.91 levels (max 0.5)")
        return real(bundle, backend=backend, **kw)

    monkeypatch.setattr(pl, "load_engine", load)
    pipe = pl.FairSamplePipeline(backend="auto")
    assert asked == ["openvino", "torch"] and pipe.engine.backend == "torch"
    c = pipe.backend_choice
    assert (c.requested, c.backend, c.device) == ("auto", "torch", "cpu")
    assert "bf16 OpenVINO engine was not used (the bf16 openvino engine failed its image gate: mean" in c.reason
    assert pipe.manifest(pipe.default_config())["engine"]["choice"]["reason"] == c.reason
    # asked for by name, a failing gate is the caller's error, not a silent switch
    with pytest.raises(ValidationFailed, match="failed its image gate"):
        pl.FairSamplePipeline(backend="openvino")


def test_default_backend_env(monkeypatch):
    from fairsample.core.config import default_backend

    monkeypatch.delenv("FAIRSAMPLE_BACKEND", raising=False)
    assert default_backend() == "auto"
    monkeypatch.setenv("FAIRSAMPLE_BACKEND", "onnxruntime")
    assert default_backend() == "onnxruntime"
    monkeypatch.setenv("FAIRSAMPLE_BACKEND", "fast")
    with pytest.raises(ConfigError, match=r"\$FAIRSAMPLE_BACKEND='fast' is not a backend"):
        default_backend()
