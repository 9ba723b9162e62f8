"""The onnxruntime backend: the CPU execution provider is the reference backend; the CUDA EP uses IO binding.

Session options are chosen for speed: ``ORT_ENABLE_ALL`` graph optimisation, sequential execution, intra-op threads =
physical cores (overridable), memory-pattern planning on. They are recorded in :attr:`OrtEngine.manifest`.

Batch invariance. Unlike the torch CPU forward, ORT CPU outputs were measured bitwise batch-invariant (onnxruntime
1.31.1, MLAS): sample i of a batch equals the same sample run alone for N in {2, 3, 8}, with 1 and 2 intra-op threads,
fp32 and fp16 graphs, dynamo and legacy exports, on the test U-Net (16x16) and ``tiny-32`` (32x32). The default is
therefore the plain batched call (``batch_invariant=False``), and a test pins the property so an onnxruntime upgrade
that breaks it fails loudly. ``batch_invariant=True`` keeps TorchEngine's guarantee by construction (one sample per
session call); it cost +14 % per call on ``tiny-32`` at N = 8, 32x32, one thread (61.9 -> 70.4 ms).

Batch parallelism (CPU). With T physical cores and N ≥ 2 rows, the batch is split into T contiguous parts run at the
same time on T single-thread sessions (ORT releases the GIL in ``run``), instead of one session with T intra-op
threads. On the 2-core project machines this is 1.15-1.5x faster for N ≥ 8 on the embedded model: per-op work is
small and intra-op threads spend much of it synchronising. Each part is run in chunks of about
:data:`CHUNK_PIXELS` / (H·W) rows (4 rows at 32x32), so a chunk's activations stay in the core's L2 cache: on a
2-core AMD EPYC (AVX2, 1 MiB L2 per core) N = 32 went from 269 ms (two chunks of 16) to 232-241 ms (chunks of 2 or 4,
equal within noise), N = 64 from 504 to 475 ms (onnxruntime 1.32.0). Outputs are bitwise identical whatever the
split, the chunking or the thread count (measured on onnxruntime 1.31.1 and 1.32.0 at N = 1, 2, 3, 5, 8, 32; a test
pins it). One row (N = 1) runs on the T-thread session. That session stops its threads' spin-wait when a run returns
(``session.force_spinning_stop``): left spinning, they kept a core busy for tens of ms and an N = 2 call right after
an N = 1 call took 31-38 ms instead of 18.6 ms (the CFG "two calls" pattern); sustained N = 1 loops were within
noise of the spinning default. Each session holds its own copy of the weights, so batch parallelism is used
automatically only for models up to :data:`PARALLEL_MAX_BYTES`; ``batch_parallel=False`` turns it off.

The CUDA path (``onnxruntime-gpu``, ``fairsample[gpu]``) binds caller tensors with ``session.io_binding()`` and is
written against the documented API but **untested** on this project's CPU-only machines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fairsample.core.engine_spec import EngineSpec
from fairsample.core.errors import EngineLoadError
from fairsample.engines.onnx_graph import OnnxGraphEngine, file_bytes, graph_feeds
from fairsample.export.ort_session import (  # noqa: F401  (re-exported)
    ORT_EXTRA_HINT,
    create_session,
    import_onnxruntime,
    physical_cores,
)

PARALLEL_MAX_BYTES = 512 << 20
"""Largest model (ONNX + external data) for which batch-parallel single-thread sessions are used automatically."""

CHUNK_PIXELS = 4096
"""Batch-parallel chunk size in rows x H x W: each single-thread session runs its part in chunks of
``max(1, CHUNK_PIXELS // (H * W))`` rows (module docstring)."""

_CLOSED = "this OrtEngine was closed; load a new engine with fairsample.engines.load_engine(bundle, backend=...)."
_NO_REFIT = "onnxruntime engines cannot refit weights; load the new checkpoint with load_engine(bundle, backend=...)."
_NONFINITE_OUTPUT = "the onnxruntime engine produced NaN/Inf at timestep(s) {timesteps}; check the artifact."


def _chunks(a: int, b: int, rows: int) -> list[tuple[int, int]]:
    """``[a, b)`` cut into consecutive ranges of at most ``rows`` rows, as even as possible (5 rows by 4 -> 2 + 3)."""
    count = -(-(b - a) // rows)
    return [(a + i * (b - a) // count, a + (i + 1) * (b - a) // count) for i in range(count)]


class OrtEngine(OnnxGraphEngine):
    """An ONNX model run by onnxruntime behind the :class:`~fairsample.engines.Engine` API (ENGINES.md §2).

    Usually built by :func:`fairsample.engines.load_engine` (export + validation + cache). The boundary rules are
    the torch engine's (:func:`~fairsample.core.engine_spec.check_inputs`): torch or numpy inputs on the CPU, cast to
    float32 once, scalar timesteps broadcast. Outputs are fresh tensors owned by the caller; ``out=`` receives a copy
    and may alias ``sample``.

    Args:
        path: the ``.onnx`` file with I/O ``sample (N, C, H, W)``, ``timestep (N,)``, ``encoder_hidden_states
            (N, S, D)`` -> ``out_sample (N, C_out, H, W)``, float32.
        spec: what the graph computes (channels, S, D, prediction type, precision).
        device: ``"cpu"`` (default; CPU EP) or ``"cuda[:k]"`` (CUDA EP + IO binding; untested).
        manifest: cache manifest of the artifact (key parts, versions, validation report); copied read-only.
        spatial_multiple: H and W must be multiples of this (the U-Net's downsampling factor).
        intra_op_threads: ORT intra-op threads; None = physical cores.
        batch_invariant: run one sample per session call so rows are bitwise batch-independent by construction;
            the default batched call was measured invariant on the CPU EP already (module docstring).
        batch_parallel: CPU only: split N ≥ 2 rows over one single-thread session per intra-op thread (module
            docstring); None = automatic (more than one thread and a model up to :data:`PARALLEL_MAX_BYTES`).
        check_finite: raise :class:`~fairsample.core.errors.ValidationFailed` on NaN/Inf outputs.

    Raises:
        ImportError: onnxruntime is missing (names the ``[ort]`` extra).
        EngineLoadError: the file cannot be loaded, or CUDA was asked for without the CUDA EP.

    Example:
        >>> import tempfile, torch
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.export.onnx_export import export_onnx
        >>> unet = build_unet("test", sample_size=8, cross_attention_dim=8)
        >>> art = export_onnx(unet, tempfile.mkdtemp(), prediction_type="epsilon", seq_len=4, exporters=("legacy",))
        >>> spec = EngineSpec(in_channels=3, out_channels=3, sample_size=8, seq_len=4, hidden_dim=8,
        ...                   prediction_type="epsilon")
        >>> with OrtEngine(art.path, spec=spec, spatial_multiple=2, intra_op_threads=1) as engine:
        ...     engine(torch.zeros(2, 3, 8, 8), 10.0, torch.zeros(2, 4, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    backend: Literal["onnxruntime"] = "onnxruntime"
    _closed_msg = _CLOSED
    _no_refit_msg = _NO_REFIT
    _nonfinite_msg = _NONFINITE_OUTPUT

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: EngineSpec,
        device: str | torch.device = "cpu",
        manifest: Mapping[str, Any] | None = None,
        spatial_multiple: int = 1,
        intra_op_threads: int | None = None,
        batch_invariant: bool = False,
        check_finite: bool = False,
        batch_parallel: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.spec = spec
        self.spatial_multiple = int(spatial_multiple)
        self.batch_invariant = batch_invariant
        self.check_finite = check_finite
        self._weights_bytes = file_bytes(self.path)
        threads = intra_op_threads if isinstance(intra_op_threads, int) and intra_op_threads > 0 else physical_cores()
        if batch_parallel is None:
            batch_parallel = threads > 1 and self._weights_bytes <= PARALLEL_MAX_BYTES
        parallel = bool(batch_parallel) and self.device.type == "cpu" and threads > 1 and not batch_invariant
        self._session, session_options = create_session(
            self.path, device=self.device, intra_op_threads=intra_op_threads, stop_spinning=parallel
        )
        self.capabilities: frozenset[str] = frozenset(
            {"dynamic_shapes", "io_binding"} if self.device.type == "cuda" else {"dynamic_shapes"}
        )
        self._narrow: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        if parallel:
            self._narrow = [create_session(self.path, device="cpu", intra_op_threads=1)[0] for _ in range(threads)]
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fairsample-ort")
        self.manifest: Mapping[str, Any] = MappingProxyType(
            {
                **dict(manifest or {}),
                "backend": self.backend,
                "device": str(self.device),
                "precision": spec.precision,
                "prediction_type": spec.prediction_type,
                "batch_invariant": batch_invariant,
                "session": session_options,
                "batch_parallel": {"sessions": len(self._narrow), "threads_each": 1} if self._narrow else None,
                "model_file": self.path.name,
            }
        )

    @property
    def session(self) -> Any:
        """The onnxruntime ``InferenceSession`` (raises :class:`~fairsample.core.errors.EngineLoadError` after
        close)."""
        if self._session is None:
            raise EngineLoadError(_CLOSED)
        return self._session

    def _is_open(self) -> bool:
        return self._session is not None

    def _run(self, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """The checked batch on the CUDA EP, row by row (``batch_invariant``), on the parallel single-thread
        sessions, or in one call."""
        session = self.session
        n = x.shape[0]
        if self.device.type == "cuda":
            return self._run_cuda(session, x, t, e)
        if self.batch_invariant and n > 1:
            return torch.cat([self._run_cpu(session, x[i : i + 1], t[i : i + 1], e[i : i + 1]) for i in range(n)])
        if self._narrow and n >= 2:
            return self._run_parallel(x, t, e)
        return self._run_cpu(session, x, t, e)

    @staticmethod
    def _run_cpu(session: Any, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """CPU EP call on contiguous numpy views (no copy for contiguous float32 inputs)."""
        return torch.from_numpy(session.run(["out_sample"], graph_feeds(x, t, e))[0])

    def _run_parallel(self, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """Contiguous parts of the batch on the single-thread sessions, concurrently, each run in cache-sized chunks
        (bitwise equal to one call)."""
        assert self._pool is not None
        n, _, h, w = x.shape
        k = min(len(self._narrow), n)
        rows = max(1, CHUNK_PIXELS // (h * w))
        bounds = [round(i * n / k) for i in range(k + 1)]

        def part(session: Any, a: int, b: int) -> list[Tensor]:
            return [self._run_cpu(session, x[i:j], t[i:j], e[i:j]) for i, j in _chunks(a, b, rows)]

        jobs = [
            self._pool.submit(part, self._narrow[i], a, b)
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
        ]
        return torch.cat([chunk for job in jobs for chunk in job.result()])

    def _run_cuda(self, session: Any, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """CUDA EP call with IO binding on the caller's device pointers (untested: no GPU on the project machines)."""
        x, t, e = x.contiguous(), t.contiguous(), e.contiguous()
        n, _, h, w = x.shape
        result = torch.empty((n, self.spec.out_channels, h, w), dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        dev_id = self.device.index or 0
        for name, tensor in (("sample", x), ("timestep", t), ("encoder_hidden_states", e)):
            binding.bind_input(name, "cuda", dev_id, np.float32, list(tensor.shape), tensor.data_ptr())
        binding.bind_output("out_sample", "cuda", dev_id, np.float32, list(result.shape), result.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return result

    def close(self) -> None:
        """Release the onnxruntime sessions; idempotent."""
        self._session = None
        self._narrow = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
