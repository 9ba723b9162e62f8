"""gpu_report: JSON-safe shape on this CPU machine, extras, and the both-onnxruntime-packages warning."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from fairsample.core import gpu_info
from fairsample.core.gpu_info import BOTH_ORT_INSTALLED, TrtTarget, gpu_report, ort_conflict_warning, sm_name

KEYS = {
    "python",
    "platform",
    "torch",
    "cuda_available",
    "cuda_runtime",
    "device_count",
    "device",
    "driver_version",
    "cudnn",
    "tensorrt",
    "onnxruntime",
    "extras",
    "extras_missing",
    "warnings",
}


def _fake_versions(monkeypatch: pytest.MonkeyPatch, installed: dict[str, str]) -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name in ("onnxruntime", "onnxruntime-gpu"):
            if name in installed:
                return installed[name]
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(gpu_info.metadata, "version", version)


def test_report_shape_on_cpu() -> None:
    report = gpu_report()
    assert set(report) == KEYS
    assert json.loads(json.dumps(report)) == report
    assert report["cuda_available"] is False and report["device"] is None and report["device_count"] == 0
    assert set(report["extras"]) == {"ort", "gpu", "tensorrt", "train", "sd"}
    assert report["extras"]["tensorrt"] is (
        report["tensorrt"] is not None and not report["extras_missing"]["tensorrt"]
    )


def test_onnxruntime_section_matches_the_installed_package() -> None:
    ort = pytest.importorskip("onnxruntime")
    section = gpu_report()["onnxruntime"]
    assert section["version"] == ort.__version__ and "CPUExecutionProvider" in section["providers"]
    assert gpu_report()["extras"]["ort"] is True


def test_both_onnxruntime_distributions_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"})
    expected = BOTH_ORT_INSTALLED.format(cpu="1.31.1", gpu="1.31.1")
    assert ort_conflict_warning() == expected
    report = gpu_report()
    assert report["warnings"] == [expected] and report["extras"]["gpu"] is True and "\n" not in expected


def test_single_distribution_does_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, {"onnxruntime-gpu": "1.31.1"})
    report = gpu_report()
    assert report["warnings"] == [] and report["extras"]["ort"] is False
    assert "distribution onnxruntime" in report["extras_missing"]["ort"]


def test_target_helpers() -> None:
    assert sm_name(9, 0) == "sm_90"
    t = TrtTarget(
        sm="sm_90", tensorrt_version="11.4.0", cuda_runtime="13.0", driver_major=None, platform="linux-x86_64"
    )
    assert t.to_dict()["driver_major"] is None and t.short() == "sm_90/TensorRT 11.4.0/CUDA 13.0"


def test_current_target_without_cuda_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_info.torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu_info.EngineLoadError, match="no CUDA device"):
        gpu_info.current_target()
