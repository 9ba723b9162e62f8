"""The training loop: bundle output, determinism, exact resume, logs, settings checks."""

from __future__ import annotations

import json

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.models.bundle import ModelBundle
from fairsample.train.checkpoint import checkpoint_dirs
from fairsample.train.loop import lr_at, train
from fairsample.train.methods import TrainMethod


def _weights(path) -> dict[str, torch.Tensor]:
    b = ModelBundle.load(path)
    return {**b.unet.state_dict(), **{f"cond.{k}": v for k, v in b.conditioner.state_dict().items()}}


def test_writes_bundle_log_and_checkpoint(demo_ds, tiny_cfg, tmp_path):
    res = train(demo_ds, tmp_path / "m", tiny_cfg, progress=False)
    assert res.steps == 6 and res.resumed_from is None
    b = ModelBundle.load(tmp_path / "m")
    assert b.config["weights"] == "ema" and b.config["method"]["name"] == "vanilla"
    assert b.config["train"]["max_steps"] == 6 and b.prediction_type == "v_prediction"
    assert len(b.config["cells"]) == 15 and b.groups == ["tone"]
    lines = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in lines) and lines[0]["lr"] == pytest.approx(5e-4)
    assert [s for s, _ in checkpoint_dirs(tmp_path / "m")] == [3]


def test_same_seed_same_weights_other_seed_differs(demo_ds, tiny_cfg, tmp_path):
    train(demo_ds, tmp_path / "a", tiny_cfg.replace(max_steps=3), progress=False)
    train(demo_ds, tmp_path / "b", tiny_cfg.replace(max_steps=3), progress=False)
    train(demo_ds, tmp_path / "c", tiny_cfg.replace(max_steps=3, seed=1), progress=False)
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


class _Crash(TrainMethod):
    """Vanilla, but the process 'dies' during step 5 (after checkpoint-3 was written)."""

    def after_step(self, ctx):
        if ctx.step == 4:
            raise KeyboardInterrupt
        return {}


def test_resume_after_kill_matches_uninterrupted_run(demo_ds, tiny_cfg, tmp_path):
    train(demo_ds, tmp_path / "full", tiny_cfg, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(demo_ds, tmp_path / "killed", tiny_cfg, method=_Crash(), progress=False)
    assert [s for s, _ in checkpoint_dirs(tmp_path / "killed")] == [3]
    assert not (tmp_path / "killed" / "fairsample_config.json").exists()
    messages = []
    res = train(demo_ds, tmp_path / "killed", tiny_cfg, resume=True, progress=False, log=messages.append)
    assert res.resumed_from == 3 and any(m.startswith("resuming from") for m in messages)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in res.log_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated log lines for the replayed steps


def test_refuses_existing_run_without_resume_and_changed_settings_on_resume(demo_ds, tiny_cfg, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(demo_ds, tmp_path / "m", tiny_cfg, method=_Crash(), progress=False)
    with pytest.raises(ConfigError, match="already holds a training run \\(checkpoint-3\\); pass --resume"):
        train(demo_ds, tmp_path / "m", tiny_cfg, progress=False)
    with pytest.raises(ConfigError, match="setting 'learning_rate' is 0.01 but the checkpoint was trained with 0.001"):
        train(demo_ds, tmp_path / "m", tiny_cfg.replace(learning_rate=1e-2), resume=True, progress=False)


def test_epsilon_prediction_and_no_ema(demo_ds, tiny_cfg, tmp_path):
    train(
        demo_ds,
        tmp_path / "e",
        tiny_cfg.replace(max_steps=2, prediction_type="epsilon", use_ema=False),
        progress=False,
    )
    b = ModelBundle.load(tmp_path / "e")
    assert b.prediction_type == "epsilon" and b.config["weights"] == "raw"


class _CountMicroBatches(TrainMethod):
    name = "test-count"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def after_step(self, ctx):
        if ctx.step == 2:  # stop during optimizer step 3, after checkpoint-2 was written
            raise KeyboardInterrupt
        self.batches.append(len(ctx.cells))
        return {}


def test_gradient_accumulation_steps_the_optimizer_once_per_k_micro_batches(demo_ds, tiny_cfg, tmp_path):
    from fairsample.train.checkpoint import checkpoint_dirs, load_checkpoint

    counter = _CountMicroBatches()
    cfg = tiny_cfg.replace(max_steps=4, gradient_accumulation_steps=3, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(demo_ds, tmp_path / "acc", cfg, method=counter, progress=False)
    assert counter.batches == [cfg.batch_size] * 6  # 2 optimizer steps x 3 micro-batches
    logs = (tmp_path / "acc" / "logs" / "train_log.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in logs) == 2  # one log record per optimizer step
    [(step, ck)] = checkpoint_dirs(tmp_path / "acc")
    steps = {int(s["step"]) for s in load_checkpoint(ck)["optimizer"]["state"].values()}
    assert step == 2 and steps == {2}  # AdamW stepped twice, not six times


def test_bf16_run(demo_ds, tiny_cfg, tmp_path):
    res = train(demo_ds, tmp_path / "bf16", tiny_cfg.replace(max_steps=2, mixed_precision="bf16"), progress=False)
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.final_loss))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mixed_precision": "fp8"}, "`mixed_precision` must be one of"),
        ({"mixed_precision": "fp16"}, "'fp16' needs a CUDA device"),
        ({"split": "holdout"}, "`split` must be one of"),
        ({"method": "fairest"}, r"`method` must be one of \[.*'vanilla'.*\], got 'fairest'"),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
    ],
)
def test_bad_settings_fail_before_training(demo_ds, tiny_cfg, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        train(demo_ds, tmp_path / "x", tiny_cfg.replace(**change), progress=False)
    assert not (tmp_path / "x").exists()


def test_lr_schedule_warmup_then_cosine(tiny_cfg):
    cfg = tiny_cfg.replace(max_steps=102, lr_warmup_steps=2, learning_rate=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.5) and lr_at(1, cfg) == pytest.approx(1.0)
    assert lr_at(52, cfg) == pytest.approx(0.5) and lr_at(102, cfg) == pytest.approx(0.0)
    assert lr_at(50, cfg.replace(lr_schedule="constant")) == 1.0
