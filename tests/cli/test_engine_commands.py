"""`fairsample doctor`, `export onnx`, `cache ls|verify|prune` and `generate --backend onnxruntime`."""

from __future__ import annotations

import hashlib
import json

from .conftest import invoke, run_cli


def test_doctor_json(runner):
    doc = json.loads(invoke(runner, "doctor", "--format", "json").stdout)
    assert doc["cuda_available"] in (True, False) and "ort" in doc["extras"] and doc["torch"]


def test_export_cache_and_onnxruntime_generation(runner, tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    res = invoke(
        runner,
        "export",
        "onnx",
        "--model",
        tiny_model,
        "--exporter",
        "legacy",
        "--cache-dir",
        cache,
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stdout
    man = json.loads(res.stdout)["manifest"]
    assert man["report"]["passed"] is True
    rows = json.loads(invoke(runner, "cache", "ls", "--cache-dir", cache, "--format", "json").stdout)
    assert {r["kind"] for r in rows} >= {"onnx", "onnx.opt"} and all(r["valid"] for r in rows)
    assert invoke(runner, "cache", "verify", "--cache-dir", cache).exit_code == 0

    # torch and onnxruntime give the same PNGs for the same seeds
    args = ["generate", "--model", tiny_model, "--cells", "tone=dark,label=1", "--seeds", "0-3", "--steps", "3"]
    assert invoke(runner, *args, "--output-dir", tmp_path / "t").exit_code == 0
    monkeypatch.setenv("FAIRSAMPLE_CACHE_DIR", str(cache))
    assert invoke(runner, *args, "--backend", "onnxruntime", "--output-dir", tmp_path / "o").exit_code == 0
    # no GPU here: tensorrt falls back to onnxruntime (CPU EP, fp32) with one line and the same images
    res = invoke(runner, *args, "--backend", "tensorrt", "--output-dir", tmp_path / "r", "--format", "json")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "falling back" in ln]
    assert len(lines) == 1 and "no CUDA device — falling back to onnxruntime (CPUExecutionProvider)" in lines[0]
    # the engines/export family's one real subprocess run: console entry point, real streams, exit code
    proc = run_cli("export", "tensorrt", "--model", tiny_model)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no CUDA device: the tensorrt backend needs a CUDA GPU and `pip install 'fairsample[tensorrt]'`; "
        "use the onnxruntime backend on this machine (or drop strict to fall back automatically)."
    ]
    digest = {
        d: sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / d / "images").glob("*.png"))
        for d in ("t", "o", "r")
    }
    assert len(digest["t"]) == 4 and digest["t"] == digest["o"] == digest["r"]

    # a damaged artifact is reported by verify (exit 1, one line) and removed by prune
    onnx_entry = next(r for r in rows if r["kind"] == "onnx")
    data = next((cache / onnx_entry["key"][:2] / onnx_entry["key"]).glob("*.onnx"))
    data.write_bytes(data.read_bytes()[:-10] + b"0123456789")
    res = invoke(runner, "cache", "verify", "--cache-dir", cache)
    assert res.exit_code == 1 and "cache entries are invalid" in res.stderr and "Traceback" not in res.stderr
    removed = json.loads(invoke(runner, "cache", "prune", "--cache-dir", cache, "--format", "json").stdout)
    assert [r["key"] for r in removed] == [onnx_entry["key"]]


def test_unknown_backend_is_one_line(runner, tiny_model, tmp_path):
    # the generate family's one real subprocess run: console entry point, real streams, exit code
    proc = run_cli("generate", "--model", tiny_model, "--backend", "tvm", "--output-dir", tmp_path / "x")
    assert (
        proc.returncode == 1
        and "`backend` must be one of ['auto', 'torch', 'onnxruntime', 'tensorrt', 'openvino']" in proc.stderr
    )
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x").exists()
    # checked before the model is loaded: a missing bundle is not even looked at
    res = invoke(runner, "generate", "--model", tmp_path / "nope", "--backend", "tvm", "--output-dir", tmp_path / "x")
    assert res.exit_code == 1 and "`backend` must be one of" in res.stderr and "bundle" not in res.stderr
    res = invoke(runner, "generate", "--backend", "torch", "--strict", "--output-dir", tmp_path / "x")
    assert res.exit_code == 2 and "--strict only applies to --backend tensorrt" in res.stderr
