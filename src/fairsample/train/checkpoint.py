"""Resumable training checkpoints in safetensors + JSON only (no pickles, STYLE.md rule 14).

``<output_dir>/checkpoints/checkpoint-<step>/`` holds:

- ``model.safetensors`` — the raw (non-EMA) weights of the denoiser (U-Net + trainable conditioner);
- ``ema.safetensors`` — the EMA shadow parameters (``shadow.<i>``), when EMA is on;
- ``optimizer.safetensors`` + ``optimizer.json`` — AdamW moments and param groups;
- ``state.json`` — the optimizer step, EMA scalars, the method's state and the resolved config.

A checkpoint is written into a temporary folder and renamed into place, so a kill never leaves a partial one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and JSON-safe param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{name}"] = val.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    ema_state: dict[str, Any] | None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and prune to the ``keep`` newest."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=root))
    try:
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors")
        )
        opt_t, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_t, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta), encoding="utf-8")
        full_state = dict(state, step=step)
        if ema_state is not None:
            shadows = ema_state["shadow_params"]
            save_file(
                {f"shadow.{i}": t.detach().to("cpu").contiguous() for i, t in enumerate(shadows)},
                str(tmp / "ema.safetensors"),
            )
            full_state["ema"] = {k: v for k, v in ema_state.items() if k != "shadow_params"}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=2, default=str), encoding="utf-8")
        dest = root / f"checkpoint-{step}"
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoint_dirs(output_dir)[: max(0, len(checkpoint_dirs(output_dir)) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint: ``{"model", "optimizer", "ema" (or None), "state"}`` (tensors on CPU)."""
    p = Path(path)
    state = json.loads((p / "state.json").read_text(encoding="utf-8"))
    opt = _optimizer_from_files(
        load_file(str(p / "optimizer.safetensors")), json.loads((p / "optimizer.json").read_text(encoding="utf-8"))
    )
    ema = None
    if (p / "ema.safetensors").is_file():
        shadows = load_file(str(p / "ema.safetensors"))
        ema = dict(state.get("ema", {}))
        ema["shadow_params"] = [shadows[f"shadow.{i}"] for i in range(len(shadows))]
    return {"model": load_file(str(p / "model.safetensors")), "optimizer": opt, "ema": ema, "state": state}
