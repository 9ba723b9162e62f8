"""torch U-Net -> fp32 ONNX (ENGINES.md §4 steps 1-4): wrapper, exporter fallback chain, dim audit, external data.

The U-Net is wrapped in a module with positional tensor I/O ``(sample, timestep, encoder_hidden_states) ->
out_sample`` and exported on the CPU in float32 with ``torch.onnx.export(dynamo=True)`` and ``torch.export.Dim``
bounds on N, H and W. Example inputs have N = 2 and H, W that are multiples of the U-Net's downsampling factor but
not of 16 where the model allows it (size-0/1 dims and /16 multiples specialise). On failure the chain retries with
``optimize=False``, then the legacy TorchScript exporter (opset 17, ``dynamic_axes``); the path used is recorded.
Weights always go to one ``model.onnx.data`` file next to ``model.onnx``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from fairsample.core.errors import ConfigError, EngineLoadError, ValidationFailed

Exporter = Literal["dynamo", "dynamo-noopt", "legacy"]
EXPORTERS: tuple[Exporter, ...] = ("dynamo", "dynamo-noopt", "legacy")
"""The fallback chain, in order."""

INPUT_NAMES = ("sample", "timestep", "encoder_hidden_states")
OUTPUT_NAMES = ("out_sample",)
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
LEGACY_OPSET = 17
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "sample": {0: "batch", 2: "height", 3: "width"},
    "timestep": {0: "batch"},
    "encoder_hidden_states": {0: "batch"},
    "out_sample": {0: "batch", 2: "height", 3: "width"},
}
"""Which axes of each graph I/O must carry a ``dim_param`` (ENGINES.md §2.1: only N, H and W are dynamic)."""

_NOT_A_UNET = "`unet` must be a diffusers UNet2DConditionModel, got {type_name}; pass bundle.unet."
_BAD_EXPORTERS = "`exporters` must be a non-empty sequence of {allowed}, got {value!r}."
_BAD_INT = "`{name}` must be a positive int, got {value!r}."
_BAD_CROSS_DIM = "`unet.config.cross_attention_dim` must be one int, got {value!r}; per-block dims are not supported."
_ALL_FAILED = "every ONNX exporter failed ({attempts}); check the U-Net patches or report the first error."
_DIM_NOT_DYNAMIC = (
    "exported graph fixed {tensor}[{axis}] to {value} but it must stay dynamic ({param}); re-export with the legacy "
    "exporter or example inputs with N >= 2 and H, W not multiples of 16."
)
_DIM_WRONG_STATIC = (
    "exported graph has {tensor}[{axis}] = {got} but the spec needs {expected}; check seq_len/channels."
)
_MISSING_IO = "exported graph I/O names are {got}, expected inputs {inputs} and outputs {outputs}."
_IDENTITY_OUTPUT = (
    "exported graph output {name!r} is produced by an Identity node; the exporter left an Identity chain."
)


@dataclass(frozen=True)
class OnnxArtifact:
    """An exported ONNX model on disk and what is known about it.

    Attributes:
        path: ``model.onnx`` (graph); weights live in ``data_path`` when any were externalised.
        data_path: ``model.onnx.data`` next to ``path``, or None when every initializer stayed inline.
        exporter: the exporter path that produced the graph: ``"dynamo"``, ``"dynamo-noopt"`` or ``"legacy"``.
        opset: default-domain opset of the graph.
        spatial_multiple: H and W must be multiples of this (``2 ** (len(block_out_channels) - 1)``).
        example_shape: the (N, H, W) of the export example inputs.
        seq_len: S of ``encoder_hidden_states`` (static in the graph).
        hidden_dim: D of ``encoder_hidden_states``.
        channels: (C_in, C_out).
        prediction_type: what ``out_sample`` is.
        max_batch: the export upper bound on N; ``max_size`` the bound on H and W.
        node_count: graph nodes; ``initializer_bytes`` total weight bytes.
        export_seconds: wall time of the successful export attempt.
        attempts: failed attempts before the successful one, as ``{"exporter", "error"}`` dicts.
        report: the parity report (:func:`fairsample.export.validate.parity_report`), or None if not validated.
    """

    path: Path  # model.onnx
    data_path: Path | None  # model.onnx.data, or None when everything is inline
    exporter: Exporter  # which fallback-chain step succeeded
    opset: int  # default-domain opset
    spatial_multiple: int  # H, W must be multiples of this
    example_shape: tuple[int, int, int]  # (N, H, W) of the example inputs
    seq_len: int  # static S
    hidden_dim: int  # static D
    channels: tuple[int, int]  # (C_in, C_out)
    prediction_type: str  # epsilon / v_prediction / sample
    max_batch: int  # Dim max for N
    max_size: int  # Dim max for H and W
    node_count: int  # graph nodes
    initializer_bytes: int  # total initializer bytes
    export_seconds: float  # wall time of the successful attempt
    attempts: tuple[dict[str, str], ...] = field(default=())  # failed attempts, in order
    report: dict[str, Any] | None = None  # parity report

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (paths as file names) for manifests."""
        d = asdict(self)
        d["path"] = self.path.name
        d["data_path"] = self.data_path.name if self.data_path else None
        d["attempts"] = list(self.attempts)
        return d


