"""`fairsample train` / `fairsample generate` end to end on a tiny model (8×8, a few steps)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

from diffusers import DDPMScheduler, UNet2DConditionModel

from .conftest import TINY_TRAIN, invoke, run_cli


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").glob("*.png"))}


def test_train_then_generate_60_images_accepted_by_check(runner, demo_dir, tmp_path):
    res = invoke(
        runner, "train", demo_dir, "--output-dir", tmp_path / "m", "--max-steps", "3", *TINY_TRAIN, "--format", "json"
    )
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout)["steps"] == 3
    # plain diffusers loads the trained U-Net and scheduler from the bundle
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "m", subfolder="unet")
    sched = DDPMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler")
    assert unet.config.sample_size == 8 and sched.config.prediction_type == "v_prediction"

    res = invoke(
        runner,
        "generate",
        "--model",
        tmp_path / "m",
        "--output-dir",
        tmp_path / "g",
        "--per-cell",
        "4",
        "--steps",
        "3",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stdout
    doc = json.loads(res.stdout)
    assert doc["n_images"] == 60 and len(doc["files"]) == 60 and len(doc["plan"]) == 15
    assert len(list((tmp_path / "g" / "images").glob("*.png"))) == 60
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["complete"] is True and cfg["sampler"] == "conditional"
    header = (tmp_path / "g" / "metadata.csv").read_text().splitlines()[0]
    assert header == "file_name,tone,label,seed,sampler,method_status"
    check = json.loads(invoke(runner, "data", "check", tmp_path / "g", "--format", "json").stdout)
    assert check["n_images"] == 60 and {c["count"] for c in check["cells"]} == {4}


def test_same_seeds_any_batch_size_byte_identical(runner, tiny_model, tmp_path):
    """Batch invariance at the CLI layer (PNG bytes of `generate --batch-size`); the engine and sampler layers have
    tests/engines/test_engine_batch_invariance.py and tests/samplers/test_sampler_batch_invariance.py."""
    common = [
        "--model",
        tiny_model,
        "--cells",
        "tone=dark,label=3",
        "--cells",
        "tone=light,label=0",
        "--seeds",
        "10-16",
        "--steps",
        "4",
        "--scheduler",
        "ddpm",
    ]
    assert invoke(runner, "generate", *common, "--batch-size", "1", "--output-dir", tmp_path / "a").exit_code == 0
    assert invoke(runner, "generate", *common, "--batch-size", "5", "--output-dir", tmp_path / "b").exit_code == 0
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(a) == 7 and a == b


def test_generate_errors(runner, tiny_model, tmp_path):
    res = invoke(runner, "generate", "--model", tiny_model, "--cells", "tone=purple,label=1", "-o", tmp_path / "x")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "tone='purple'" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    res = invoke(runner, "generate", "--model", tiny_model, "--scheduler", "heun", "--output-dir", tmp_path / "x")
    assert res.exit_code == 2
    res = invoke(runner, "generate", "--model", tiny_model, "--seeds", "9-3", "--output-dir", tmp_path / "x")
    assert res.exit_code == 2 and "seed list" in res.stderr
    res = invoke(runner, "generate", "--model", tmp_path, "--output-dir", tmp_path / "x")
    assert res.exit_code == 1 and "is neither a fairsample bundle" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_generate_dry_run_prints_plan(runner, tiny_model):
    res = invoke(runner, "generate", "--model", tiny_model, "--balanced", "31", "--output-dir", "unused", "--dry-run")
    doc = json.loads(res.stdout)
    assert doc["n_images"] == 31 and sorted(doc["plan"].values()) == [2] * 14 + [3]


def test_train_kill_then_resume_continues_from_checkpoint(demo_dir, tmp_path):
    """Resume at the CLI layer: a real SIGKILL of `fairsample train`, then `--resume` from its last checkpoint. The
    training-loop layer (weights equal to an uninterrupted run) is tests/train/test_loop.py."""
    out = tmp_path / "m"
    cmd = [
        sys.executable,
        "-m",
        "fairsample.cli",
        "train",
        str(demo_dir),
        "--output-dir",
        str(out),
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "5",
        *TINY_TRAIN,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not list((out / "checkpoints").glob("checkpoint-*")):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert steps, "no checkpoint was written before the deadline"
    assert not (out / "fairsample_config.json").exists()
    proc = run_cli(
        "train",
        demo_dir,
        "--output-dir",
        out,
        "--max-steps",
        str(steps[-1] + 2),
        *TINY_TRAIN,
        "--resume",
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from {out}/checkpoints/checkpoint-{steps[-1]}" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["resumed_from"] == steps[-1] and (out / "fairsample_config.json").is_file()
    logged = [json.loads(x)["step"] for x in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps[-1] + 3))


def test_train_dry_run_and_config_file(runner, demo_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nmax_steps = 7\nlearning_rate = 0.002\n")
    res = invoke(
        runner, "train", demo_dir, "--output-dir", tmp_path / "m", "--config", cfg, "--max-steps", "9", "--dry-run"
    )
    doc = json.loads(res.stdout)
    assert doc["max_steps"] == 9 and doc["learning_rate"] == 0.002  # flags beat the file, the file beats defaults
    cfg.write_text("[train]\nmax_stepz = 7\n")
    res = invoke(runner, "train", demo_dir, "--output-dir", tmp_path / "m", "--config", cfg, "--dry-run")
    assert res.exit_code == 1 and "unknown setting(s) ['max_stepz']" in res.stderr and "Traceback" not in res.stderr


def test_bundle_sampling_defaults_sit_below_config_file_and_flags(runner, tiny_model, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "m")
    cfg_path = model / "fairsample_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["sampling"] = {"guidance_scale": 1.5, "steps": 7, "scheduler": "euler"}
    cfg_path.write_text(json.dumps(cfg))
    doc = json.loads(invoke(runner, "generate", "--model", model, "--output-dir", "x", "--dry-run").stdout)
    assert (doc["config"]["guidance_scale"], doc["config"]["steps"], doc["config"]["scheduler"]) == (1.5, 7, "euler")
    (tmp_path / "g.toml").write_text("[generate]\nsteps = 9\n")
    doc = json.loads(
        invoke(
            runner,
            "generate",
            "--model",
            model,
            "--output-dir",
            "x",
            "--dry-run",
            "--config",
            tmp_path / "g.toml",
            "--guidance-scale",
            "2.5",
        ).stdout
    )
    assert (doc["config"]["guidance_scale"], doc["config"]["steps"], doc["config"]["scheduler"]) == (2.5, 9, "euler")


def test_train_guard_switch_and_generate_guidance_rescale(runner, demo_dir, tiny_model, tmp_path):
    res = invoke(
        runner,
        "train",
        demo_dir,
        "--output-dir",
        tmp_path / "m",
        "--max-steps",
        "2",
        *TINY_TRAIN,
        "--no-guard",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout)["conditioning_guard"] == "unchecked"
    doc = json.loads((tmp_path / "m" / "fairsample_config.json").read_text())
    assert doc["train"]["guard"] is False and doc["conditioning_guard"]["flag"] == "unchecked"
    dry = invoke(runner, "train", demo_dir, "--output-dir", tmp_path / "x", "--guard", "--dry-run")
    assert json.loads(dry.stdout)["guard"] is True and json.loads(dry.stdout)["guard_guidance"] == [1.0, 1.5, 2.0, 3.0]
    gen = invoke(
        runner,
        "generate",
        "--model",
        tiny_model,
        "--output-dir",
        tmp_path / "g",
        "--guidance-rescale",
        "0.7",
        "--dry-run",
    )
    assert gen.exit_code == 0, gen.stdout
    assert json.loads(gen.stdout)["config"]["guidance_rescale"] == 0.7
