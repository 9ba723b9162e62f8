"""bench --quality (issue #15): the verdict rule, the Pareto front, the run's document and the CLI's checks."""

import json

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.workflows import quality_bench as qb

NOISE = {
    "fid": {"mean": 10.0, "sd": 0.5},
    "kid": {"mean": 0.5, "sd": 0.1},
    "accuracy": {"label": {"mean": 0.9, "sd": 0.02}, "tone": {"mean": 1.0, "sd": 0.01}},
}


@pytest.mark.parametrize(
    ("row", "failed"),
    [
        ({"fid": 11.0, "kid": 0.7, "accuracy": {"label": 0.86, "tone": 0.98}}, []),  # exactly at every limit
        ({"fid": 8.0, "kid": 0.1, "accuracy": {"label": 0.99, "tone": 1.0}}, []),  # better is fine (one-sided)
        ({"fid": 11.01, "kid": 0.7, "accuracy": {"label": 0.9, "tone": 1.0}}, ["FID 11.01 > 11"]),
        ({"fid": 10.0, "kid": 0.5, "accuracy": {"label": 0.85, "tone": 1.0}}, ["label accuracy 0.850 < 0.860"]),
        ({"fid": float("nan"), "kid": 0.5, "accuracy": {"label": 0.9, "tone": 1.0}}, ["FID nan > 11"]),
    ],
)
def test_within_noise(row, failed):
    verdict = qb.within_noise(row, NOISE)
    assert verdict == {"ok": not failed, "failed": failed}


def test_noise_floors_accuracy_sd_at_the_binomial_sd():
    runs = [{"fid": f, "kid": 0.1, "accuracy": {"label": 0.9}} for f in (10.0, 11.0, 12.0)]
    noise = qb._noise(runs, n=100)
    assert noise["fid"]["mean"] == pytest.approx(11.0) and noise["fid"]["sd"] == pytest.approx(1.0)
    # the three seed sets agree exactly (sd 0), so the binomial sd sqrt(0.9 * 0.1 / 100) = 0.03 is used
    assert noise["accuracy"]["label"]["sd"] == pytest.approx(0.03) and noise["accuracy"]["label"]["sd_seed_sets"] == 0


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 4.0), (3.0, 6.0), (4.0, 4.5), (0.5, 3.0)]
    assert qb.pareto_front(pts) == [4, 1, 3]  # (1, 5) is beaten by (2, 4): faster and lower FID


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedulers": ["ddim", "warp"]}, "`schedulers` must be a non-empty list of names among"),
        ({"steps": [0]}, "`steps` must be a non-empty list of ints >= 1"),
        ({"n_images": 1}, "`n_images` must be an int >= 2"),
        ({"anchor_scheduler": "ddim-karras"}, "`anchor_scheduler` must be one of .* got 'ddim-karras'"),
        ({"schedulers": ["deis-trailing", "ddim-karras"]}, "`schedulers` must be a non-empty list of names among"),
    ],
)
def test_bad_options(kwargs, match):
    args = {"schedulers": ["ddim"], "steps": [2], "n_images": 4, "batch": 2, "speed_images": 2} | kwargs
    with pytest.raises(ConfigError, match=match):
        qb._check(**args)


class _Judges:
    """Judges that recover the requested label always and the tone of every second image."""

    label, targets = "label", ["label", "tone"]

    def __init__(self):
        self.cells = []

    def predict(self, images):
        n = len(images)
        want = [self.cells[i % len(self.cells)] for i in range(n)]
        return {
            "label": [c.label for c in want],
            "tone": [dict(c.groups)["tone"] if i % 2 else "x" for i, c in enumerate(want)],
        }


