"""Do the known remedies for over-guided v-prediction models help? Guidance rescale and dynamic thresholding, measured.

Issue #12 item 1g. For each guidance scale in ``--guidance``, samples the bundle (DDIM, ``--steps``) plainly, with
guidance rescale φ (Lin et al., 2024; ``--rescale``) and with diffusers' dynamic thresholding of x̂₀ (Saharia et al.,
2022; ``thresholding=True``, percentile ``--ratio``, ``sample_max_value`` ``--max-value``; the bundles' static
clipping to [-1, 1] is what it replaces — with ``sample_max_value = 1`` the two are identical), and scores every set
with the conditioning guard's judges and validation seeds (:mod:`fairsample.evaluation.conditioning`).

    python benchmarks/guidance_remedies.py --data demo --output-dir out/remedies              # embedded model
    python benchmarks/guidance_remedies.py --data demo --model runs/m --guidance 3,5

Writes ``<output-dir>/remedies.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the real dataset the bundle was trained on")
    p.add_argument("--model", type=Path, default=None, help="bundle (default: the embedded model)")
    p.add_argument("--output-dir", type=Path, default=Path("out/remedies"))
    p.add_argument("--guidance", default="3,5")
    p.add_argument("--rescale", type=float, default=0.7)
    p.add_argument("--ratio", type=float, default=0.995, help="dynamic thresholding percentile")
    p.add_argument("--max-value", type=float, default=1.5, help="dynamic thresholding sample_max_value (> 1)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--images-per-cell", type=int, default=8)
    args = p.parse_args(argv)

    from diffusers import DDPMScheduler

    from fairsample.data.folder import load_folder
    from fairsample.evaluation.conditioning import (
        SamplingSetting,
        guard_cells,
        sample_and_score,
        sampling_pipeline,
        train_judges,
    )
    from fairsample.models.bundle import ModelBundle

    ds = load_folder(args.data)
    bundle = ModelBundle.load(args.model) if args.model else ModelBundle.load_default()
    judges = train_judges(ds, size=bundle.image_shape[-1])
    cells = guard_cells(bundle, ds)
    plain = sampling_pipeline(bundle)
    dyn_bundle = ModelBundle(
        bundle.unet,
        DDPMScheduler.from_config(
            {
                **dict(bundle.scheduler.config),
                "thresholding": True,
                "dynamic_thresholding_ratio": args.ratio,
                "sample_max_value": args.max_value,
            }
        ),
        bundle.conditioner,
        bundle.vae,
        dict(bundle.config),
    )
    dynamic = sampling_pipeline(dyn_bundle)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / "remedies.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["guidance_scale"], r["remedy"]) for r in rows}
    for w in (float(v) for v in args.guidance.split(",")):
        runs = [
            ("none", plain, 0.0),
            (f"rescale {args.rescale:g}", plain, args.rescale),
            (f"dynamic thresholding p={args.ratio:g}, max={args.max_value:g}", dynamic, 0.0),
        ]
        for remedy, pipe, phi in runs:
            if (w, remedy) in done:
                continue
            sc = sample_and_score(
                pipe, judges, cells, SamplingSetting(w, phi, args.steps, "ddim"), images_per_cell=args.images_per_cell
            )
            rows.append(
                {
                    "guidance_scale": w,
                    "remedy": remedy,
                    "score": round(sc.score, 4),
                    "mean_score": round(sc.mean_score, 4),
                    "scores": sc.to_dict(),
                }
            )
            path.write_text(json.dumps(rows, indent=2) + "\n")
    print("| w | remedy | score (worst value) | label acc | attribute acc | worst value: label / attribute |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sc = r["scores"]
        label, attr = judges.label, judges.attributes[0]
        worst = min(sc["by_group"], key=lambda g: sc["by_group"][g][label] + sc["by_group"][g][attr])
        print(
            f"| {r['guidance_scale']:g} | {r['remedy']} | {r['score']:.3f} | {sc['overall'][label]:.3f} | "
            f"{sc['overall'][attr]:.3f} | {worst}: {sc['by_group'][worst][label]:.2f} / "
            f"{sc['by_group'][worst][attr]:.2f} |"
        )
    return {"rows": rows}


if __name__ == "__main__":
    main()
