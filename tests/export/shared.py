"""One dynamo export per test session, shared by tests/export and tests/engines (the export takes ~20 s on CPU).

``ort_store()`` builds the fp32 (dynamo) -> optimized -> fp16 chain of the tiny U-Net into a temporary cache once per
process; tests load engines from it (0.1 s) or copy it before damaging it.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.tiny import build_tiny_unet

SEQ_LEN = 4
HIDDEN_DIM = 16
SAMPLE_SIZE = 8


def tiny_bundle(seed: int = 0, prediction_type: str = "epsilon") -> SimpleNamespace:
    """A bundle-like object: the shared tiny U-Net (D = 16), prediction type and a conditioner with S = 4."""
    unet = build_tiny_unet(SAMPLE_SIZE, seed, cross_attention_dim=HIDDEN_DIM)
    return SimpleNamespace(unet=unet, prediction_type=prediction_type, conditioner=SimpleNamespace(seq_len=SEQ_LEN))


@functools.cache
def ort_store() -> Path:
    """The session's artifact store, with fp32 and fp16 entries of ``tiny_bundle()`` (built once)."""
    from fairsample.engines import load_engine

    root = Path(tempfile.mkdtemp(prefix="fairsample-ort-store-"))
    load_engine(tiny_bundle(), "onnxruntime", cache_dir=root, intra_op_threads=1).close()
    load_engine(tiny_bundle(), "onnxruntime", cache_dir=root, dtype=torch.float16, intra_op_threads=1).close()
    return root


def load_ort(**kwargs: Any) -> Any:
    """An OrtEngine over ``tiny_bundle()`` from the shared store (1 intra-op thread)."""
    from fairsample.engines import load_engine

    kwargs.setdefault("cache_dir", ort_store())
    kwargs.setdefault("intra_op_threads", 1)
    return load_engine(tiny_bundle(), "onnxruntime", **kwargs)


def entry_of(store: Path, kind: str) -> Path:
    """The entry folder of the first ``kind`` entry in ``store``."""
    from fairsample.export.cache import ArtifactCache

    rows = [r for r in ArtifactCache(store).ls() if r["kind"] == kind]
    return ArtifactCache(store).entry_dir(rows[0]["key"])
