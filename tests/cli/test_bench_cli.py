"""`fairsample bench`: one JSON document with rates, ratios, GFLOP/s and target verdicts; bad input is one line."""

from __future__ import annotations

import json

from .conftest import invoke, run_cli


def test_bench_json(runner, tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    res = invoke(
        runner,
        "bench",
        "--model",
        tiny_model,
        "--backend",
        "torch-eager",
        "--backend",
        "onnxruntime",
        "--batches",
        "1,2",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--cache-dir",
        tmp_path / "cache",
        "--output",
        out,
        "--format",
        "json",
        "--matmul-size",
        256,
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert json.loads(out.read_text()) == doc
    rows = {(r["backend"], r["batch"], r["cfg"]) for r in doc["sampling"]}
    assert rows == {(k, b, c) for k in ("torch-eager", "onnxruntime") for b in (1, 2) for c in (True, False)}
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in doc["sampling"])
    ratio = doc["ratios"]["onnxruntime_over_torch_eager"]
    assert set(ratio) == {"B=1,cfg=on", "B=1,cfg=off", "B=2,cfg=on", "B=2,cfg=off"}
    eager = {(r["batch"], r["cfg"]): r["images_per_s"] for r in doc["sampling"] if r["backend"] == "torch-eager"}
    ort = {(r["batch"], r["cfg"]): r["images_per_s"] for r in doc["sampling"] if r["backend"] == "onnxruntime"}
    assert abs(ratio["B=1,cfg=on"] - ort[(1, True)] / eager[(1, True)]) < 1e-2
    assert doc["matmul_gflops"] > 0 and set(doc["unet_flops_per_call"]) == {"1", "2", "4"}
    flops = doc["unet_flops_per_call"]
    assert flops["1"] > 0 and flops["2"] == 2 * flops["1"] and flops["4"] == 4 * flops["1"]  # FLOPs scale with N
    row = next(r for r in doc["unet"] if r["backend"] == "onnxruntime" and r["n"] == 2)
    assert abs(row["gflops"] - flops["2"] / (row["ms"] / 1e3) / 1e9) < 0.02 * row["gflops"] + 0.01
    assert {p["backend"] for p in doc["cfg_packing"]} == {"torch-eager", "onnxruntime"}
    assert set(doc["targets"]) == {"onnxruntime_over_torch_eager_B1", "gflops_fraction_of_matmul_N2"}
    assert doc["config"]["matmul_size"] == 256
    b1 = doc["targets"]["onnxruntime_over_torch_eager_B1"]
    # ceiling: ORT's U-Net at the matmul rate, nothing else costing time, against the measured eager rate
    ceiling = min(
        1 / (flops[str(n)] / (doc["matmul_gflops"] * 1e9)) / eager[(1, cfg)] for n, cfg in ((2, True), (1, False))
    )
    assert abs(b1["ceiling_at_matmul_rate"] - ceiling) < 0.01 * ceiling + 1e-3
    assert b1["reachable_here"] == (b1["ceiling_at_matmul_rate"] >= b1["target"])


def test_bench_unknown_backend_is_one_line(tiny_model):
    # the bench family's one real subprocess run: console entry point, real streams, exit code
    proc = run_cli("bench", "--model", tiny_model, "--backend", "tvm", "--batches", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: `backends` entries must be among ['torch-eager', 'torch'")
