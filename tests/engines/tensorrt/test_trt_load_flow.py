"""The TensorRT build-or-load flow on CPU: fallback lines, cache hits, rebuilds and the validation gate.

The GPU-facing calls (device detection, ``current_target``, the child-process build, ``TensorRTEngine``) are
replaced by fakes; the fake engine computes the torch reference, so the real validation gate, cache, manifest and
refit-map code run unchanged.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from fairsample.core.errors import EngineLoadError, FairsampleWarning
from fairsample.core.gpu_info import TrtTarget
from fairsample.engines import load_engine
from fairsample.engines.tensorrt import load as _trt_load
from fairsample.export.cache import ArtifactCache
from fairsample.export.onnx_export import UNetForward
from tests.export.shared import ort_store, tiny_bundle

TARGET = TrtTarget(
    sm="sm_86",
    tensorrt_version="10.9.0.34",
    cuda_runtime="12.8",
    driver_major=570,
    platform="linux-x86_64",
    device_name="fake",
)


class FakeTrtEngine:
    """Stands in for TensorRTEngine: computes the torch reference (or noise when ``broken``) on the CPU."""

    backend = "tensorrt"
    broken = False
    refuse = False

    def __init__(self, plan: Any, *, spec: Any, manifest: Any, device: Any, unsafe: bool = False, **_: Any) -> None:
        if FakeTrtEngine.refuse and not isinstance(plan, bytes):
            raise EngineLoadError(
                "TensorRT could not deserialize the cached engine (deserialize_cuda_engine returned None); "
                "load it through fairsample.engines.load_engine to rebuild or fall back."
            )
        self.spec, self.manifest, self.device = spec, dict(manifest), torch.device("cpu")
        self.plan = plan
        self._forward = UNetForward(tiny_bundle().unet.eval())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if FakeTrtEngine.broken:
            return torch.randn_like(x)
        with torch.no_grad():
            return self._forward(x, t, e).half().float()

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A private copy of the shared ONNX store (the flow adds plan entries to it)."""
    dest = tmp_path / "cache"
    shutil.copytree(ort_store(), dest)
    return dest


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Pretend a CUDA GPU with TensorRT is present; count plan builds."""
    calls = {"builds": 0}

    def build(recipe: Any, progress: Any) -> bytes:
        calls["builds"] += 1
        return b"FAKEPLAN" * 64

    FakeTrtEngine.broken = FakeTrtEngine.refuse = False
    monkeypatch.setattr(_trt_load, "_environment", lambda: (True, True))
    monkeypatch.setattr(_trt_load, "_target", lambda device: TARGET)
    monkeypatch.setattr(_trt_load, "_build_plan", build)
    monkeypatch.setattr(_trt_load, "_open_engine", FakeTrtEngine)
    monkeypatch.setattr(_trt_load, "_ort_providers", lambda: ["CPUExecutionProvider"])
    return calls


def _load(store: Path, **kwargs: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = load_engine(
            tiny_bundle(),
            "tensorrt",
            device="cuda:0",
            dtype=torch.float16,
            cache_dir=store,
            max_batch=2,
            intra_op_threads=1,
            **kwargs,
        )
    lines = [str(w.message) for w in caught if issubclass(w.category, FairsampleWarning)]
    return engine, lines


def _plan_entry(store: Path) -> tuple[Path, dict[str, Any]]:
    rows = [r for r in ArtifactCache(store).ls() if r["kind"] == "trt.plan"]
    assert len(rows) == 1
    entry = ArtifactCache(store).entry_dir(rows[0]["key"])
    return entry, json.loads((entry / "manifest.json").read_text())


def test_no_gpu_falls_back_to_onnxruntime_with_one_line(store: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    engine, lines = _load(store)
    assert engine.backend == "onnxruntime" and engine.spec.precision == "fp32"  # CPU EP runs fp32
    assert len(lines) == 1
    assert lines[0].startswith("no CUDA device — falling back to onnxruntime (CPUExecutionProvider)")
    engine.close()


def test_no_gpu_strict_raises_one_line(store: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(EngineLoadError, match=r"^no CUDA device: the tensorrt backend needs a CUDA GPU") as err:
        _load(store, strict=True)
    assert "\n" not in str(err.value)


def test_cpu_device_falls_back(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_trt_load, "_environment", lambda: (True, True))  # a GPU exists, but cpu was asked for
    with pytest.warns(FairsampleWarning, match=r"device 'cpu' is not a CUDA device — falling back to onnxruntime"):
        engine = load_engine(tiny_bundle(), "tensorrt", device="cpu", cache_dir=store, intra_op_threads=1)
    assert engine.backend == "onnxruntime"


def test_build_validate_cache_hit(store: Path, fake_gpu: dict[str, int]) -> None:
    engine, lines = _load(store)
    assert isinstance(engine, FakeTrtEngine) and lines == [] and fake_gpu["builds"] == 1
    entry, manifest = _plan_entry(store)
    assert (entry / "engine.plan").read_bytes() == b"FAKEPLAN" * 64
    assert manifest["validation"]["passed"] is True and manifest["validation"]["precision"] == "fp16"
    assert [c["shape"] for c in manifest["validation"]["cases"]] == [[1, 8, 8], [2, 8, 8], [4, 8, 8]]
    parts = manifest["key_parts"]
    assert parts["gpu"] == "sm_86" and parts["tensorrt_version"] == "10.9.0.34"
    assert [p["opt"] for p in parts["profiles"]] == [[2, 8, 8], [4, 8, 8]]  # N = B and N = 2B (CFG)
    refit = manifest["refit"]
    state = tiny_bundle().unet.state_dict()
    mapped = {v if isinstance(v, str) else v["source"] for v in refit["name_map"].values()}
    shared = {k for v in refit["shared"].values() for k in v}  # fresh norms (all ones) merged by the exporter
    assert mapped | shared | set(refit["ignored"]) == set(state)  # every parameter is accounted for
    assert "conv_in.weight" in mapped
    again, lines = _load(store)
    assert isinstance(again, FakeTrtEngine) and lines == [] and fake_gpu["builds"] == 1  # cache hit


def test_manifest_edited_to_other_tensorrt_is_rebuilt(store: Path, fake_gpu: dict[str, int]) -> None:
    _load(store)
    entry, manifest = _plan_entry(store)
    manifest["key_parts"]["tensorrt_version"] = "11.4.0"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    engine, lines = _load(store)
    assert isinstance(engine, FakeTrtEngine) and fake_gpu["builds"] == 2
    assert len(lines) == 1 and "is stale (foreign entry" in lines[0] and lines[0].endswith("rebuilding.")


def test_truncated_plan_is_rebuilt(store: Path, fake_gpu: dict[str, int]) -> None:
    _load(store)
    entry, _ = _plan_entry(store)
    (entry / "engine.plan").write_bytes(b"FAKE")
    engine, lines = _load(store)
    assert isinstance(engine, FakeTrtEngine) and fake_gpu["builds"] == 2
    assert len(lines) == 1 and "(truncated?)" in lines[0]


def test_plan_for_another_gpu_is_rebuilt_then_used(
    store: Path, fake_gpu: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = _trt_load._build_and_validate

    def other_gpu_first(tmp: Path, *args: Any) -> dict[str, Any]:
        out = real(tmp, *args)
        calls.append("build")
        return out

    monkeypatch.setattr(_trt_load, "_build_and_validate", other_gpu_first)
    _load(store)
    targets = iter(
        [
            TrtTarget(
                sm="sm_90",
                tensorrt_version="10.9.0.34",
                cuda_runtime="12.8",
                driver_major=570,
                platform="linux-x86_64",
            )
        ]
    )
    monkeypatch.setattr(_trt_load, "_target", lambda device: next(targets, TARGET))
    # The key differs on another GPU, so its plan is a separate entry: a miss, a build, no warning.
    engine, lines = _load(store)
    assert isinstance(engine, FakeTrtEngine) and lines == [] and calls == ["build", "build"]


def test_undeserialisable_plan_rebuilds_once_then_falls_back(store: Path, fake_gpu: dict[str, int]) -> None:
    _load(store)
    FakeTrtEngine.refuse = True
    engine, lines = _load(store)
    assert engine.backend == "onnxruntime" and fake_gpu["builds"] == 2
    assert len(lines) == 2
    assert "is stale (TensorRT could not deserialize" in lines[0] and lines[0].endswith("rebuilding.")
    assert "— falling back to onnxruntime (CPUExecutionProvider)" in lines[1]
    assert "Traceback" not in "".join(lines)


def test_failed_gate_is_never_used(store: Path, fake_gpu: dict[str, int]) -> None:
    FakeTrtEngine.broken = True
    engine, lines = _load(store)
    assert engine.backend == "onnxruntime"
    assert len(lines) == 1 and lines[0].startswith("cached TensorRT engine has no passing validation report (failed)")
    _, manifest = _plan_entry(store)
    assert manifest["validation"]["passed"] is False and "max_abs" in manifest["validation"]["reason"]
    with pytest.raises(EngineLoadError, match="strict=True"):
        _load(store, strict=True)