class UNetForward(torch.nn.Module):
    """Positional tensor I/O around a diffusers U-Net: ``(sample, timestep, encoder_hidden_states) -> out_sample``.

    Args:
        unet: the U-Net; ``timestep`` reaches it as a float32 (N,) tensor.

    Example:
        >>> from fairsample.models.builtin import build_unet
        >>> f = UNetForward(build_unet("test", sample_size=8, cross_attention_dim=8))
        >>> f(torch.zeros(2, 3, 8, 8), torch.ones(2), torch.zeros(2, 4, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """(N, C, H, W), (N,), (N, S, D) float32 -> (N, C_out, H, W) float32."""
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def spatial_multiple(unet: UNet2DConditionModel) -> int:
    """H and W must be divisible by ``2 ** (number of down blocks - 1)`` (the last block does not downsample).

    Example:
        >>> from fairsample.models.builtin import build_unet
        >>> spatial_multiple(build_unet("test"))
        2
    """
    return 2 ** (len(unet.config.block_out_channels) - 1)


def example_shape(unet: UNet2DConditionModel, n: int = 2) -> tuple[int, int, int]:
    """Export example (N, H, W): H = 5m, W = 7m for the spatial multiple m, so H != W and neither is a multiple of 16
    unless m itself is (then the model allows nothing else).

    Example:
        >>> from fairsample.models.builtin import build_unet
        >>> example_shape(build_unet("test"))
        (2, 10, 14)
    """
    m = spatial_multiple(unet)
    return (n, 5 * m, 7 * m)


def parity_shapes(unet: UNet2DConditionModel) -> list[tuple[int, int, int]]:
    """The ENGINES.md §4 parity shapes: the export shape, another N (1), a second non-square H != W at N = 3.

    Example:
        >>> from fairsample.models.builtin import build_unet
        >>> parity_shapes(build_unet("test"))
        [(2, 10, 14), (1, 10, 14), (3, 8, 4)]
    """
    m = spatial_multiple(unet)
    n, h, w = example_shape(unet)
    return [(n, h, w), (1, h, w), (3, 4 * m, 2 * m)]


def export_onnx(
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    *,
    prediction_type: str,
    seq_len: int,
    max_batch: int = 256,
    max_size: int = 512,
    exporters: Sequence[Exporter] = EXPORTERS,
    size_threshold: int = 1024,
    validate: bool = True,
    validation_shapes: Sequence[tuple[int, int, int]] | None = None,
) -> OnnxArtifact:
    """Export ``unet`` to ``out_dir/model.onnx`` (+ ``model.onnx.data``), audit it and check parity on ORT CPU.

    Args:
        unet: the U-Net (moved to CPU float32 in eval mode for the export; the caller's module is not modified).
        out_dir: destination folder (created); existing ``model.onnx``/``model.onnx.data`` are replaced.
        prediction_type: what the U-Net predicts (recorded).
        seq_len: S of ``encoder_hidden_states`` (static in the graph).
        max_batch: upper bound of the dynamic N.
        max_size: upper bound of the dynamic H and W.
        exporters: the fallback chain to try, in order (default: dynamo, dynamo without optimisation, legacy).
        size_threshold: initializers of at least this many bytes go to ``model.onnx.data`` (0 = all of them).
        validate: run the fp32 parity gate on ONNX Runtime CPU (needs ``fairsample[ort]``).
        validation_shapes: (N, H, W) parity shapes; default :func:`parity_shapes`.

    Returns:
        An :class:`OnnxArtifact` with I/O ``sample (N, C, H, W)``, ``timestep (N,)``, ``encoder_hidden_states
        (N, S, D)`` -> ``out_sample (N, C_out, H, W)``, all float32, and the parity report.

    Raises:
        ConfigError: ``unet`` is not a ``UNet2DConditionModel`` or a bad argument.
        EngineLoadError: every exporter in the chain failed (the message lists each one-line error).
        ValidationFailed: the parity gate failed.

    Example:
        >>> import tempfile
        >>> from fairsample.models.builtin import build_unet
        >>> unet = build_unet("test", sample_size=8, cross_attention_dim=8)
        >>> art = export_onnx(unet, tempfile.mkdtemp(), prediction_type="epsilon", seq_len=4,
        ...                   exporters=("legacy",))
        >>> art.exporter, art.path.name, art.report["passed"]
        ('legacy', 'model.onnx', True)
    """
    if not isinstance(unet, UNet2DConditionModel):
        raise ConfigError(_NOT_A_UNET.format(type_name=type(unet).__name__))
    if not exporters or any(e not in EXPORTERS for e in exporters):
        raise ConfigError(_BAD_EXPORTERS.format(allowed=list(EXPORTERS), value=exporters))
    for name, value in (("seq_len", seq_len), ("max_batch", max_batch), ("max_size", max_size)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(_BAD_INT.format(name=name, value=value))
    hidden_dim = _cross_attention_dim(unet)
    channels = (int(unet.config.in_channels), int(unet.config.out_channels))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # 1. prepare: a CPU float32 eval-mode wrapper that never touches the caller's module
    wrapper = UNetForward(_cpu_fp32_copy(unet)).eval().requires_grad_(False)
    shape = example_shape(unet)
    n, h, w = shape
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(n, channels[0], h, w, generator=g),
        torch.tensor([3.0, 501.5]),
        torch.randn(n, seq_len, hidden_dim, generator=g),
    )
    # 2. export along the fallback chain, 3. audit each result
    attempts: list[dict[str, str]] = []
    for exporter in exporters:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
            raw = Path(tmp) / MODEL_FILE
            start = time.perf_counter()
            try:
                _run_exporter(
                    exporter,
                    wrapper,
                    args,
                    raw,
                    max_batch=max_batch,
                    max_size=max_size,
                    multiple=spatial_multiple(unet),
                )
                seconds = time.perf_counter() - start
                model = onnx.load(str(raw))
                audit_graph(model, channels=channels, seq_len=seq_len, hidden_dim=hidden_dim)
            except Exception as err:  # noqa: BLE001 - every failure moves down the chain
                attempts.append({"exporter": exporter, "error": _one_line(err)})
                continue
        path, data_path = save_with_external_data(model, out_dir, size_threshold=size_threshold)
        onnx.checker.check_model(str(path))
        _check_shape_inference(path)
        artifact = OnnxArtifact(
            path=path,
            data_path=data_path,
            exporter=exporter,
            opset=_default_opset(model),
            spatial_multiple=spatial_multiple(unet),
            example_shape=shape,
            seq_len=seq_len,
            hidden_dim=hidden_dim,
            channels=channels,
            prediction_type=prediction_type,
            max_batch=max_batch,
            max_size=max_size,
            node_count=len(model.graph.node),
            initializer_bytes=sum(_tensor_bytes(t) for t in model.graph.initializer),
            export_seconds=round(seconds, 3),
            attempts=tuple(attempts),
        )
        break
    else:
        summary = "; ".join(f"{a['exporter']}: {a['error']}" for a in attempts)
        raise EngineLoadError(_ALL_FAILED.format(attempts=summary))
    # 4. parity on ORT CPU vs torch fp32
    if not validate:
        return artifact
    from fairsample.export.validate import require_passed

    report = onnx_parity_report(
        artifact.path,
        wrapper,
        validation_shapes or parity_shapes(unet),
        precision="fp32",
        channels=channels[0],
        seq_len=seq_len,
        hidden_dim=hidden_dim,
    )
    artifact = OnnxArtifact(**{**artifact.__dict__, "report": report})
    require_passed(report, name=str(artifact.path))
    return artifact


def onnx_parity_report(
    path: Path,
    reference: torch.nn.Module,
    shapes: Sequence[tuple[int, int, int]],
    *,
    precision: str,
    channels: int,
    seq_len: int,
    hidden_dim: int,
) -> dict[str, Any]:
    """Parity of the ONNX file at ``path`` on ORT CPU (1 thread, no per-sample split) against ``reference``.

    Returns:
        The :func:`~fairsample.export.validate.parity_report` dict, with ``name`` set to the file name.
    """
    from fairsample.export.ort_session import create_session
    from fairsample.export.validate import parity_report

    session, _ = create_session(path, device="cpu", intra_op_threads=1)

    def candidate(x: Tensor, t: Tensor, e: Tensor) -> Any:
        return session.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()})[0]

    return parity_report(
        candidate,
        reference,
        shapes,
        precision=precision,
        channels=channels,
        seq_len=seq_len,
        hidden_dim=hidden_dim,
        name=path.name,
    )


def audit_graph(model: onnx.ModelProto, *, channels: tuple[int, int], seq_len: int, hidden_dim: int) -> None:
    """Check I/O names, that N/H/W carry a ``dim_param`` and S/D/C are the expected static values (ENGINES.md §4.3).

    Args:
        model: the exported graph (external data need not be loaded).
        channels: (C_in, C_out).
        seq_len: expected static S.
        hidden_dim: expected static D.

    Raises:
        ValidationFailed: one line naming the tensor, axis and value (e.g. a silently specialised batch dim).

    Example:
        >>> from onnx import TensorProto, helper
        >>> x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, [2, 3, "height", "width"])
        >>> t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["batch"])
        >>> e = helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", 4, 16])
        >>> y = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["batch", 3, "height", "width"])
        >>> g = helper.make_graph([helper.make_node("Relu", ["sample"], ["out_sample"])], "g", [x, t, e], [y])
        >>> audit_graph(helper.make_model(g), channels=(3, 3), seq_len=4, hidden_dim=16)
        Traceback (most recent call last):
        ...
        fairsample.core.errors.ValidationFailed: exported graph fixed sample[0] to 2 but it must stay dynamic ...
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    ios = {v.name: v for v in [*graph.input, *graph.output] if v.name not in initializers}
    in_names = [v.name for v in graph.input if v.name not in initializers]
    out_names = [v.name for v in graph.output]
    if in_names != list(INPUT_NAMES) or out_names != list(OUTPUT_NAMES):
        raise ValidationFailed(
            _MISSING_IO.format(got=in_names + out_names, inputs=list(INPUT_NAMES), outputs=list(OUTPUT_NAMES))
        )
    static = {
        "sample": {1: channels[0]},
        "out_sample": {1: channels[1]},
        "encoder_hidden_states": {1: seq_len, 2: hidden_dim},
    }
    for name in (*INPUT_NAMES, *OUTPUT_NAMES):
        dims = ios[name].type.tensor_type.shape.dim
        for axis, param in DYNAMIC_AXES[name].items():
            d = dims[axis]
            if not d.dim_param:
                value = d.dim_value if d.HasField("dim_value") else "?"
                raise ValidationFailed(_DIM_NOT_DYNAMIC.format(tensor=name, axis=axis, value=value, param=param))
        for axis, expected in static.get(name, {}).items():
            d = dims[axis]
            if d.dim_param or d.dim_value != expected:
                got = d.dim_param or d.dim_value
                raise ValidationFailed(_DIM_WRONG_STATIC.format(tensor=name, axis=axis, got=got, expected=expected))
    producers = {o: node for node in graph.node for o in node.output}
    for name in OUTPUT_NAMES:
        node = producers.get(name)
        if node is not None and node.op_type == "Identity":
            raise ValidationFailed(_IDENTITY_OUTPUT.format(name=name))