def test_run_document_and_plot(monkeypatch, tmp_path):
    """The whole run on the embedded model with a stub reference: every setting gets fidelity, speed per backend,
    a verdict; the anchor its noise; the plot is written."""
    from fairsample.evaluation.classifiers import SmallCNN
    from fairsample.evaluation.features import DomainFeatures
    from fairsample.models.bundle import ModelBundle

    bundle = ModelBundle.load_default()
    monkeypatch.setattr(bundle, "sampling_defaults", lambda: {"scheduler": "ddim", "steps": 2, "guidance_scale": 1.0})
    judges = _Judges()
    judges.cells = bundle.cells()
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    feats = DomainFeatures(SmallCNN(2, width=2), ["a", "b"])
    monkeypatch.setattr(qb, "_reference", lambda *a, **k: qb._Reference(test, feats, judges, 12))
    lines, streamed = [], []
    small = {"backends": ["torch-eager"], "n_images": 6, "batch": 3, "speed_images": 3, "repeats": 1}
    small |= {"anchor_steps": 2, "anchor_seed_sets": (0, 100)}
    doc = qb.run_quality_bench(
        bundle,
        dataset=None,
        schedulers=["ddim", "unipc"],
        steps=[1, 2],
        progress=lines.append,
        on_row=streamed.append,
        **small,
    )
    assert doc["schema"] == qb.SCHEMA and doc["config"]["fidelity_backend"] == "torch-eager"
    assert [(r["scheduler"], r["steps"]) for r in streamed] == [(r["scheduler"], r["steps"]) for r in doc["rows"]]
    assert [(r["scheduler"], r["steps"]) for r in doc["rows"]] == [
        ("ddim", 1),
        ("ddim", 2),
        ("unipc", 1),
        ("unipc", 2),
    ]
    anchor = doc["anchor"]
    assert (anchor["scheduler"], anchor["steps"], len(anchor["runs"])) == ("ddim", 2, 2)
    # ddim/2 on the anchor's engine and first seed set *is* the anchor's first run: same images, same numbers
    ddim2 = doc["rows"][1]
    assert ddim2["fid"] == anchor["runs"][0]["fid"] and ddim2["accuracy"] == anchor["runs"][0]["accuracy"]
    assert ddim2["accuracy"]["label"] == 1.0 and ddim2["accuracy"]["tone"] == 0.5  # what the stub judges recover
    for r in doc["rows"]:
        assert set(r["speed"]) == {"torch-eager"} and r["speed"]["torch-eager"]["images_per_s"] > 0
        s = r["speed"]["torch-eager"]
        assert s["speedup_over_anchor"] == pytest.approx(s["images_per_s"] / anchor["images_per_s"], rel=1e-2)
        assert r["within_noise"] == qb.within_noise(r, anchor["noise"])
    assert anchor["images_per_s"] == max(anchor["images_per_s_timings"]) and len(anchor["images_per_s_timings"]) == 3
    ok = [r for r in doc["rows"] if r["within_noise"]["ok"]]
    assert ddim2 in ok and doc["recommended"]["scheduler"] in ("ddim", "unipc")
    # the confirmation step re-sampled the recommendation on the anchor's second seed set
    tries = doc["confirmation"]["float32"]
    assert tries and len(tries[0]["runs"]) == 2 and tries[0]["backend"] == "torch-eager"
    assert doc["unconfirmed"]["recommended"]["scheduler"] == tries[0]["scheduler"]
    assert (doc["recommended"] is None) == (not any(t["within_noise"]["ok"] for t in tries))
    json.dumps(doc)  # JSON-safe

    # a setting the model's schedule cannot run (Karras sigmas repeat timesteps at 6 steps) is recorded, not fatal
    doc = qb.run_quality_bench(bundle, dataset=None, schedulers=["dpmsolver++-karras"], steps=[6], **small)
    assert doc["rows"] == [] and doc["recommended"] is None
    assert [(k["scheduler"], k["steps"]) for k in doc["skipped"]] == [("dpmsolver++-karras", 6)]
    assert "gives repeated timesteps at 6 steps" in doc["skipped"][0]["error"]
    png = qb.pareto_plot(doc, tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("anchor ddim/2 seeds 0..") for line in lines)


def test_cli_quality_checks_before_work():
    from typer.testing import CliRunner

    from fairsample.cli import app

    runner = CliRunner()

    res = runner.invoke(app, ["bench", "--quality", "--schedulers", "ddim,warp"])
    assert res.exit_code == 1 and "`schedulers` must be a non-empty list of names among" in res.output
    res = runner.invoke(app, ["bench", "--quality", "--data", "/nope"])
    assert res.exit_code == 1 and "`--data` /nope is not a folder" in res.output
    res = runner.invoke(app, ["bench", "--quality", "--anchor-scheduler", "heun"])
    assert res.exit_code == 1 and "`anchor_scheduler` must be one of" in res.output


