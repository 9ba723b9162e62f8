"""trt_build without tensorrt: flag mapping per TensorRT version, OOM detection/retry, the spawn child, errors."""

from __future__ import annotations

import importlib.util
import re

import pytest

from fairsample.core.engine_spec import ShapeProfile
from fairsample.core.errors import EngineLoadError
from fairsample.export import trt_build
from fairsample.export.trt_build import (
    BUILD_CRASHED,
    BUILD_OOM,
    MIN_WORKSPACE_BYTES,
    TRT_TOO_OLD,
    WEAK_TYPING_REMOVED,
    BuiltPlan,
    TrtBuildRecipe,
    build_plan,
    build_with_retry,
    builder_settings,
    format_parse_errors,
    is_oom,
    oom_retry_recipe,
)
from fairsample.export.trt_profiles import default_profiles
from tests.engines.tensorrt import _fake_workers

GIB = 1 << 30


def _recipe(**kw: object) -> TrtBuildRecipe:
    return TrtBuildRecipe(**{"onnx_path": "m.onnx", "profiles": default_profiles(16, 2), **kw})  # type: ignore[arg-type]


def _prefix(template: str) -> str:
    return re.escape(template.split("{")[0])


def test_flags_on_tensorrt_10() -> None:
    s = builder_settings(_recipe(refit=True, strip_plan=True, hardware_compat="ampere_plus"), "10.9.0.34")
    assert s.network_flags == ("STRONGLY_TYPED",)
    assert s.builder_flags == ("REFIT", "STRIP_PLAN")
    assert s.hardware_compat == "AMPERE_PLUS"
    weak = builder_settings(_recipe(strongly_typed=False, precision="fp16", version_compatible=True), "10.3.0")
    assert weak.network_flags == () and weak.builder_flags == ("FP16", "VERSION_COMPATIBLE")
    assert builder_settings(_recipe(strongly_typed=False, precision="fp32"), "10.3.0").builder_flags == ()


def test_flags_on_tensorrt_11_are_strongly_typed_only() -> None:
    s = builder_settings(_recipe(editable_timing_cache=True, refit_identical=True), "11.4.0.106")
    assert s.network_flags == () and s.builder_flags == ("REFIT_IDENTICAL", "EDITABLE_TIMING_CACHE")
    with pytest.raises(EngineLoadError, match=_prefix(WEAK_TYPING_REMOVED)):
        builder_settings(_recipe(strongly_typed=False), "11.4.0.106")
    with pytest.raises(EngineLoadError, match=_prefix(TRT_TOO_OLD)):
        builder_settings(_recipe(), "8.6.1")


def test_oom_detection() -> None:
    assert is_oom(["[TRT] [E] 2: [virtualMemoryBuffer.cpp] Error Code 2: OutOfMemory (no further information)"])
    assert is_oom(["CUDA error: out of memory"]) and is_oom(["cudaErrorMemoryAllocation"])
    assert is_oom(["Requested amount of GPU memory (8589934592 bytes) could not be allocated."])
    assert not is_oom(["Error Code 4: Internal Error (unsupported Resize mode)"])


def test_oom_retry_recipe_halves_workspace_and_clamps_profiles() -> None:
    p = ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(8, 16, 16))
    r = oom_retry_recipe(_recipe(profiles=(p,), workspace_bytes=4 * GIB))
    assert (
        r is not None
        and r.workspace_bytes == 2 * GIB
        and r.profiles == (ShapeProfile((1, 8, 8), (2, 8, 8), (2, 8, 8)),)
    )
    floor = _recipe(workspace_bytes=MIN_WORKSPACE_BYTES)  # default profiles already have max == opt
    assert oom_retry_recipe(floor) is None
    tiny = _recipe(workspace_bytes=1 << 20)
    assert oom_retry_recipe(tiny) is None  # never grows the workspace


def test_parse_errors_become_one_line() -> None:
    msg = format_parse_errors("u.onnx", ["node 7 (Resize,\n /up/Resize): bad", "node 9: other"])
    assert "2 parser error(s)" in msg and "node 7 (Resize, /up/Resize): bad" in msg and "\n" not in msg


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_build_plan_without_tensorrt_names_the_extra() -> None:
    with pytest.raises(ImportError, match=re.escape("pip install 'fairsample[tensorrt]'")):
        build_plan(_recipe())


def test_build_plan_without_gpu_raises_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        trt_build.importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt" else real(name, *a)
    )
    monkeypatch.setattr(trt_build.torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineLoadError, match="no CUDA device"):
        build_plan(_recipe())


def test_child_streams_progress_and_returns_the_plan() -> None:
    lines: list[str] = []
    plan = build_with_retry(_recipe(workspace_bytes=GIB), progress=lines.append, worker=_fake_workers.ok_worker)
    assert isinstance(plan, bytes) and isinstance(plan, BuiltPlan)
    assert bytes(plan) == b"PLAN:" + str(GIB).encode()
    assert not plan.retried and plan.recipe.workspace_bytes == GIB
    assert [line.split("] ", 1)[1] for line in lines] == ["parsing", f"workspace {GIB}"]
    assert all(re.match(r"\[\d+\.\d s\] ", line) for line in lines)


def test_oom_is_retried_once_with_a_smaller_recipe() -> None:
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trt_build.logger, "warning", lambda *a, **k: None)
        plan = build_with_retry(
            _recipe(workspace_bytes=2 * GIB), progress=lines.append, worker=_fake_workers.oom_once_worker
        )
    assert plan.retried and plan.recipe.workspace_bytes == GIB and bytes(plan) == b"PLAN:" + str(GIB).encode()
    assert any("retrying once" in line for line in lines)


def test_second_oom_raises_one_line() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trt_build.logger, "warning", lambda *a, **k: None)
        with pytest.raises(EngineLoadError, match=_prefix(BUILD_OOM)) as info:
            build_with_retry(
                _recipe(workspace_bytes=2 * GIB), progress=lambda s: None, worker=_fake_workers.always_oom_worker
            )
    assert "after one retry" in str(info.value) and "\n" not in str(info.value)


def test_parse_failure_and_crash_raise_engine_load_error() -> None:
    with pytest.raises(EngineLoadError, match="could not parse"):
        build_with_retry(_recipe(), progress=lambda s: None, worker=_fake_workers.parse_error_worker)
    with pytest.raises(EngineLoadError, match=_prefix(BUILD_CRASHED)) as info:
        build_with_retry(_recipe(), progress=lambda s: None, worker=_fake_workers.crash_worker)
    assert "code 3" in str(info.value)