def save_with_external_data(
    model: onnx.ModelProto, out_dir: Path, *, size_threshold: int = 1024, filename: str = MODEL_FILE
) -> tuple[Path, Path | None]:
    """Save ``model`` (initializers loaded in memory) as ``out_dir/<filename>`` + one ``<filename>.data`` file.

    Any previous model/data file of that name is removed first (onnx appends to an existing data file).

    Returns:
        ``(model_path, data_path)``; ``data_path`` is None when no initializer reached ``size_threshold`` bytes.
    """
    path, data = out_dir / filename, out_dir / f"{filename}.data"
    path.unlink(missing_ok=True)
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=size_threshold,
        convert_attribute=False,
    )
    return path, (data if data.exists() else None)


def _run_exporter(
    exporter: Exporter,
    wrapper: torch.nn.Module,
    args: tuple[Tensor, Tensor, Tensor],
    path: Path,
    *,
    max_batch: int,
    max_size: int,
    multiple: int,
) -> None:
    """One step of the fallback chain; exporter warnings (training-mode hints, TracerWarnings) are silenced here, and
    so are the dynamo exporter's per-op log lines about torchvision ops (``torchvision is not installed. Skipping
    torchvision::nms``: the U-Net uses none of them)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=LEGACY_OPSET,
                    input_names=list(INPUT_NAMES),
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes=DYNAMIC_AXES,
                )
                return
            batch = torch.export.Dim("batch", min=1, max=max_batch)
            height = torch.export.Dim("height", min=multiple, max=max_size)
            width = torch.export.Dim("width", min=multiple, max=max_size)
            dynamic_shapes = {
                "sample": {0: batch, 2: height, 3: width},
                "timestep": {0: batch},
                "encoder_hidden_states": {0: batch},
            }
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                optimize=exporter == "dynamo",
                dynamic_shapes=dynamic_shapes,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                verbose=False,
            )
            if program is None:
                raise EngineLoadError("torch.onnx.export returned no program")
            program.save(str(path), external_data=True)
    finally:
        registration.setLevel(level)


def _check_shape_inference(path: Path) -> None:
    """Run ``onnx.shape_inference.infer_shapes_path`` (the >2 GB-safe form) into a scratch file next to ``path``."""
    scratch = path.with_name(".shape-check.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(scratch), check_type=True, strict_mode=True)
    finally:
        scratch.unlink(missing_ok=True)


def _cpu_fp32_copy(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A CPU float32 eval-mode copy of ``unet`` (the caller's module keeps its device, dtype and mode)."""
    copy = UNet2DConditionModel.from_config(unet.config)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in unet.state_dict().items()})
    return copy.eval().requires_grad_(False)


def _cross_attention_dim(unet: UNet2DConditionModel) -> int:
    """The single ``cross_attention_dim`` (D) of the U-Net."""
    cross = unet.config.cross_attention_dim
    if isinstance(cross, list | tuple):
        if len(set(cross)) != 1:
            raise ConfigError(_BAD_CROSS_DIM.format(value=cross))
        cross = cross[0]
    return int(cross)


def _default_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of one initializer (raw, typed fields or external length)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), 0))
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _one_line(err: BaseException) -> str:
    """``"Type: first line"`` of an exception, truncated to 300 characters."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:300]
