"""Bring your own Stable Diffusion model: a standard diffusers folder in, standard folders out (issue #13).

A tiny randomly initialised SD pipeline is saved in the layout `StableDiffusionPipeline.save_pretrained` writes; it is
fine-tuned (vanilla and a fair method), sampled with torch and ONNX Runtime, exported to a folder of the user's choice,
evaluated, and opened again with plain diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import save_tiny_sd_pipeline

from .conftest import invoke

FAST_EVAL = [
    "--size",
    "16",
    "--epochs",
    "1",
    "--seeds",
    "0-1",
    "--allow-few-seeds",
    "--k",
    "2",
    "--n-resamples",
    "5",
    "--feature-epochs",
    "2",
    "--closure-resamples",
    "100",
]
TRAIN = ["--max-steps", "2", "--batch-size", "4", "--no-guard", "--device", "cpu", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "sd-folder")


@pytest.fixture(scope="module")
def sd_bundles(runner, demo_dir, sd_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd_runs")
    out = {}
    for method in ("vanilla", "cbrs"):
        res = invoke(
            runner,
            "train",
            demo_dir,
            "--init-from",
            sd_dir,
            "--method",
            method,
            *TRAIN,
            "-o",
            root / method,
            "--format",
            "json",
        )
        assert res.exit_code == 0, res.stderr
        out[method] = root / method
        out[f"{method}.stderr"] = res.stderr  # type: ignore[assignment]
    return out


def test_dry_run_shows_base_defaults_and_prompts(runner, demo_dir, sd_dir):
    res = invoke(runner, "train", demo_dir, "--init-from", sd_dir, "-o", "unused", "--dry-run")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["prediction_type"] == "epsilon" and doc["image_size"] == 16 and doc["architecture"] == "sd"
    assert doc["learning_rate"] == 1e-5 and doc["lr_schedule"] == "constant" and doc["lr_warmup_steps"] == 0
    assert doc["template"] == "tone {tone}, label {label}"
    assert doc["prompts"]["tone=dark,label=3"] == "tone dark, label 3"
    assert doc["base_model"]["kind"] == "sd_pipeline"
    # an explicit flag still wins over the base's recipe
    res = invoke(runner, "train", demo_dir, "--init-from", sd_dir, "-o", "x", "--dry-run", "--learning-rate", "3e-4")
    assert json.loads(res.stdout)["learning_rate"] == 3e-4


def test_fine_tuned_bundle_records_what_was_used(sd_bundles):
    cfg = json.loads((sd_bundles["vanilla"] / "fairsample_config.json").read_text())
    train = cfg["train"]
    assert (train["prediction_type"], train["image_size"], train["learning_rate"]) == ("epsilon", 16, 1e-5)
    assert cfg["source"]["kind"] == "sd_pipeline" and cfg["source"]["scheduler_class"] == "PNDMScheduler"
    assert cfg["template"] == "tone {tone}, label {label}" and cfg["kind"] == "latent"
    assert cfg["image_resize"] == {"from": ["32x32"], "to": 16}
    stderr = sd_bundles["vanilla.stderr"]
    assert stderr.count("resized to 16x16") == 1  # stated once
    assert json.loads((sd_bundles["cbrs"] / "fairsample_config.json").read_text())["method"]["name"] == "cbrs"
    index = json.loads((sd_bundles["vanilla"] / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_fine_tuned_bundle_opens_in_plain_diffusers(sd_bundles):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_bundles["vanilla"])
    pipe.set_progress_bar_config(disable=True)
    image = pipe("tone dark, label 3", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3) and float(image.std()) > 0


def test_generate_export_onnx_and_evaluate(runner, demo_dir, sd_bundles, tmp_path):
    bundle = sd_bundles["vanilla"]
    common = ["--per-cell", "2", "--steps", "2", "--format", "json"]
    n_cells = len(json.loads((bundle / "fairsample_config.json").read_text())["cells"])
    res = invoke(runner, "generate", "--model", bundle, "-o", tmp_path / "torch", *common)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["n_images"] == 2 * n_cells

    res = invoke(runner, "export", "onnx", "--model", bundle, "--output-dir", tmp_path / "onnx", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    onnx_file = Path(doc["onnx"])
    assert onnx_file.parent == tmp_path / "onnx" and onnx_file.is_file()
    assert (tmp_path / "onnx" / "manifest.json").is_file()
    import onnxruntime as ort  # the copy loads on its own, outside the cache

    assert ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).get_inputs()
    human = invoke(runner, "export", "onnx", "--model", bundle)  # a cache hit: prints the cached file's path
    assert "validated" in human.stdout and ".onnx" in human.stdout

    res = invoke(runner, "generate", "--model", bundle, "--backend", "onnxruntime", "-o", tmp_path / "ort", *common)
    assert res.exit_code == 0, res.stderr
    assert len(list((tmp_path / "ort" / "images").glob("*.png"))) == 2 * n_cells

    res = invoke(
        runner,
        "evaluate",
        "--real",
        demo_dir,
        "--synthetic",
        f"sd={tmp_path / 'torch'}",
        "--output-dir",
        tmp_path / "report",
        *FAST_EVAL,
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    assert Path(json.loads(res.stdout)["files"]["json"]).is_file()


def test_generate_straight_from_the_untouched_folder(runner, sd_dir, tmp_path):
    cells = ["--cells", "tone=dark,label=1", "--cells", "tone=light,label=1"]
    dry = invoke(runner, "generate", "--model", sd_dir, *cells, "-o", tmp_path / "g", "--dry-run")
    assert json.loads(dry.stdout)["prompts"]["tone=dark,label=1"] == "tone dark, label 1"
    res = invoke(
        runner,
        "generate",
        "--model",
        sd_dir,
        *cells,
        "--per-cell",
        "2",
        "--steps",
        "2",
        "-o",
        tmp_path / "g",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["n_images"] == 4
    assert sorted(p.name for p in (tmp_path / "g" / "images").glob("*.png"))[:1]
    no_cells = invoke(runner, "generate", "--model", sd_dir, "-o", tmp_path / "g2")
    assert no_cells.exit_code == 1 and "pass the cells" in no_cells.stderr
    # export needs no cells: the untouched folder opens with its U-Net alone (the ONNX export and ONNX Runtime
    # generation of the same architecture run on the fine-tuned bundle in the test above)
    from fairsample.models.sd_import import open_model

    bare = open_model(sd_dir, need_cells=False)
    assert bare.cells() == [] and bare.latent_shape == (4, 8, 8) and bare.config["source"]["kind"] == "sd_pipeline"


def test_model_import_writes_a_bundle(runner, demo_dir, sd_dir, tmp_path):
    res = invoke(
        runner,
        "model",
        "import",
        sd_dir,
        "--data",
        demo_dir,
        "--template",
        "{tone} skin, digit {label}",
        "-o",
        tmp_path / "b",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    from fairsample.data.folder import load_folder

    n_cells = len(set(load_folder(demo_dir).cell_ids()))
    assert doc["prompts"]["tone=light,label=0"] == "light skin, digit 0" and len(doc["prompts"]) == n_cells
    cfg = json.loads((tmp_path / "b" / "fairsample_config.json").read_text())
    assert cfg["source"]["path"] == str(sd_dir.absolute()) and cfg["template"] == "{tone} skin, digit {label}"
    assert (tmp_path / "b" / "model_index.json").is_file()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{tone} skin", "does not name the cell field(s) ['label']"),
        ("{tone} {label} {site}", "uses unknown field(s) ['site']"),
        (
            "a dermoscopic close-up photograph of skin, tone {tone}, digit {label}",
            "tokens, over the tokenizer's limit",
        ),
    ],
)
def test_bad_templates_fail_with_one_line(runner, demo_dir, sd_dir, tmp_path, template, message):
    for args in (
        ["train", demo_dir, "--init-from", sd_dir, *TRAIN, "-o", tmp_path / "t"],
        ["model", "import", sd_dir, "--data", demo_dir, "-o", tmp_path / "i"],
    ):
        res = invoke(runner, *args, "--template", template)
        assert res.exit_code == 1, res.stdout
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "t" / "fairsample_config.json").exists()


def test_colliding_cells_are_refused(runner, sd_dir, tmp_path):
    # the CLIP tokenizer lower-cases: DARK and dark become the same tokens
    res = invoke(
        runner,
        "generate",
        "--model",
        sd_dir,
        "--cells",
        "tone=dark,label=1",
        "--cells",
        "tone=DARK,label=1",
        "-o",
        tmp_path / "g",
    )
    assert res.exit_code == 1
    assert "maps cells tone=dark,label=1 and tone=DARK,label=1 to the same" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "MISSING", "-o", "x"], "`--model` MISSING does not exist"),
        (["train", "DATA", "--init-from", "MISSING", "-o", "x"], "`--init-from` MISSING does not exist"),
        (["export", "onnx", "--model", "MISSING"], "`--model` MISSING does not exist"),
        (["generate", "--model", "PICKLE", "-o", "x"], "is a pickle checkpoint, which fairsample never loads"),
        (["generate", "--model", "EMPTY", "-o", "x"], "is neither a fairsample bundle"),
    ],
)
def test_model_path_errors(runner, demo_dir, tmp_path, args, message):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04")
    (tmp_path / "empty").mkdir()
    subs = {
        "MISSING": str(tmp_path / "nope"),
        "PICKLE": str(tmp_path / "model.ckpt"),
        "EMPTY": str(tmp_path / "empty"),
        "DATA": str(demo_dir),
    }
    res = invoke(runner, *[subs.get(a, a) for a in args])
    assert res.exit_code == 1
    expected = message.replace("MISSING", subs["MISSING"])
    assert expected in res.stderr and "Traceback" not in res.stderr


def test_single_file_that_cannot_be_read_offline_says_what_to_run(runner, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    res = invoke(
        runner,
        "generate",
        "--model",
        tmp_path / "sd.safetensors",
        "--cells",
        "tone=dark,label=1",
        "-o",
        tmp_path / "g",
    )
    assert res.exit_code == 1
    assert "could not read this single-file checkpoint offline" in res.stderr and "save_pretrained" in res.stderr


def test_gradient_checkpointing_changes_memory_not_results(runner, demo_dir, sd_dir, sd_bundles, tmp_path):
    res = invoke(
        runner,
        "train",
        demo_dir,
        "--init-from",
        sd_dir,
        "--method",
        "vanilla",
        *TRAIN,
        "--gradient-checkpointing",
        "-o",
        tmp_path / "gc",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    cfg = json.loads((tmp_path / "gc" / "fairsample_config.json").read_text())
    assert cfg["train"]["gradient_checkpointing"] is True
    plain = json.loads((sd_bundles["vanilla"] / "logs" / "train_log.jsonl").read_text().splitlines()[-1])
    ckpt = json.loads((tmp_path / "gc" / "logs" / "train_log.jsonl").read_text().splitlines()[-1])
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_guard_samples_an_sd_start_with_the_same_prompts(sd_dir, sd_bundles):
    from fairsample.models.bundle import ModelBundle
    from fairsample.train.guard import _load_start

    model = ModelBundle.load(sd_bundles["vanilla"])
    start = _load_start(str(sd_dir), model, "cpu")
    assert start.cells() == model.cells()
    assert [start.conditioner.prompt(c) for c in start.cells()] == [model.conditioner.prompt(c) for c in model.cells()]


def test_sdk_from_pretrained_takes_an_sd_folder(sd_dir, tmp_path):
    import fairsample as fs

    pipe = fs.FairSamplePipeline.from_pretrained(sd_dir, cells=["tone=dark,label=1", "tone=light,label=1"])
    assert pipe.bundle.config["source"]["kind"] == "sd_pipeline" and len(pipe.bundle.cells()) == 2
    cell = pipe.bundle.parse_cell("tone=dark,label=1")
    out = pipe([cell, cell], seeds=[0, 1], steps=2)
    assert len(out.images) == 2 and out.images[0].size == (16, 16)
    res = pipe.generate_to_folder(tmp_path / "g", fs.GenerationPlan.per_cell(pipe.bundle.cells(), 1), steps=2)
    assert res.n_images == 2
