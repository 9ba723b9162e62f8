"""`fairsample bench`: the command runs and writes one JSON document with this schema (rates, ratios, GFLOP/s,
target verdicts; their arithmetic: tests/workflows/test_bench.py); bad input is one line."""

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
    # the schema; the ratios, ceilings, fractions and the human table are unit-tested on made-up measurements in
    # tests/workflows/test_bench.py
    assert set(doc) >= {"schema", "machine", "config", "sampling", "unet", "unet_flops_per_call", "cfg_packing"}
    assert set(doc) >= {"matmul_gflops", "ratios", "targets"} and doc["config"]["matmul_size"] == 256
    rows = {(r["backend"], r["batch"], r["cfg"]) for r in doc["sampling"]}
    assert rows == {(k, b, c) for k in ("torch-eager", "onnxruntime") for b in (1, 2) for c in (True, False)}
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in doc["sampling"])
    assert set(doc["ratios"]) == {"onnxruntime_over_torch_eager"}
    assert set(doc["ratios"]["onnxruntime_over_torch_eager"]) == {
        "B=1,cfg=on",
        "B=1,cfg=off",
        "B=2,cfg=on",
        "B=2,cfg=off",
    }
    assert doc["matmul_gflops"] > 0 and set(doc["unet_flops_per_call"]) == {"1", "2", "4"}
    assert {(r["backend"], r["n"]) for r in doc["unet"]} == {
        (k, n) for k in ("torch-eager", "onnxruntime") for n in (1, 2)
    }
    # achieved GFLOP/s per U-Net row is computed inside the measuring loop (no function to call on made-up rows)
    flops = doc["unet_flops_per_call"]
    row = next(r for r in doc["unet"] if r["backend"] == "onnxruntime" and r["n"] == 2)
    assert abs(row["gflops"] - flops["2"] / (row["ms"] / 1e3) / 1e9) < 0.02 * row["gflops"] + 0.01
    assert {p["backend"] for p in doc["cfg_packing"]} == {"torch-eager", "onnxruntime"}
    assert set(doc["targets"]) == {"onnxruntime_over_torch_eager_B1", "gflops_fraction_of_matmul_N2"}
    assert set(doc["targets"]["onnxruntime_over_torch_eager_B1"]) == {
        "target",
        "worst_of_cfg_on_off",
        "met",
        "ceiling_at_matmul_rate",
        "reachable_here",
    }


def test_bench_unknown_backend_is_one_line(tiny_model):
    # the bench family's one real subprocess run: console entry point, real streams, exit code
    proc = run_cli("bench", "--model", tiny_model, "--backend", "tvm", "--batches", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: `backends` entries must be among ['torch-eager', 'torch'")
