"""Sharded generation (design README §4): the union of the shards is byte-identical to a single-process run.

Two launches are covered:

- two CPU processes under ``python -m torch.distributed.run --standalone --nproc_per_node 2`` (torchrun, the launcher
  ``accelerate launch`` uses for several processes; ``accelerate launch --cpu --num_processes 2`` starts a single
  process without mpirun, see tests/train/test_two_process.py) running the unchanged ``fairsample generate``
  command: the pipeline detects ``WORLD_SIZE`` > 1 and shards over accelerate's ``PartialState`` (gloo);
- independent in-process shards ``shard=(rank, world)``: the last one to finish finalizes, a re-run on one process
  completes a partial folder, and a shard never deletes another shard's temporary files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fairsample.cli import app
from fairsample.core.config import SampleConfig
from fairsample.core.errors import ConfigError
from fairsample.generation.pipeline import _BAD_SHARD, _SHARD_AND_DISTRIBUTED, FairSamplePipeline, GenerationPlan

ARGS = ["generate", "--per-cell", "1", "--steps", "2", "--batch-size", "4", "--format", "json"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) → its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipe() -> FairSamplePipeline:
    return FairSamplePipeline()


@pytest.fixture(scope="module")
def plan(pipe) -> GenerationPlan:
    cells = [pipe.bundle.parse_cell(c) for c in ("tone=dark,label=1", "tone=light,label=3", "tone=medium,label=4")]
    return GenerationPlan.per_cell(cells, 3, range(20, 29))


@pytest.fixture(scope="module")
def cfg(pipe) -> SampleConfig:
    return pipe.default_config().replace(steps=2, batch_size=2, sampler="mixing", sampler_options={"to": "uniform"})


@pytest.fixture(scope="module")
def reference(pipe, plan, cfg, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("shard") / "one"
    result = pipe.generate_to_folder(out, plan, cfg, progress=False)
    assert result.complete and result.shard == (0, 1)
    return snapshot(out)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)
def test_two_processes_under_torchrun_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "1",
        "-m",
        "fairsample.cli",
        *ARGS,
        "--output-dir",
        str(tmp_path / "two"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the single-process reference: the same command in this process, while the launch runs
        res = CliRunner().invoke(app, [*ARGS, "--output-dir", str(tmp_path / "one")], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log[-4000:]
    one, two = snapshot(tmp_path / "one"), snapshot(tmp_path / "two")
    assert len([k for k in one if k.endswith(".png")]) == 15
    assert two.keys() == one.keys() and two == one
    # each rank generated its round-robin share (items 0, 2, ... and 1, 3, ...) and reported it
    outs = sorted(logs.rglob("stdout.log"), key=lambda p: p.parent.name)
    docs = [json.loads(p.read_text()) for p in outs]
    assert [d["n_generated"] for d in docs] == [8, 7]
    assert all(d["n_images"] == 15 for d in docs)

    # the main process's refusal (another plan in the folder) reaches every rank: all exit 1, none hangs
    other = [a if a != "json" else "quiet" for a in cmd] + ["--seeds", "50-64"]
    proc = subprocess.run(other, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and snapshot(tmp_path / "two") == one
    assert proc.stderr.count("error: `output_dir`") == 2 and "holds a different generation" in proc.stderr


def test_independent_shards_union_is_byte_identical(pipe, plan, cfg, reference, tmp_path):
    out = tmp_path / "s"
    r1 = pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(1, 3))
    assert (r1.complete, r1.shard, r1.n_generated) == (False, (1, 3), 3)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000021.png", "000024.png", "000027.png"]
    assert not (out / "metadata.csv").exists() and not (out / "config.json").exists()
    r0 = pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(0, 3))
    assert not r0.complete and not (out / "metadata.csv").exists()
    r2 = pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(2, 3))  # the last one finalizes
    assert r2.complete and r2.n_images == 9
    assert snapshot(out) == reference


def test_rerun_on_one_process_completes_a_partial_sharded_folder(pipe, plan, cfg, reference, tmp_path):
    out = tmp_path / "s"
    assert not pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(0, 2)).complete
    result = pipe.generate_to_folder(out, plan, cfg, progress=False)  # the same call without a shard
    assert result.complete and result.n_generated == 4  # items 1, 3, 5, 7
    assert snapshot(out) == reference


def test_a_shard_deletes_only_its_own_stale_temporary_files(pipe, plan, cfg, tmp_path):
    out = tmp_path / "s"
    pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(1, 2))
    mine, theirs = out / "images" / ".000020.png.k1.png", out / "images" / ".000021.png.k2.png"
    mine.write_bytes(b"partial")  # item 0 belongs to shard 0: a leftover of its killed run
    theirs.write_bytes(b"in flight")  # item 1 belongs to shard 1, which may be writing it right now
    pipe.generate_to_folder(out, plan, cfg, progress=False, shard=(0, 2))
    assert not mine.exists() and theirs.exists()


def test_distributed_without_a_launcher_is_one_process(pipe, plan, cfg, reference, tmp_path):
    result = pipe.generate_to_folder(tmp_path / "d", plan, cfg, progress=False, distributed=True)
    assert result.complete and result.shard == (0, 1)
    assert snapshot(tmp_path / "d") == reference


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), (-1, 2), (0, 1, 2), (True, 2)])
def test_bad_shards_fail_before_anything_is_written(pipe, plan, cfg, tmp_path, shard):
    with pytest.raises(ConfigError, match=re.escape(_BAD_SHARD.format(value=shard))):
        pipe.generate_to_folder(tmp_path / "x", plan, cfg, progress=False, shard=shard)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape(_SHARD_AND_DISTRIBUTED)):
        pipe.generate_to_folder(tmp_path / "x", plan, cfg, progress=False, shard=(0, 2), distributed=True)
    assert not (tmp_path / "x").exists()
