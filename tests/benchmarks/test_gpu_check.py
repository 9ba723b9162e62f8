"""benchmarks/gpu_check.py: the gate function, the CPU path end to end (JSON structure, float32 vs itself), the exit
code without CUDA, and (on a CUDA machine) a tiny GPU run."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", _SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
_TINY = ["--images", "2", "--steps", "2", "--batch-sizes", "1,2", "--repeats", "1"]


def _images(seed: int = 0, n: int = 4, size: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _shift(a: np.ndarray, by: int) -> np.ndarray:
    return np.clip(a.astype(np.int16) + by, 0, 255).astype(np.uint8)


def test_gate_identical_images_pass_with_zero_difference():
    a = _images()
    assert gpu_check.gate_images(a, a.copy()) == {"max_abs": 0, "mean_abs": 0.0, "frac_off": 0.0, "passed": True}


def test_gate_small_noise_passes():
    a = np.full((4, 10, 10, 3), 128, np.uint8)
    b = _shift(a, 1)  # every value one level off: mean 1.0, no pixel off by > 8
    gate = gpu_check.gate_images(a, b)
    assert gate["max_abs"] == 1 and gate["mean_abs"] == 1.0 and gate["frac_off"] == 0.0 and gate["passed"]


def test_gate_a_systematic_shift_fails_on_the_mean():
    a = np.full((4, 10, 10, 3), 128, np.uint8)
    gate = gpu_check.gate_images(a, _shift(a, 3))  # mean 3 > 2, but no pixel off by > 8
    assert gate["frac_off"] == 0.0 and gate["mean_abs"] == 3.0 and not gate["passed"]


def test_gate_a_few_flipped_pixels_pass_but_more_than_one_percent_fail():
    a = np.zeros((1, 100, 100, 3), np.uint8)
    few = a.copy()
    few[0, 0, :50, 0] = 255  # 50 pixels of 10,000 (0.5 %) flipped in one channel: max 255, mean 0.425
    gate = gpu_check.gate_images(a, few)
    assert gate["max_abs"] == 255 and gate["frac_off"] == 0.005 and gate["passed"]
    many = a.copy()
    many[0, 0, :, 1] = 9  # 100 pixels (1 %) off by 9 in one channel: at the limit, passes
    many[0, 1, :2, 2] = 9  # 2 more pixels: 1.02 % > 1 %
    gate = gpu_check.gate_images(a, many)
    assert gate["frac_off"] == pytest.approx(0.0102) and gate["mean_abs"] < 1 and not gate["passed"]


def test_gate_rejects_mismatched_arrays():
    a = _images()
    with pytest.raises(ValueError, match="same shape|one shape"):
        gpu_check.gate_images(a, a[:2])
    with pytest.raises(ValueError, match="uint8"):
        gpu_check.gate_images(a, a.astype(np.float32))


def test_cpu_path_json_structure_and_float32_matches_itself(tmp_path, capsys):
    out = tmp_path / "check.json"
    doc = gpu_check.main(["--allow-cpu", "--device", "cpu", "--quick", *_TINY, "--output", str(out)])
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert {
        "benchmark",
        "machine",
        "settings",
        "gate",
        "reference",
        "precisions",
        "skipped",
        "passed",
        "seconds",
    } <= set(doc)
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["torch"] == torch.__version__
    assert doc["settings"]["cpu_fallback"] and doc["settings"]["modes"] == ["eager"]
    assert doc["settings"]["batch_sizes"] == [1, 2] and doc["settings"]["steps"] == 2
    assert doc["gate"]["mean_abs_max"] == gpu_check.GATE_MEAN_ABS_MAX
    assert doc["gate"]["frac_off_max"] == gpu_check.GATE_FRAC_OFF_MAX
    assert set(doc["precisions"]) == {"float32", "bfloat16"}
    for entry in doc["precisions"].values():
        assert entry["errors"] == []
        assert set(entry["gate"]) == {"max_abs", "mean_abs", "frac_off", "passed"}
        assert set(entry["images_per_s"]) == {"eager"}
        assert set(entry["images_per_s"]["eager"]) == {"1", "2"}
        assert all(v > 0 for v in entry["images_per_s"]["eager"].values())
        assert "cuda_graph_gate" not in entry
    f32 = doc["precisions"]["float32"]
    assert f32["gate"] == {"max_abs": 0, "mean_abs": 0.0, "frac_off": 0.0, "passed": True} and f32["passed"]
    assert doc["passed"] == all(e["passed"] for e in doc["precisions"].values())


def test_graphed_engine_needs_a_cuda_engine():
    from types import SimpleNamespace

    from fairsample.engines import load_engine
    from tests.tiny import build_tiny_unet

    engine = load_engine(SimpleNamespace(unet=build_tiny_unet(), prediction_type="epsilon"))
    with pytest.raises(ValueError, match="CUDA engine"):
        gpu_check.GraphedEngine(engine)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit code on a machine without CUDA")
def test_no_cuda_exits_2_without_allow_cpu(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--quick"])
    assert exc.value.code == gpu_check.EXIT_NO_CUDA
    assert capsys.readouterr().out == ""


@_NEEDS_CUDA
def test_gpu_tiny_run_gates_and_cuda_graphs(capsys):
    doc = gpu_check.main(["--quick", *_TINY, "--precisions", "float32,float16"])
    assert doc["machine"]["gpu"]["name"] and set(doc["precisions"]) == {"float32", "float16"}
    for entry in doc["precisions"].values():
        assert entry["errors"] == []
        assert entry["cuda_graph_gate"]["max_abs_vs_eager"] <= 1
        assert set(entry["images_per_s"]) == {"eager", "cuda_graph"}
    assert doc["precisions"]["float32"]["passed"]
