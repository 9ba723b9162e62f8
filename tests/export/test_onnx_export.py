"""fp32 ONNX export (ENGINES.md §4): dynamo artifact facts, parity at 3 shapes, legacy path, fallback, audit."""

from __future__ import annotations

import json
import re

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fairsample.core.errors import EngineLoadError, ValidationFailed
from fairsample.export import onnx_export
from fairsample.export.onnx_export import (
    _ALL_FAILED,
    _DIM_NOT_DYNAMIC,
    DATA_FILE,
    MODEL_FILE,
    UNetForward,
    audit_graph,
    export_onnx,
    onnx_parity_report,
    parity_shapes,
)
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, entry_of, ort_store, tiny_bundle


@pytest.fixture(scope="module")
def fp32_manifest() -> dict:
    return json.loads((entry_of(ort_store(), "onnx") / "manifest.json").read_text())


def test_dynamo_export_is_audited_and_passes_parity_at_three_shapes(fp32_manifest) -> None:
    art = fp32_manifest["artifact"]
    assert art["exporter"] == "dynamo" and art["attempts"] == []
    assert art["example_shape"] == [2, 10, 14]  # N >= 2, H != W, neither a multiple of 16
    report = fp32_manifest["report"]
    shapes = [c["shape"] for c in report["cases"]]
    assert shapes == [[2, 10, 14], [1, 10, 14], [3, 8, 4]]
    assert report["passed"] and report["precision"] == "fp32"
    for case in report["cases"]:
        m = case["metrics"]
        assert m["max_abs"] <= 1e-4 and m["rel_l2"] <= 1e-5 and m["nan_count"] == 0


def test_dynamo_graph_has_dynamic_dims_and_one_data_file() -> None:
    entry = entry_of(ort_store(), "onnx")
    model = onnx.load(str(entry / MODEL_FILE), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["sample"] == ["batch", 3, "height", "width"]
    assert dims["encoder_hidden_states"] == ["batch", SEQ_LEN, HIDDEN_DIM]
    assert [o.name for o in model.graph.output] == ["out_sample"]
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {DATA_FILE}


def test_legacy_export_round_trips_external_data(tmp_path) -> None:
    unet = tiny_bundle().unet
    art = export_onnx(
        unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, exporters=("legacy",), size_threshold=0
    )
    assert art.exporter == "legacy" and art.opset == 17 and art.report["passed"]
    model = onnx.load(str(art.path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    assert art.data_path == tmp_path / DATA_FILE and art.data_path.stat().st_size == art.initializer_bytes
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in (MODEL_FILE, DATA_FILE):
        (tmp_path / name).rename(moved / name)
    report = onnx_parity_report(
        moved / MODEL_FILE,
        UNetForward(unet),
        parity_shapes(unet),
        precision="fp32",
        channels=3,
        seq_len=SEQ_LEN,
        hidden_dim=HIDDEN_DIM,
    )
    assert report["passed"]


def test_fallback_chain_records_failed_attempts(tmp_path, monkeypatch) -> None:
    real = onnx_export._run_exporter

    def flaky(exporter, *args, **kwargs):
        if exporter != "legacy":
            raise RuntimeError(f"{exporter} broke\nsecond line")
        return real(exporter, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "_run_exporter", flaky)
    art = export_onnx(tiny_bundle().unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, validate=False)
    assert art.exporter == "legacy"
    assert art.attempts == (
        {"exporter": "dynamo", "error": "RuntimeError: dynamo broke"},
        {"exporter": "dynamo-noopt", "error": "RuntimeError: dynamo-noopt broke"},
    )


def test_all_exporters_failing_raises_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "_run_exporter", lambda exporter, *a, **k: (_ for _ in ()).throw(OSError("x")))
    msg = _ALL_FAILED.format(attempts="legacy: OSError: x")
    with pytest.raises(EngineLoadError, match=re.escape(msg)):
        export_onnx(tiny_bundle().unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, exporters=("legacy",))


def _graph(sample_dims):
    x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, sample_dims)
    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["batch"])
    e = helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", SEQ_LEN, HIDDEN_DIM])
    y = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    g = helper.make_graph([helper.make_node("Relu", ["sample"], ["out_sample"])], "g", [x, t, e], [y])
    return helper.make_model(g)


@pytest.mark.parametrize(
    ("dims", "axis", "value", "param"),
    [
        ([2, 3, "height", "width"], 0, 2, "batch"),
        (["batch", 3, 16, "width"], 2, 16, "height"),
    ],
)
def test_dim_audit_names_the_specialised_dim(dims, axis, value, param) -> None:
    msg = _DIM_NOT_DYNAMIC.format(tensor="sample", axis=axis, value=value, param=param)
    with pytest.raises(ValidationFailed, match=re.escape(msg)) as info:
        audit_graph(_graph(dims), channels=(3, 3), seq_len=SEQ_LEN, hidden_dim=HIDDEN_DIM)
    assert "\n" not in str(info.value)


def test_dim_audit_accepts_a_dynamic_graph() -> None:
    audit_graph(_graph(["batch", 3, "height", "width"]), channels=(3, 3), seq_len=SEQ_LEN, hidden_dim=HIDDEN_DIM)


def test_caller_unet_is_not_modified(tmp_path) -> None:
    unet = tiny_bundle().unet.train()
    export_onnx(unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, exporters=("legacy",), validate=False)
    assert unet.training and next(unet.parameters()).requires_grad
    assert next(unet.parameters()).dtype == torch.float32
