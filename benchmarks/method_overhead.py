"""Training-step overhead of each fair method ÷ vanilla on the same model, data and batch (issue #5 §8).

    python benchmarks/method_overhead.py --output out/bench/method_overhead.json [--steps 40] [--batch-size 32]

Every preset trains the same built-in U-Net (``tiny-32`` by default) on the demo data for ``--steps`` optimizer steps
from the same seed; the step time is read from the training log (``seconds`` per step). The first ``--warmup`` steps
are dropped. Both the median (typical step) and the mean (which includes FBP's GP fits every ``window`` steps) are
reported, and the ratio to vanilla uses the mean. Preference presets (``dpo``, ``fairgen``) read a preferences file
of real demo image pairs (same cell, arbitrary winner): the timing does not depend on who wins. Targets: FBP ≤ 1.05x,
CBDM ≤ 2.0x (one extra U-Net forward). Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fairsample.core.config import TrainConfig
from fairsample.data.demo import make_demo_dataset
from fairsample.data.folder import load_folder
from fairsample.train.loop import train

PRESETS = [
    "vanilla",
    "cbrs",
    "sqrs",
    "cbdm",
    "fairskin-c",
    "fairskin-s",
    "fairdiffusion",
    "fairdiffusion-improved",
    "fbp-random",
    "dpo",
    "fairgen",
]
TARGETS = {"fairdiffusion": 1.05, "cbdm": 2.0}


def _preferences(ds, root: Path) -> Path:
    by_cell: dict = {}
    for i, cell in enumerate(ds.cell_ids()):
        by_cell.setdefault(cell, []).append(i)
    rows = []
    for cell, idx in sorted(by_cell.items()):
        for k in range(0, min(len(idx) - 1, 8), 2):
            v = cell.as_dict("label")
            rows.append(f"{ds.image_path(idx[k])},{ds.image_path(idx[k + 1])},{v['tone']},{v['label']}")
    path = root / "preferences.csv"
    path.write_text("file_w,file_l,tone,label\n" + "\n".join(rows) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--architecture", default="tiny-32")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--output", type=Path, default=Path("out/bench/method_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="fairsample-overhead-"))
    make_demo_dataset(work / "demo", seed=0)
    ds = load_folder(work / "demo")
    prefs = _preferences(ds, work)
    base = TrainConfig(
        architecture=args.architecture,
        batch_size=args.batch_size,
        max_steps=args.steps,
        checkpoint_every=0,
        device="cpu",
        seed=0,
    )
    rows = []
    for name in args.presets.split(","):
        options = {"preferences": str(prefs)} if name in ("dpo", "fairgen") else {}
        cfg = base.replace(method=name, method_options=options)
        t0 = time.time()
        res = train(ds, work / f"run-{name}", cfg, progress=False, log=lambda m: None)
        secs = [json.loads(line)["seconds"] for line in res.log_path.read_text().splitlines()][args.warmup :]
        rows.append(
            {
                "method": name,
                "median_step_s": round(statistics.median(secs), 4),
                "mean_step_s": round(statistics.fmean(secs), 4),
                "wall_s": round(time.time() - t0, 1),
            }
        )
        print(
            f"{name:24s} median {rows[-1]['median_step_s']:.3f} s  mean {rows[-1]['mean_step_s']:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    vanilla = next(r for r in rows if r["method"] == "vanilla")
    for r in rows:
        r["ratio_mean"] = round(r["mean_step_s"] / vanilla["mean_step_s"], 3)
        r["ratio_median"] = round(r["median_step_s"] / vanilla["median_step_s"], 3)
        if r["method"] in TARGETS:
            r["target"] = TARGETS[r["method"]]
            r["met"] = r["ratio_mean"] <= TARGETS[r["method"]]
    doc = {"config": {**base.to_dict(), "warmup": args.warmup, "threads": torch.get_num_threads()}, "methods": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['method']:24s} x{r['ratio_mean']:.2f} (median x{r['ratio_median']:.2f})")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
