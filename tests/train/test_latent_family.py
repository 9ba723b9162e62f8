"""Every method family also trains a Stable-Diffusion-style latent bundle (VAE + CLIP text conditioner over prompt
templates built from the cells), with tiny randomly initialised components built in-test (issue #5 §6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairsample.core.config import TrainConfig
from fairsample.models.bundle import ModelBundle, new_latent_bundle
from fairsample.models.conditioners import ClipTextConditioner
from fairsample.train.loop import train
from tests.models.conftest import tiny_clip, tiny_vae  # noqa: F401  (fixtures)
from tests.tiny import build_tiny_unet


@pytest.fixture
def latent_bundle(tmp_path, tiny_clip, tiny_vae, demo_ds) -> Path:  # noqa: F811
    enc, tok = tiny_clip
    cond = ClipTextConditioner(
        enc, tok, template="{tone} skin {label}", attributes=demo_ds.attribute_values(), labels=demo_ds.label_values()
    )
    bundle = new_latent_bundle(
        build_tiny_unet(8, in_channels=4, cross_attention_dim=32), tiny_vae, cond, prediction_type="epsilon"
    )
    bundle.save(tmp_path / "sd")
    return tmp_path / "sd"


def _prefs(root: Path, demo_ds) -> Path:
    rows, by_cell = [], {}
    for i, cell in enumerate(demo_ds.cell_ids()):
        by_cell.setdefault(cell, []).append(i)
    for cell in sorted(by_cell)[:2]:
        i, j = by_cell[cell][:2]
        vals = cell.as_dict("label")
        rows.append(f"{demo_ds.image_path(i)},{demo_ds.image_path(j)},{vals['tone']},{vals['label']}")
    path = root / "preferences.csv"
    path.write_text("file_w,file_l,tone,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("method", "options"),
    [("vanilla", {}), ("fairskin-s", {}), ("fairdiffusion", {"window": 1}), ("dpo", {"beta": 50.0})],
)
def test_method_trains_latent_bundle(latent_bundle, demo_ds, tmp_path, method, options):
    if method == "dpo":
        options = {**options, "preferences": str(_prefs(tmp_path, demo_ds))}
    cfg = TrainConfig(
        init_from=str(latent_bundle),
        method=method,
        method_options=options,
        batch_size=4,
        max_steps=2,
        checkpoint_every=0,
        device="cpu",
        use_ema=False,
        lr_warmup_steps=0,
        learning_rate=1e-4,
    )
    res = train(demo_ds, tmp_path / "out", cfg, progress=False)
    out = ModelBundle.load(res.bundle_path)
    assert out.vae is not None and isinstance(out.conditioner, ClipTextConditioner)
    saved = json.loads((res.bundle_path / "fairsample_config.json").read_text())
    assert saved["method"]["name"] == method
    logs = [json.loads(line) for line in res.log_path.read_text().splitlines()]
    assert len(logs) == 2 and all(log["loss"] == log["loss"] for log in logs)  # finite, two steps