def test_apply_recommendation_writes_the_setting_and_the_table(tmp_path):
    import shutil

    from fairsample.models.bundle import ModelBundle, default_model_path

    bundle_dir = tmp_path / "m"
    shutil.copytree(default_model_path(), bundle_dir)
    before = ModelBundle.load(bundle_dir).sampling_defaults()
    row = {
        "scheduler": "unipc",
        "steps": 12,
        "fid": 1.0,
        "kid": 0.01,
        "accuracy": {"label": 0.95},
        "speed": {"onnxruntime": {"images_per_s": 40.0, "speedup_over_anchor": 8.0}},
        "within_noise": {"ok": True, "failed": []},
    }
    doc = {
        "config": {"protocol": "p"},
        "anchor": {"scheduler": "ddim", "steps": 50, "backend": "torch-eager", "images_per_s": 5.0, "noise": {}},
        "rows": [row],
        "recommended": {"scheduler": "unipc", "steps": 12, "speed": row["speed"]},
        "best_speedup_within_noise": 8.0,
        "machine": {"cpu_bf16": True},
    }
    sampling = qb.apply_recommendation(bundle_dir, doc, command="fairsample bench --quality")
    after = ModelBundle.load(bundle_dir)
    assert sampling == after.sampling_defaults() == {**before, "scheduler": "unipc", "steps": 12}
    record = after.config["sampling_speed"]
    assert record["command"] == "fairsample bench --quality" and record["table"][0]["images_per_s"] == {
        "onnxruntime": 40.0
    }
    with pytest.raises(ConfigError, match="no setting was within the anchor's noise"):
        qb.apply_recommendation(bundle_dir, doc | {"recommended": None})


def _row(scheduler, steps, ok, speeds, bf16_ok=None):
    row = {
        "scheduler": scheduler,
        "steps": steps,
        "within_noise": {"ok": ok, "failed": []},
        "speed": {b: {"images_per_s": v, "speedup_over_anchor": v / 2} for b, v in speeds.items()},
    }
    if bf16_ok is not None:
        row["reduced_precision"] = {"openvino-bf16": {"within_noise": {"ok": bf16_ok, "failed": []}}}
    return row


def test_choose_fastest_float32_and_fastest_any_precision():
    fp32, reduced = ["torch-eager", "onnxruntime"], ["openvino-bf16"]
    rows = [
        _row("ddim", 20, True, {"torch-eager": 4.0, "onnxruntime": 6.0, "openvino-bf16": 7.0}, bf16_ok=True),
        _row("unipc", 8, True, {"torch-eager": 9.0, "onnxruntime": 12.0, "openvino-bf16": 15.0}, bf16_ok=False),
        _row("unipc", 5, False, {"torch-eager": 14.0, "onnxruntime": 18.0, "openvino-bf16": 22.0}, bf16_ok=True),
    ]
    fastest, best = qb._choose(rows, fp32, reduced)
    assert (fastest["scheduler"], fastest["steps"]) == ("unipc", 8)
    # unipc/5 is out in float32 but its bf16 images are within noise: the fastest of all (a row's verdicts are per
    # precision); unipc/8 bf16 failed its own check so it cannot win with 15 img/s
    assert best == {
        "scheduler": "unipc",
        "steps": 5,
        "backend": "openvino-bf16",
        "precision": "bf16",
        "images_per_s": 22.0,
        "speedup_over_anchor": 11.0,
    }
    assert qb._choose([rows[2]], fp32, []) == (None, None)
    # ties go to fewer steps
    tie = [_row("a", 12, True, {"onnxruntime": 5.0}), _row("b", 8, True, {"onnxruntime": 5.0})]
    assert qb._choose(tie, ["onnxruntime"], [])[0]["steps"] == 8


