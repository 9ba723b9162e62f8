"""Refit name map: which torch state-dict tensor feeds each ONNX initializer (ENGINES.md §8).

TensorRT names the refittable weights of an ONNX-parsed network after the ONNX initializers. A full-weight refit
(never a diff against the build weights, NVIDIA/TensorRT#3628) therefore needs, for every initializer, the torch
tensor it came from. Exporters name most initializers after the parameter (dynamo: ``unet.conv_in.weight`` under our
``UNetForward`` wrapper); the legacy exporter turns some ``nn.Linear`` weights into transposed ``onnx::MatMul_123``
constants, and fp16 conversion keeps names but changes dtypes. The map is built once at export by name first, then by
value (exact, or transposed for 2-D), and stored in the plan's manifest as ``manifest["refit"]``.

Exporters also deduplicate initializers with identical values (a freshly initialised model's GroupNorm weights are
all ones), so one initializer can stand for several parameters. Such initializers are listed in ``shared`` with every
source; a refit from a checkpoint where those parameters differ is impossible, so
:func:`~fairsample.engines.trt_engine.resolve_refit_weights` refuses it and asks for a rebuild.

Initializers that come from no parameter (shape constants, folded scalars) are listed as ``constants``: they are not
refitted and keep their build values. Parameters that feed no initializer (e.g. folded into a constant) are listed as
``ignored`` so :func:`~fairsample.engines.trt_engine.resolve_refit_weights` does not mistake them for stale weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_PREFIXES = ("unet.", "")


def _fingerprint(array: np.ndarray) -> tuple[int, bytes]:
    """Size + float16 bytes of the flattened values: equal for an fp32 parameter and its fp16-converted, reshaped
    initializer (exporters fold ``weight.reshape(C, 1, 1)`` into a new constant; TensorRT weights are flat)."""
    return array.size, np.ascontiguousarray(array.astype(np.float16)).tobytes()


def build_refit_map(onnx_path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Map every floating-point ONNX initializer to the torch tensor that produced it.

    Args:
        onnx_path: the ONNX file TensorRT builds from (external data next to it is read).
        state_dict: the U-Net's full state dict (torch names, no wrapper prefix).

    Returns:
        JSON-safe ``{"name_map": {initializer: torch name | {"source": torch name, "transpose": true}},
        "constants": [initializers fed by no parameter], "ignored": [torch names feeding no initializer],
        "shared": {initializer: [every parameter with its value]} (deduplicated by the exporter)}``.

    Example:
        >>> import tempfile, onnx
        >>> from onnx import helper, numpy_helper
        >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        ...     [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        ...     [numpy_helper.from_array(w.T.copy(), "onnx::MatMul_7")])
        >>> path = tempfile.mkdtemp() + "/m.onnx"; onnx.save(helper.make_model(g), path)
        >>> build_refit_map(path, {"proj.weight": torch.from_numpy(w)})["name_map"]
        {'onnx::MatMul_7': {'source': 'proj.weight', 'transpose': True}}
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(onnx_path), load_external_data=True)
    params = {k: v.detach().cpu().float().numpy() for k, v in state_dict.items() if v.is_floating_point()}
    by_value: dict[tuple[tuple[int, ...], bytes], list[str]] = {}
    by_value_t: dict[tuple[tuple[int, ...], bytes], list[str]] = {}
    for key, value in params.items():
        by_value.setdefault(_fingerprint(value), []).append(key)
        if value.ndim == 2:
            by_value_t.setdefault(_fingerprint(value.T), []).append(key)
    name_map: dict[str, Any] = {}
    constants: list[str] = []
    shared: dict[str, list[str]] = {}
    used: set[str] = set()
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        source = next(
            (
                init.name[len(p) :]
                for p in _PREFIXES
                if init.name.startswith(p)
                and init.name[len(p) :] in params
                and params[init.name[len(p) :]].size == array.size
            ),
            None,
        )
        if source is not None:
            name_map[init.name] = source
            used.add(source)
            continue
        fp = _fingerprint(array.astype(np.float32))
        for table, transpose in ((by_value, False), (by_value_t, True)):
            hits = table.get(fp, [])
            if hits:
                if len(hits) > 1:
                    shared[init.name] = sorted(hits)
                name_map[init.name] = {"source": hits[0], "transpose": True} if transpose else hits[0]
                used.update(hits)
                break
        else:
            constants.append(init.name)
    ignored = sorted(k for k in state_dict if k not in used)
    return {"name_map": name_map, "constants": sorted(constants), "ignored": ignored, "shared": shared}
