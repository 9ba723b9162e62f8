"""Optimized ONNX (deterministic, parity re-run) and the fp16 artifact with fp32 islands (ENGINES.md §4-§6)."""

from __future__ import annotations

import hashlib
import json

import onnx

from fairsample.export.onnx_export import MODEL_FILE
from fairsample.export.onnx_optimize import OPT_DATA_FILE, OPT_MODEL_FILE, optimize_onnx
from fairsample.export.precision import FP16_MODEL_FILE, convert_fp16, precision_policy
from tests.export.shared import entry_of, ort_store


def _digest(*paths) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_optimized_artifact_passes_parity_and_is_smaller() -> None:
    manifest = json.loads((entry_of(ort_store(), "onnx.opt") / "manifest.json").read_text())
    assert manifest["report"]["passed"] and len(manifest["report"]["cases"]) == 3
    before, after = manifest["nodes"]
    assert after <= before  # the dynamo exporter already optimises; legacy graphs shrink ~2x
    assert set(manifest["files"]) == {OPT_MODEL_FILE, OPT_DATA_FILE}


def test_optimizer_is_deterministic(tmp_path) -> None:
    src = entry_of(ort_store(), "onnx") / MODEL_FILE
    a = optimize_onnx(src, tmp_path / "a")
    b = optimize_onnx(src, tmp_path / "b")
    assert _digest(a.path, a.data_path) == _digest(b.path, b.data_path)


def test_fp16_gate_passes_with_float32_io() -> None:
    entry = entry_of(ort_store(), "onnx.fp16")
    manifest = json.loads((entry / "manifest.json").read_text())
    report = manifest["report"]
    assert report["passed"] and report["precision"] == "fp16"
    assert report["gate"] == {"max_abs_rel": 5e-2, "rel_l2": 1e-2, "cosine": 0.9995}
    for case in report["cases"]:
        m = case["metrics"]
        assert 1e-5 < m["rel_l2"] <= 1e-2 and m["cosine"] >= 0.9995 and m["nan_count"] == m["inf_count"] == 0
    model = onnx.load(str(entry / FP16_MODEL_FILE), load_external_data=False)
    io = [*model.graph.input, *model.graph.output]
    assert {v.type.tensor_type.elem_type for v in io} == {onnx.TensorProto.FLOAT}
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in model.graph.initializer}


def test_fp16_keeps_islands_in_float32(tmp_path) -> None:
    art = convert_fp16(entry_of(ort_store(), "onnx.opt") / OPT_MODEL_FILE, tmp_path)
    model = onnx.load(str(art.path), load_external_data=False)
    islands = [n for n in model.graph.node if n.op_type in ("Softmax", "LayerNormalization", "InstanceNormalization")]
    assert islands
    # every island op reads a float32 tensor: its input comes from an inserted Cast to FLOAT or an fp32 producer
    casts_to_fp16 = {
        o for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.i == 10 for o in n.output
    }
    assert not any(n.input[0] in casts_to_fp16 for n in islands)
    assert art.policy == precision_policy()
    assert precision_policy(keep_attention_fp32=True)["island_scopes"] != art.policy["island_scopes"]
