"""fp32 ONNX -> optimized fp32 ONNX (ENGINES.md §4 step 5), a separate, deterministic artifact.

The graph is loaded with its external data, run through ``onnxscript.optimizer.optimize`` (constant folding,
dead-code elimination, function inlining and ONNX shape inference) and saved as ``model.opt.onnx`` +
``model.opt.onnx.data`` (one data file). Nothing from the ``[tensorrt]`` extra is used. The same input gives the
same bytes; parity against torch is re-run by the caller (:func:`fairsample.export.onnx_export.onnx_parity_report`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxscript
import onnxscript.optimizer

from fairsample.core.errors import ConfigError
from fairsample.export.onnx_export import save_with_external_data

OPT_MODEL_FILE = "model.opt.onnx"
OPT_DATA_FILE = "model.opt.onnx.data"

_NOT_A_FILE = "`path` must be an existing .onnx file, got {path!r}; export it first with export_onnx()."


@dataclass(frozen=True)
class OptimizedArtifact:
    """The optimized graph on disk.

    Attributes:
        path: ``model.opt.onnx``; ``data_path`` its single external-data file (None if everything is inline).
        nodes_before: node count of the input graph; ``nodes_after`` of the optimized one.
        optimizer: ``"onnxscript <version>"``.
        seconds: wall time.
    """

    path: Path  # model.opt.onnx
    data_path: Path | None  # model.opt.onnx.data or None
    nodes_before: int  # input graph nodes
    nodes_after: int  # optimized graph nodes
    optimizer: str  # tool and version
    seconds: float  # wall time


def optimize_onnx(path: str | Path, out_dir: str | Path, *, size_threshold: int = 1024) -> OptimizedArtifact:
    """Optimize the ONNX model at ``path`` into ``out_dir/model.opt.onnx`` (+ one ``.data`` file).

    Args:
        path: an fp32 ``model.onnx`` (external data next to it is loaded).
        out_dir: destination folder (created); a previous optimized model there is replaced.
        size_threshold: initializers of at least this many bytes go to the external-data file.

    Returns:
        An :class:`OptimizedArtifact`; I/O names, dtypes and dynamic dims are unchanged.

    Raises:
        ConfigError: ``path`` is not a file.

    Example:
        >>> import tempfile
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.export.onnx_export import export_onnx
        >>> d = tempfile.mkdtemp()
        >>> art = export_onnx(build_unet("test", sample_size=8, cross_attention_dim=8), d, prediction_type="epsilon",
        ...                   seq_len=4, exporters=("legacy",), validate=False)
        >>> opt = optimize_onnx(art.path, d)
        >>> opt.path.name, opt.nodes_after < opt.nodes_before
        ('model.opt.onnx', True)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(_NOT_A_FILE.format(path=str(path)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = onnx.load(str(path))
    before = len(model.graph.node)
    # 1. constant folding, dead code, inlining and shape inference (onnxscript optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnxscript.optimizer.optimize(model, num_iterations=2, onnx_shape_inference=True)
    # 2. full ONNX shape inference over the result (value_info for every intermediate)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    # 3. save with one external-data file
    out, data = save_with_external_data(model, out_dir, size_threshold=size_threshold, filename=OPT_MODEL_FILE)
    onnx.checker.check_model(str(out))
    return OptimizedArtifact(
        path=out,
        data_path=data,
        nodes_before=before,
        nodes_after=len(model.graph.node),
        optimizer=f"onnxscript {onnxscript.__version__}",
        seconds=round(time.perf_counter() - start, 3),
    )
