"""The conditioning guard and the recommended sampling settings it records (issue #12, items 1a and 1g)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fairsample.core.config import SampleConfig, TrainConfig
from fairsample.core.errors import FairsampleWarning
from fairsample.data.folder import load_folder
from fairsample.evaluation.conditioning import SamplingSetting, score_samples, train_judges
from fairsample.generation.pipeline import FairSamplePipeline
from fairsample.models.bundle import ModelBundle, new_pixel_bundle
from fairsample.train import guard as guard_mod
from fairsample.train.guard import conditioning_guard, guard_flag
from fairsample.train.loop import train

BACKGROUND = {"light": (225, 200, 180), "dark": (90, 60, 45)}
STROKE = {"light": (170, 40, 60), "dark": (200, 150, 120)}


def _easy_image(tone: str, label: str, rng: np.random.Generator) -> np.ndarray:
    """8×8: the tone is the background colour, the label a bar at the top (0) or the bottom (1)."""
    x = np.empty((8, 8, 3), np.float32)
    x[:] = BACKGROUND[tone]
    row = 1 if label == "0" else 5
    x[row : row + 2, 1:7] = STROKE[tone]
    return np.clip(x + rng.normal(0, 4, x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """2 tones × 2 labels × 24 images at 8×8, separable by eye: judges reach 1.0 on real images."""
    root = tmp_path_factory.mktemp("guard") / "easy"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, k = ["file_name,tone,label"], 0
    for tone in ("light", "dark"):
        for label in ("0", "1"):
            for _ in range(24):
                Image.fromarray(_easy_image(tone, label, rng)).save(root / "images" / f"{k:03d}.png")
                rows.append(f"images/{k:03d}.png,{tone},{label}")
                k += 1
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "fairsample.toml").write_text('label = "label"\ngroups = ["tone"]\nmin_group_size = 1\n')
    return load_folder(root)


def _tiny_bundle(ds, path: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        b = new_pixel_bundle(
            ds.attribute_values(),
            ds.label_values(),
            architecture="test",
            image_size=8,
            cross_attention_dim=8,
            prediction_type="v_prediction",
        )
    b.config["cells"] = [c.to_text() for c in ds.cells()]
    b.save(path)
    return path


class _FakePipeline:
    """Stands in for a model: real images of the requested cell when ``good(w)``, else uniform noise."""

    def __init__(self, bundle, good):
        self.bundle, self.good, self.calls = bundle, good, []

    def default_config(self) -> SampleConfig:
        return SampleConfig().replace(**self.bundle.sampling_defaults())

    def __call__(
        self, cells, seeds, *, guidance_scale, guidance_rescale, steps, scheduler, batch_size, sampler, output_type
    ):
        self.calls.append((guidance_scale, guidance_rescale, steps))
        out = []
        for cell, seed in zip(cells, seeds, strict=True):
            rng = np.random.default_rng(seed)
            ok = self.good(guidance_scale, guidance_rescale)
            x = _easy_image(cell.value("tone"), cell.label, rng) if ok else rng.integers(0, 256, (8, 8, 3))
            out.append(x.astype(np.float32) / 255.0)
        return SimpleNamespace(images=np.stack(out))


def test_guard_flags_destroyed_conditioning_as_collapsed_and_records_it(easy, tmp_path):
    start = _tiny_bundle(easy, tmp_path / "start")
    broken = ModelBundle.load(start)
    with torch.no_grad():  # every token row equal: the model can no longer tell one cell from another
        broken.conditioner.tokens.weight.copy_(broken.conditioner.tokens.weight.mean(0, keepdim=True))
    broken.conditioner.clear_cache()
    broken.save(tmp_path / "broken")
    with pytest.warns(FairsampleWarning, match=r"conditioning guard: .*broken is collapsed at w=1, 3 ddim steps"):
        report = conditioning_guard(
            tmp_path / "broken", easy, start=start, guidance=(1.0, 2.0), rescale=(), steps=3, images_per_cell=4
        )
    assert report.flag == "collapsed" and any("tone" in r for r in report.reasons)
    assert report.reference["kind"] == "start" and report.judges["ceiling"]["overall"] == {"label": 1.0, "tone": 1.0}
    doc = json.loads((tmp_path / "broken" / "fairsample_config.json").read_text())
    assert doc["conditioning_guard"]["flag"] == "collapsed" and doc["conditioning_guard"]["reasons"] == report.reasons
    assert doc["conditioning_guard"]["scores"]["seeds"] == [900000, 900015]
    assert doc["sampling"] == {"guidance_scale": 1.0, "steps": 3, "scheduler": "ddim"}


def test_healthy_model_is_ok_and_its_selected_guidance_is_the_default(easy, tmp_path, monkeypatch):
    path = _tiny_bundle(easy, tmp_path / "m")
    fakes = []

    def fake_pipeline(bundle, device="cpu"):  # good at w = 1.5 and 2 only (under-guided at 1, noise at 3)
        fakes.append(_FakePipeline(bundle, lambda w, phi: 1.5 <= w <= 2.0))
        return fakes[-1]

    monkeypatch.setattr(guard_mod, "sampling_pipeline", fake_pipeline)
    report = conditioning_guard(
        path, easy, start=None, guidance=(3.0, 1.0, 1.5, 2.0), rescale=(0.7,), steps=4, images_per_cell=3
    )
    assert report.flag == "ok" and report.reasons == [] and report.reference["kind"] == "ceiling"
    # v-prediction: rescale φ = 0.7 is tried at the largest w, after the plain settings (cheapest first)
    assert fakes[0].calls == [(1.0, 0.0, 4), (1.5, 0.0, 4), (2.0, 0.0, 4), (3.0, 0.0, 4), (3.0, 0.7, 4)]
    scores = [c.score for c in report.candidates]
    assert scores[1] == scores[2] == 1.0 and max(scores[0], scores[3], scores[4]) < 1.0
    assert report.setting == SamplingSetting(1.5, 0.0, 4, "ddim")  # the lowest w within noise of the best
    doc = json.loads((path / "fairsample_config.json").read_text())
    assert doc["sampling"] == {"guidance_scale": 1.5, "steps": 4, "scheduler": "ddim"}
    table = doc["sampling_selection"]
    assert len(table["candidates"]) == 5 and table["selected"]["guidance_scale"] == 1.5
    assert doc["conditioning_guard"]["flag"] == "ok"
    pipe = FairSamplePipeline.from_pretrained(path)
    cfg = pipe.default_config()
    assert (cfg.guidance_scale, cfg.steps, cfg.scheduler) == (1.5, 4, "ddim")  # not SampleConfig's fixed w = 3
    assert pipe([pipe.bundle.cells()[0]], seeds=[1]).manifest["sample_config"]["guidance_scale"] == 1.5


def test_train_runs_the_guard_and_a_fine_tune_is_compared_with_its_start(easy, tmp_path):
    cfg = TrainConfig(
        architecture="test",
        image_size=8,
        cross_attention_dim=8,
        batch_size=8,
        max_steps=2,
        lr_warmup_steps=1,
        checkpoint_every=0,
        device="cpu",
        guard=True,
        guard_steps=2,
        guard_images_per_cell=2,
        guard_guidance=(1.0, 2.0),
        guard_rescale=(),
    )
    lines = []
    with pytest.warns(FairsampleWarning, match="conditioning guard: .* is (collapsed|degraded)"):  # 2 steps: noise
        train(easy, tmp_path / "a", cfg, progress=False, log=lines.append)
    doc = json.loads((tmp_path / "a" / "fairsample_config.json").read_text())
    assert doc["conditioning_guard"]["reference"]["kind"] == "ceiling" and doc["conditioning_guard"]["seconds"] >= 0
    assert doc["sampling"]["guidance_scale"] in (1.0, 2.0) and doc["sampling"]["steps"] == 2
    assert any(line.startswith("conditioning guard (") for line in lines)
    fine = cfg.replace(init_from=str(tmp_path / "a"), guard=False)
    train(easy, tmp_path / "b", fine, progress=False)
    doc_b = json.loads((tmp_path / "b" / "fairsample_config.json").read_text())
    assert doc_b["conditioning_guard"]["flag"] == "unchecked" and "sampling_selection" not in doc_b
    with pytest.warns(FairsampleWarning, match="conditioning guard"):
        train(easy, tmp_path / "c", fine.replace(guard=True), progress=False)
    ref = json.loads((tmp_path / "c" / "fairsample_config.json").read_text())["conditioning_guard"]["reference"]
    assert ref["kind"] == "start" and ref["bundle"] == str(tmp_path / "a")


def test_guard_default_follows_the_environment(monkeypatch):
    monkeypatch.setenv("FAIRSAMPLE_GUARD", "0")
    assert TrainConfig().guard is False
    monkeypatch.setenv("FAIRSAMPLE_GUARD", "1")
    assert TrainConfig().guard is True and TrainConfig(guard=False).guard is False


def test_flag_thresholds():
    def scores(label, tone_dark, tone_light=1.0):
        groups = {
            "tone=dark": {"label": label, "tone": tone_dark, "n": 40},
            "tone=light": {"label": label, "tone": tone_light, "n": 40},
        }
        overall = {"label": label, "tone": (tone_dark + tone_light) / 2}
        return guard_mod.ConditioningScores(SamplingSetting(1.5), 8, [], {}, groups, overall, {}, {}, "label")

    good = {"label": 0.95, "tone": 1.0}
    ref = {"overall": good, "by_group": {"tone=dark": good, "tone=light": good}}
    chance = {"label": 0.2, "tone": 0.5}
    assert guard_flag(scores(0.9, 0.9), ref, chance) == ("ok", [])
    flag, reasons = guard_flag(scores(0.9, 0.8), ref, chance)  # dark tone 1.0 -> 0.8: a drop > 0.15
    assert flag == "degraded" and reasons == ["tone=dark: tone accuracy 1.00 -> 0.80 (drop > 0.15)"]
    assert guard_flag(scores(0.9, 0.2), ref, chance)[0] == "collapsed"  # dark drawn less often than chance
    # a judge that cannot recover the tone on real images is no evidence of collapse
    weak = {"overall": {"label": 0.95, "tone": 0.5}, "by_group": {"tone=dark": {"label": 0.95, "tone": 0.5}}}
    assert guard_flag(scores(0.9, 0.2), {}, chance, ceiling=weak)[0] == "ok"


def test_judges_are_cached_and_score_real_images_perfectly(easy):
    judges = train_judges(easy, size=8)
    again = train_judges(easy, size=8)
    assert again.key == judges.key and judges.ceiling["overall"] == {"label": 1.0, "tone": 1.0}
    rows = np.arange(len(easy))
    images = np.stack([np.asarray(easy.load_image(int(r))) for r in rows])
    sc = score_samples(judges, images, [easy.cell_of(int(r)) for r in rows], SamplingSetting(1.0))
    assert sc.overall == {"label": 1.0, "tone": 1.0} and sc.ber == {"tone": 0.0} and sc.score == 1.0