def test_confirmation_takes_the_first_candidate_whose_mean_is_within_noise():
    """Fastest first; a candidate lucky on seed set 0 but out on average is passed over (and recorded)."""
    noise = {
        "fid": {"mean": 10.0, "sd": 0.5},
        "kid": {"mean": 1.0, "sd": 0.1},
        "accuracy": {"label": {"mean": 0.9, "sd": 0.02}},
    }

    def row(name, steps, fid, ips):
        return {
            "scheduler": name,
            "steps": steps,
            "fid": fid,
            "kid": 1.0,
            "accuracy": {"label": 0.9},
            "within_noise": {"ok": True, "failed": []},
            "speed": {"onnxruntime": {"images_per_s": ips, "speedup_over_anchor": ips / 2}},
        }

    lucky, solid, slow = row("a", 4, 10.9, 40.0), row("b", 6, 10.5, 30.0), row("c", 8, 10.0, 20.0)
    later = {("a", 4): 12.0, ("b", 6): 10.6, ("c", 8): 10.0}  # FID on the other seed sets
    calls = []

    def sample_fidelity(backend, setting, first):
        calls.append((setting.key, first))
        return {"fid": later[(setting.scheduler, setting.steps)], "kid": 1.0, "accuracy": {"label": 0.9}}

    float32, anyp = qb._ranked([slow, lucky, solid], ["onnxruntime"], [])
    assert [r["scheduler"] for r, _ in float32] == ["a", "b", "c"] and anyp == float32
    got, tried = qb._confirm(float32, sample_fidelity, noise, [0, 10, 20], 4, lambda _l: None)
    assert got == (solid, "onnxruntime")
    assert calls == [("a/4", 10), ("a/4", 20), ("b/6", 10), ("b/6", 20)]
    assert tried[0]["mean"]["fid"] == pytest.approx((10.9 + 12.0 + 12.0) / 3) and not tried[0]["within_noise"]["ok"]
    assert tried[1]["within_noise"]["ok"] and len(tried) == 2
    assert qb._confirm(float32[:1], sample_fidelity, noise, [0, 10, 20], 4, lambda _l: None)[0] is None


def test_row_log_appends_json_lines(tmp_path):
    from fairsample.cli.bench import _row_log

    append = _row_log(tmp_path / "q.json")
    append({"scheduler": "ddim", "steps": 8})
    append({"scheduler": "deis", "steps": 6, "error": "x"})
    lines = (tmp_path / "q.rows.jsonl").read_text().splitlines()
    assert [json.loads(x)["steps"] for x in lines] == [8, 6]


def test_cli_apply_warns_when_the_model_lost_its_conditioning(tmp_path, monkeypatch):
    """--apply on a bundle whose conditioning guard says 'collapsed' writes the setting and warns not to trust it."""
    import shutil

    from typer.testing import CliRunner

    from fairsample.cli import app
    from fairsample.models.bundle import default_model_path, update_bundle_config

    bundle_dir, data = tmp_path / "m", tmp_path / "data"
    shutil.copytree(default_model_path(), bundle_dir)
    data.mkdir()
    update_bundle_config(bundle_dir, {"conditioning_guard": {"flag": "collapsed"}})
    doc = {
        "anchor": {"scheduler": "ddim", "steps": 50, "images_per_s": 3.0, "noise": {"fid": {"mean": 30.0, "sd": 1.0}}},
        "rows": [],
        "recommended": {"scheduler": "dpmsolver++-trailing", "steps": 6, "speed": {}},
        "best_speedup_within_noise": 12.0,
    }
    monkeypatch.setattr(qb, "run_quality_bench", lambda *a, **k: doc)
    monkeypatch.setattr("fairsample.data.folder.load_folder", lambda path: None)
    monkeypatch.setattr(qb, "apply_recommendation", lambda *a, **k: {"scheduler": "dpmsolver++-trailing", "steps": 6})
    res = CliRunner().invoke(app, ["bench", "--quality", "--model", str(bundle_dir), "--data", str(data), "--apply"])
    assert res.exit_code == 0, res.output
    assert "wrote sampling" in res.stderr and "conditioning guard says 'collapsed'" in res.stderr
