"""Manifest compatibility and the rebuild / onnxruntime / raise decision, with fake manifests and targets (§7.3)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from fairsample.core.engine_spec import EngineSpec, ShapeProfile
from fairsample.core.errors import ConfigError
from fairsample.core.gpu_info import TrtTarget
from fairsample.engines.tensorrt import fallback
from fairsample.engines.tensorrt.fallback import (
    ACTION_NOTHING,
    ACTION_ONNXRUNTIME,
    ACTION_REBUILD,
    ACTION_STRICT,
    NO_CUDA_REASON,
    NO_TENSORRT_REASON,
    check_manifest,
    decide_fallback,
    plan_load,
)
from fairsample.engines.tensorrt.runtime import NOT_CUDA, TensorRTEngine, check_engine_io, engine_capabilities
from fairsample.export.trt_build import TrtBuildRecipe
from fairsample.export.trt_profiles import default_profiles

BUILT = TrtTarget(
    sm="sm_80", tensorrt_version="10.9.0.34", cuda_runtime="12.4", driver_major=550, platform="linux-x86_64"
)


def _manifest(target: TrtTarget = BUILT, *, passed: bool | None = True, **recipe_kw: Any) -> dict[str, Any]:
    recipe = TrtBuildRecipe(
        onnx_path="m.onnx", profiles=default_profiles(32, 2), onnx_key="k", weights_sha256="w", **recipe_kw
    )
    m: dict[str, Any] = {"key_parts": recipe.cache_key_parts(target)}
    if passed is not None:
        m["validation"] = {"passed": passed}
    return m


def test_same_machine_loads() -> None:
    assert check_manifest(_manifest(), BUILT) is None


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("sm", "sm_90", "this GPU is sm_90/TensorRT 10.9.0.34"),
        ("tensorrt_version", "11.4.0.106", "this GPU is sm_80/TensorRT 11.4.0.106"),
        ("cuda_runtime", "13.0", "CUDA 13.0"),
        ("platform", "win32-amd64", "on win32-amd64"),
    ],
)
def test_each_mismatch_gives_a_one_line_reason(field: str, value: str, fragment: str) -> None:
    here = dataclasses.replace(BUILT, **{field: value})
    reason = check_manifest(_manifest(), here)
    assert reason is not None and reason.startswith("cached TensorRT engine was built for sm_80/TensorRT 10.9.0.34")
    assert fragment in reason and "\n" not in reason


def test_driver_and_cuda_patch_level_do_not_block_loading() -> None:
    assert check_manifest(_manifest(), dataclasses.replace(BUILT, driver_major=575, cuda_runtime="12.4.1")) is None


def test_hardware_and_version_compatible_plans() -> None:
    ampere = _manifest(hardware_compat="ampere_plus")
    assert check_manifest(ampere, dataclasses.replace(BUILT, sm="sm_90")) is None
    assert check_manifest(ampere, dataclasses.replace(BUILT, sm="sm_75")) is not None
    vc = _manifest(version_compatible=True)
    assert check_manifest(vc, dataclasses.replace(BUILT, tensorrt_version="10.13.0.1")) is None
    assert check_manifest(vc, dataclasses.replace(BUILT, tensorrt_version="10.8.0")) is not None
    assert check_manifest(vc, dataclasses.replace(BUILT, tensorrt_version="11.0.0")) is not None


def test_validation_report_is_required_unless_unsafe() -> None:
    assert "validation report (missing)" in str(check_manifest(_manifest(passed=None), BUILT))
    assert "validation report (failed)" in str(check_manifest(_manifest(passed=False), BUILT))
    assert check_manifest(_manifest(passed=False), BUILT, unsafe=True) is None


def test_incomplete_manifest() -> None:
    assert check_manifest({"key_parts": {"gpu": "sm_80"}}, BUILT) == (
        "cached TensorRT engine manifest lacks tensorrt_version, cuda_runtime, platform"
    )


REASON = "cached TensorRT engine was built for sm_80/TensorRT 10.9; this GPU is sm_90/TensorRT 11.4"


def test_decision_order() -> None:
    kw: dict[str, Any] = {
        "can_build": True,
        "onnx_cached": True,
        "ort_providers": ["CPUExecutionProvider"],
        "cuda": True,
    }
    assert decide_fallback(REASON, **kw).message == ACTION_REBUILD.format(reason=REASON)
    assert decide_fallback(REASON, **kw).message == (
        "cached TensorRT engine was built for sm_80/TensorRT 10.9; this GPU is sm_90/TensorRT 11.4 — rebuilding "
        "(use --strict to fail instead)"
    )
    strict = decide_fallback(REASON, strict=True, **kw)
    assert strict.action == "raise" and strict.message == ACTION_STRICT.format(reason=REASON)
    never = decide_fallback(REASON, rebuild="never", **kw)
    assert (never.action, never.provider) == ("onnxruntime", "CPUExecutionProvider")
    assert never.message == ACTION_ONNXRUNTIME.format(reason=REASON, provider="CPUExecutionProvider")
    gpu_ort = decide_fallback(
        REASON,
        can_build=False,
        onnx_cached=True,
        ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        cuda=True,
    )
    assert gpu_ort.provider == "CUDAExecutionProvider"
    no_onnx = decide_fallback(REASON, can_build=True, onnx_cached=False, ort_providers=None, cuda=True)
    assert no_onnx.action == "raise" and no_onnx.message == ACTION_NOTHING.format(reason=REASON)
    for d in (strict, never, gpu_ort, no_onnx):
        assert "\n" not in d.message


def test_plan_load_on_this_cpu_machine_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallback.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(fallback, "_ort_providers", lambda: ["CPUExecutionProvider"])
    d = plan_load(_manifest())
    assert d is not None and d.action == "onnxruntime" and d.message.startswith(NO_CUDA_REASON + " — falling back")


def test_plan_load_with_fake_gpu_and_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    here = dataclasses.replace(BUILT, sm="sm_90", tensorrt_version="11.4.0.106")
    real = fallback.importlib.util.find_spec
    monkeypatch.setattr(fallback.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        fallback.importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt" else real(name, *a)
    )
    monkeypatch.setattr(fallback, "current_target", lambda *a: here)
    monkeypatch.setattr(fallback, "_ort_providers", lambda: None)
    d = plan_load(_manifest())
    assert d is not None and d.action == "rebuild"
    assert d.message == (
        "cached TensorRT engine was built for sm_80/TensorRT 10.9.0.34/CUDA 12.4; this GPU is "
        "sm_90/TensorRT 11.4.0.106/CUDA 12.4 — rebuilding (use --strict to fail instead)"
    )
    assert plan_load(_manifest(here)) is None
    assert plan_load(_manifest(), strict=True).action == "raise"  # type: ignore[union-attr]


def test_plan_load_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fallback.importlib.util.find_spec
    monkeypatch.setattr(fallback.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        fallback.importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a)
    )
    monkeypatch.setattr(fallback, "_ort_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    d = plan_load(_manifest())
    assert d is not None and d.provider == "CUDAExecutionProvider" and d.message.startswith(NO_TENSORRT_REASON)


def test_engine_io_and_capabilities() -> None:
    io = {n: ("input", "float32") for n in ("sample", "timestep", "encoder_hidden_states")}
    assert "expected float32 inputs" in str(check_engine_io({**io, "out_sample": ("output", "float16")}))
    assert check_engine_io({**io, "out_sample": ("output", "float32")}) is None
    spec = EngineSpec(
        in_channels=4,
        out_channels=4,
        sample_size=8,
        seq_len=4,
        hidden_dim=8,
        prediction_type="epsilon",
        profiles=(ShapeProfile((2, 8, 8), (2, 8, 8), (2, 8, 8)),),
    )
    assert engine_capabilities(_manifest(), spec, cuda_graphs=True) == {"io_binding", "cuda_graphs"}
    assert "refit" in engine_capabilities(_manifest(refit=True), spec, cuda_graphs=False)


def test_engine_refuses_cpu_device_before_touching_tensorrt() -> None:
    spec = EngineSpec(
        in_channels=4,
        out_channels=4,
        sample_size=8,
        seq_len=4,
        hidden_dim=8,
        prediction_type="epsilon",
        profiles=default_profiles(8, 1),
    )
    with pytest.raises(ConfigError, match=re.escape(NOT_CUDA.split("{")[0])):
        TensorRTEngine(b"", spec=spec, manifest=_manifest(), device="cpu")
