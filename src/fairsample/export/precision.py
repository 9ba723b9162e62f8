"""fp32 ONNX -> fp16 ONNX with fp32 islands (ENGINES.md §4 step 6), via onnxconverter-common.

Initializers and activations become float16 except the islands kept in float32: normalisation reductions
(GroupNorm, which exporters lower to InstanceNormalization/ReduceMean, and LayerNorm), Softmax, and the timestep
embedding (``time_proj``/``time_embedding`` nodes, whose sinusoid of t up to 1000 needs fp32). Attention can be kept
fp32 as an option (``keep_attention_fp32``: MatMul/Softmax inside ``attn`` modules), the ORT SD README's fix for SD-2.x
black images. The graph I/O stays float32 (``keep_io_types=True``, ENGINES.md §2.1): casts live inside the graph.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fairsample.core.errors import ConfigError
from fairsample.export.onnx_export import save_with_external_data

FP16_MODEL_FILE = "model.fp16.onnx"
FP16_DATA_FILE = "model.fp16.onnx.data"
FP32_ISLAND_OPS: tuple[str, ...] = (
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Softmax",
)
"""Op types always kept in float32 (normalisation reductions and Softmax)."""
TIMESTEP_SCOPES: tuple[str, ...] = ("time_proj", "time_embedding", "get_timestep_embedding")
"""Node-name/namespace fragments of the timestep embedding (kept in float32)."""
ATTENTION_SCOPES: tuple[str, ...] = ("attn1", "attn2", "attention")
"""Node-name/namespace fragments of attention, kept in float32 when ``keep_attention_fp32`` is set."""

_NOT_A_FILE = "`path` must be an existing .onnx file, got {path!r}; export it first with export_onnx()."
_EXTRA_HINT = "fp16 conversion needs onnxconverter-common: pip install 'fairsample[ort]'."


@dataclass(frozen=True)
class Fp16Artifact:
    """The fp16 graph on disk and its precision policy.

    Attributes:
        path: ``model.fp16.onnx``; ``data_path`` its external-data file (None if everything is inline).
        island_ops: op types kept in float32.
        island_scopes: node-name fragments kept in float32.
        fp32_nodes: how many nodes were blocked from conversion; ``total_nodes`` the graph size.
        converter: ``"onnxconverter-common <version>"``.
        seconds: wall time.
    """

    path: Path  # model.fp16.onnx
    data_path: Path | None  # model.fp16.onnx.data or None
    island_ops: tuple[str, ...]  # op types kept fp32
    island_scopes: tuple[str, ...]  # name fragments kept fp32
    fp32_nodes: int  # nodes blocked from conversion
    total_nodes: int  # nodes in the source graph
    converter: str  # tool and version
    seconds: float  # wall time
    policy: dict[str, object] = field(default_factory=dict)  # the JSON-safe policy, for cache keys


def precision_policy(*, keep_attention_fp32: bool = False) -> dict[str, object]:
    """The fp32-island policy as JSON-safe data (a cache-key part, ENGINES.md §7.1).

    Example:
        >>> precision_policy()["keep_io_types"], "Softmax" in precision_policy()["island_ops"]
        (True, True)
    """
    scopes = TIMESTEP_SCOPES + (ATTENTION_SCOPES if keep_attention_fp32 else ())
    ops = FP32_ISLAND_OPS
    return {"precision": "fp16", "island_ops": list(ops), "island_scopes": list(scopes), "keep_io_types": True}


def convert_fp16(
    path: str | Path, out_dir: str | Path, *, keep_attention_fp32: bool = False, size_threshold: int = 1024
) -> Fp16Artifact:
    """Convert the fp32 ONNX at ``path`` into ``out_dir/model.fp16.onnx`` with fp32 islands and float32 I/O.

    Args:
        path: an fp32 (ideally optimized) ONNX file; external data next to it is loaded.
        out_dir: destination folder (created).
        keep_attention_fp32: also keep the attention MatMuls and Softmax in float32.
        size_threshold: initializers of at least this many bytes go to the external-data file.

    Returns:
        An :class:`Fp16Artifact`; I/O ``sample``/``timestep``/``encoder_hidden_states`` -> ``out_sample`` stay float32.

    Raises:
        ConfigError: ``path`` is not a file.
        ImportError: onnxconverter-common is missing (names the extra).

    Example:
        >>> import tempfile
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.export.onnx_export import export_onnx
        >>> d = tempfile.mkdtemp()
        >>> art = export_onnx(build_unet("test", sample_size=8, cross_attention_dim=8), d, prediction_type="epsilon",
        ...                   seq_len=4, exporters=("legacy",), validate=False)
        >>> fp16 = convert_fp16(art.path, d)
        >>> fp16.path.name, 0 < fp16.fp32_nodes < fp16.total_nodes
        ('model.fp16.onnx', True)
    """
    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise ImportError(_EXTRA_HINT) from err
    path = Path(path)
    if not path.is_file():
        raise ConfigError(_NOT_A_FILE.format(path=str(path)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    policy = precision_policy(keep_attention_fp32=keep_attention_fp32)
    ops = tuple(policy["island_ops"])  # type: ignore[arg-type]
    scopes = tuple(policy["island_scopes"])  # type: ignore[arg-type]
    model = onnx.load(str(path))
    # 0. drop stale float32 value_info (the converter re-infers types; stale entries mistype its Cast outputs)
    del model.graph.value_info[:]
    # 1. pick the fp32 islands: by op type, by name/namespace (timestep embedding, attention), plus explicit
    #    Casts to float32 (the converter would retype their outputs to fp16 without changing ``to``)
    blocked = [n.name for n in model.graph.node if n.op_type in ops or _in_scope(n, scopes) or _casts_to_fp32(n)]
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_ISLAND_OPS))
    # 2. convert everything else; keep float32 graph I/O
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=op_block_list, node_block_list=blocked, disable_shape_infer=False
        )
    # 3. save with one external-data file
    out, data = save_with_external_data(fp16, out_dir, size_threshold=size_threshold, filename=FP16_MODEL_FILE)
    onnx.checker.check_model(str(out))
    import onnxconverter_common

    return Fp16Artifact(
        path=out,
        data_path=data,
        island_ops=ops,
        island_scopes=scopes,
        fp32_nodes=len(set(blocked)),
        total_nodes=len(model.graph.node),
        converter=f"onnxconverter-common {onnxconverter_common.__version__}",
        seconds=round(time.perf_counter() - start, 3),
        policy=policy,
    )


def _casts_to_fp32(node: onnx.NodeProto) -> bool:
    """True for a ``Cast`` node whose target type is float32."""
    return node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)


def _in_scope(node: onnx.NodeProto, scopes: tuple[str, ...]) -> bool:
    """True when the node name or its exporter namespace metadata mentions one of ``scopes``."""
    text = node.name + " " + " ".join(p.value for p in node.metadata_props if p.key == "namespace")
    return any(s in text for s in scopes)
