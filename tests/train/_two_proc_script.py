"""Worker for tests/train/test_two_process.py: one training run on every process; dumps each rank's method state.

Usage (what accelerate's multi-process launchers set up: torchrun's env:// rendezvous, ``ACCELERATE_USE_CPU=true`` so
accelerate picks the gloo backend)::

    ACCELERATE_USE_CPU=true python -m torch.distributed.run --standalone --nproc_per_node 2 \
        _two_proc_script.py DEMO_DIR OUT_DIR CONFIG_JSON

``CONFIG_JSON`` is a :class:`~fairsample.core.config.TrainConfig` as a dict (``batch_size`` per process). Each rank
writes
``OUT_DIR/rank<r>.json`` with its method's state_dict, artifacts and final loss; the bundle goes to
``OUT_DIR/bundle``. One training run per launch: :func:`fairsample.train.loop.train` ends with
``accelerator.end_training()``, which destroys the process group, so a second run in the same processes cannot
communicate. Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(demo_dir: str, out_dir: str, config_json: str) -> None:
    import torch
    from accelerate.state import PartialState

    from fairsample.core.config import TrainConfig, from_dict
    from fairsample.data.folder import load_folder
    from fairsample.train.loop import train
    from fairsample.train.presets import get_method

    torch.set_num_threads(1)
    cfg = from_dict(TrainConfig, json.loads(config_json))
    method = get_method(cfg.method, cfg.method_options)
    out = Path(out_dir)
    res = train(load_folder(demo_dir), out / "bundle", cfg, method=method, progress=False, log=lambda _msg: None)
    rank = int(PartialState().process_index)  # the singleton keeps rank and world after end_training()
    doc = {
        "rank": rank,
        "world": int(PartialState().num_processes),
        "state": method.state_dict(),
        "artifacts": method.artifacts(),
        "final_loss": res.final_loss,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(doc), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
