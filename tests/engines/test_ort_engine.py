"""onnxruntime-specific engine behaviour: spatial multiple, refit refusal, missing extra, fp16 (batch invariance of
both engines: test_engine_batch_invariance.py)."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from fairsample.core.errors import ConfigError, EngineLoadError
from fairsample.engines import BACKENDS, load_engine, ort_engine
from fairsample.engines.onnx_graph import _SPATIAL
from fairsample.engines.ort_engine import _NO_REFIT, ORT_EXTRA_HINT, OrtEngine
from fairsample.export.validate import GATES, compare
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, load_ort, tiny_bundle

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")


def test_backends_and_default() -> None:
    assert BACKENDS == ("torch", "onnxruntime", "tensorrt", "openvino")
    assert load_engine(tiny_bundle()).backend == "torch"


def test_loads_from_the_cache_with_session_options() -> None:
    engine = load_ort()
    assert isinstance(engine, OrtEngine) and engine.backend == "onnxruntime"
    session = engine.manifest["session"]
    assert session["providers"] == ["CPUExecutionProvider"] and session["intra_op_num_threads"] == 1
    assert session["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert engine.manifest["kind"] == "onnx.opt" and engine.manifest["report"]["passed"]


def test_h_w_must_be_multiples_of_the_downsampling_factor() -> None:
    engine = load_ort()
    assert not engine.supports(1, 9, 8)
    with pytest.raises(ConfigError, match=re.escape(_SPATIAL.format(h=9, w=8, m=2))):
        engine(torch.zeros(1, 3, 9, 8), 1.0, torch.zeros(1, SEQ_LEN, HIDDEN_DIM))


def test_refit_is_refused() -> None:
    engine = load_ort()
    assert "refit" not in engine.capabilities
    with pytest.raises(EngineLoadError, match=re.escape(_NO_REFIT)):
        engine.refit(tiny_bundle().unet.state_dict())


def test_missing_onnxruntime_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=re.escape(ORT_EXTRA_HINT)):
        load_engine(tiny_bundle(), "onnxruntime")
    assert "pip install 'fairsample[ort]'" in ORT_EXTRA_HINT


def test_fp16_engine_keeps_a_float32_boundary_and_passes_its_gate() -> None:
    engine = load_ort(dtype=torch.float16)
    assert engine.spec.precision == "fp16" and engine.manifest["kind"] == "onnx.fp16"
    g = torch.Generator().manual_seed(3)
    x, t, e = (
        torch.randn(2, 3, 8, 12, generator=g),
        torch.tensor([20.0, 900.0]),
        torch.randn(2, SEQ_LEN, HIDDEN_DIM, generator=g),
    )
    out = engine(x, t, e)
    ref = load_engine(tiny_bundle())(x, t, e)
    assert out.dtype == torch.float32
    assert GATES["fp16"].failure(compare(out, ref)) is None


def test_seq_len_is_required(monkeypatch) -> None:
    bundle = tiny_bundle()
    del bundle.conditioner
    with pytest.raises(ConfigError, match="`seq_len` is needed"):
        load_engine(bundle, "onnxruntime")


@pytest.mark.parametrize("chunk_pixels", [4096, 128])
def test_batch_parallel_sessions_are_bitwise_equal_to_one_session(monkeypatch, chunk_pixels) -> None:
    """Splitting a batch over single-thread sessions (the CPU default with > 1 thread), in chunks of 2 rows at 8x8
    when ``CHUNK_PIXELS`` is 128, changes no bit."""
    monkeypatch.setattr(ort_engine, "CHUNK_PIXELS", chunk_pixels)
    wide = load_ort(intra_op_threads=2, batch_parallel=False)
    split = load_ort(intra_op_threads=2)
    one = load_ort(intra_op_threads=1)
    assert wide.manifest["batch_parallel"] is None and one.manifest["batch_parallel"] is None
    assert split.manifest["batch_parallel"] == {"sessions": 2, "threads_each": 1}
    # the wide session must not keep spinning into the parallel sessions' runs; without them it may
    assert split.manifest["session"]["force_spinning_stop"] is True
    assert wide.manifest["session"]["force_spinning_stop"] is False
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 5, 9):
        x, t, e = torch.randn(n, 3, 8, 8, generator=g), torch.linspace(5, 900, n), torch.randn(n, SEQ_LEN, HIDDEN_DIM)
        ref = one(x, t, e)
        assert torch.equal(split(x, t, e), ref) and torch.equal(wide(x, t, e), ref)
    split.close()
    split.close()  # idempotent, and the worker pool is gone
    assert split._pool is None


def test_chunks_cover_the_range_evenly() -> None:
    assert ort_engine._chunks(0, 5, 4) == [(0, 2), (2, 5)]
    assert ort_engine._chunks(8, 16, 4) == [(8, 12), (12, 16)]
    assert ort_engine._chunks(0, 1, 4) == [(0, 1)]
    spans = ort_engine._chunks(3, 40, 4)
    assert spans[0][0] == 3 and spans[-1][1] == 40 and all(b - a in (3, 4) for a, b in spans)
    assert all(p[1] == q[0] for p, q in zip(spans[:-1], spans[1:], strict=True))
