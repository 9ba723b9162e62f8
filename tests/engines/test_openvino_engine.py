"""The OpenVINO bf16 engine: CPU-flag parsing (always), protocol, the image gate passing on the real engine and failing
on a perturbed one, refusal without native bf16 (skipped without openvino or a bf16 CPU)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from fairsample.core.errors import ConfigError, EngineLoadError, ValidationFailed
from fairsample.engines import Engine
from fairsample.engines import openvino_engine as ove
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, tiny_bundle

EXPORTERS = ("legacy",)
CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 avx512f {extra}

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""


@pytest.mark.parametrize(
    ("extra", "system", "expected"),
    [
        ("avx512_bf16", "Linux", (True, "the CPU reports avx512_bf16")),
        ("amx_bf16 amx_tile", "Linux", (True, "the CPU reports amx_bf16")),
        ("avx512_bf16 amx_bf16", "Linux", (True, "the CPU reports avx512_bf16 and amx_bf16")),
        ("avx512_vnni", "Linux", (False, "the CPU reports neither avx512_bf16 nor amx_bf16")),
    ],
)
def test_bf16_supported_parses_cpu_flags(extra: str, system: str, expected: tuple[bool, str]) -> None:
    assert ove.bf16_supported(CPUINFO.format(extra=extra), system=system) == expected


def test_bf16_supported_is_false_when_unknown() -> None:
    assert ove.bf16_supported(system="Darwin") == (
        False,
        "bf16 support is unknown on Darwin (only Linux /proc/cpuinfo is read)",
    )
    assert ove.bf16_supported("processor : 0\n", system="Linux")[0] is False


def test_missing_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'fairsample[openvino]'")):
        ove.import_openvino()


def test_bf16_refused_without_cpu_support(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'fairsample[openvino]')")
    monkeypatch.setattr(ove, "bf16_supported", lambda *a, **k: (False, "the CPU reports neither"))
    with pytest.raises(ConfigError, match="bf16 needs native CPU support: the CPU reports neither"):
        ove.load_bf16_engine(tiny_bundle(), cache_dir=tmp_path)


needs_bf16 = pytest.mark.skipif(not ove.bf16_supported()[0], reason=f"no native bf16: {ove.bf16_supported()[1]}")


@functools.cache
def _store() -> tuple[Path, Path, object]:
    """A store with the tiny bundle's fp32 chain (legacy exporter: the faster one), its ONNX file and spec."""
    import tempfile

    from fairsample.engines._ort_build import prepare_onnx

    root = Path(tempfile.mkdtemp(prefix="fairsample-ov-store-"))
    _, entry, manifest, spec = prepare_onnx(tiny_bundle(), cache_dir=root, exporters=EXPORTERS)
    return root, entry / manifest["model_file"], spec


def _gate_options() -> dict[str, object]:
    """Gate sampling for the untrained tiny U-Net: read as v-prediction (as an untrained epsilon model, DDIM's x0
    amplifies its noise and bf16 fails the gate: mean 14 levels), 10 DDIM steps."""
    from diffusers import DDIMScheduler

    return {"scheduler": DDIMScheduler(prediction_type="v_prediction"), "steps": 10, "exporters": EXPORTERS}


@needs_bf16
def test_protocol_shapes_dtype_close() -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'fairsample[openvino]')")
    _, path, spec = _store()
    engine = ove.OpenVinoEngine(path, spec=spec, precision="bf16", spatial_multiple=2)  # type: ignore[arg-type]
    assert isinstance(engine, Engine) and engine.backend == "openvino" and engine.spec.precision == "bf16"
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, SEQ_LEN, HIDDEN_DIM, generator=g)
    y = engine(x, 10.0, e)
    assert y.shape == (3, 3, 8, 8) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert engine(x[:1], 10.0, e[:1]).shape == (1, 3, 8, 8)
    out = torch.empty(3, 3, 8, 8)
    assert engine(x.numpy(), torch.full((3,), 10.0), e, out=out) is out
    assert engine.manifest["openvino"]["inference_precision"] == "bf16"
    assert not engine.supports(1, 9, 8) and engine.memory().weights_bytes > 0
    engine.close()
    engine.close()
    with pytest.raises(EngineLoadError, match="closed"):
        engine(x, 10.0, e)


@needs_bf16
def test_gate_passes_then_is_cached_and_fails_on_a_perturbed_engine() -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'fairsample[openvino]')")
    store, path, spec = _store()
    bundle = tiny_bundle()
    engine = ove.load_bf16_engine(bundle, cache_dir=store, **_gate_options())
    gate = engine.manifest["gate"]
    assert gate["passed"] and gate["mean_abs"] <= ove.GATE_MEAN_ABS_MAX and gate["frac_off"] <= ove.GATE_FRAC_OFF_MAX
    assert gate["plan"]["images"] == 2 * ove.GATE_IMAGES_PER_CELL and gate["reference"] == "onnxruntime"
    assert ove.load_bf16_engine(bundle, cache_dir=store, **_gate_options()).manifest["gate"] == gate  # cached

    g = torch.Generator().manual_seed(0)

    def perturbed(x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return engine(x, t, e) + 0.5 * torch.randn(x.shape, generator=g)

    reference = ove._reference_engine(bundle, path, spec, 2)  # type: ignore[arg-type]
    options = {k: v for k, v in _gate_options().items() if k != "exporters"}
    report = ove.image_gate(bundle, perturbed, reference, **options)  # type: ignore[arg-type]
    assert not report["passed"] and report["mean_abs"] > ove.GATE_MEAN_ABS_MAX


@needs_bf16
def test_failed_gate_raises_with_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'fairsample[openvino]')")
    monkeypatch.setattr(ove, "GATE_MEAN_ABS_MAX", -1.0)
    with pytest.raises(ValidationFailed, match=r"failed its image gate .* mean abs diff \d+\.\d{3} uint8 levels"):
        ove.load_bf16_engine(tiny_bundle(), cache_dir=_store()[0], **_gate_options())


def test_load_engine_openvino_is_cpu_float32_only() -> None:
    """``load_engine(..., "openvino")`` refuses a GPU device or another boundary dtype before importing openvino."""
    from fairsample.engines import load_engine

    for kwargs in ({"device": "cuda"}, {"dtype": torch.float16}):
        with pytest.raises(ConfigError, match="backend 'openvino' runs on the CPU with a float32 boundary"):
            load_engine(tiny_bundle(), "openvino", **kwargs)  # type: ignore[arg-type]


@needs_bf16
def test_load_engine_openvino_is_the_gated_bf16_engine_and_batch_invariant() -> None:
    """The ``openvino`` backend name gives the gated bf16 engine; rows are bitwise the same whatever the batch split
    (the determinism rule auto relies on when it picks this engine)."""
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'fairsample[openvino]')")
    from fairsample.engines import load_engine

    engine = load_engine(tiny_bundle(), "openvino", cache_dir=_store()[0], **_gate_options())
    assert engine.backend == "openvino" and engine.spec.precision == "bf16" and engine.manifest["gate"]["passed"]
    g = torch.Generator().manual_seed(3)
    x, e = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, SEQ_LEN, HIDDEN_DIM, generator=g)
    t = torch.tensor([999.0, 700.0, 500.0, 300.0, 100.0, 1.0])
    full = engine(x, t, e)
    rows = torch.cat([engine(x[i : i + 1], t[i : i + 1], e[i : i + 1]) for i in range(6)])
    split = torch.cat([engine(x[:4], t[:4], e[:4]), engine(x[4:], t[4:], e[4:])])
    assert torch.equal(rows, full) and torch.equal(split, full)
    engine.close()
