"""Which class-diversity (CBDM) variant keeps the attribute? Fine-tune a bundle with each, then apply the guard.

Issue #12 item 1a: with the reference settings (τ = 1, γ = ¼, y′ uniform over cells) 100 fine-tuning steps of the
embedded model pulled every tone towards the average. This script fine-tunes the same starting bundle with vanilla,
the reference term and candidate project variants (same steps, batch, learning rate, seed), then measures each with
the conditioning guard (:func:`fairsample.train.guard.conditioning_guard`) against the starting bundle at its
recommended sampling setting, same cells and seeds. The variant whose label and attribute recoverability stay closest
to vanilla's is the ``cbdm-keep`` preset (docs/decisions.md).

    python benchmarks/cbdm_variants.py --data demo --output-dir out/cbdm-variants            # embedded model
    python benchmarks/cbdm_variants.py --data demo --init-from runs/base --variants vanilla,cbdm,cbdm-keep

Results: ``<output-dir>/cbdm_variants.json`` and a markdown table on stdout. Trained bundles are reused on a re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "cbdm": ("cbdm", {}),  # reference: λ_t = t/T over every t, y′ uniform over cells
    "cbdm-tmax500": ("cbdm", {"t_max": 500}),  # spare the high-noise half
    "cbdm-tmax750": ("cbdm", {"t_max": 750}),
    "cbdm-tmax900": ("cbdm", {"t_max": 900}),
    "cbdm-same-attribute": ("cbdm", {"y_prime": "same_attribute"}),  # never pull across an attribute value
    "cbdm-slota-tmax500": ("cbdm", {"y_prime": "same_label_other_attribute", "t_max": 500}),
    "cbdm-keep": ("cbdm-keep", {}),  # the registered project preset
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset folder the starting bundle was trained on")
    p.add_argument("--init-from", type=Path, default=None, help="starting bundle (default: the embedded model)")
    p.add_argument("--output-dir", type=Path, default=Path("out/cbdm-variants"))
    p.add_argument(
        "--variants",
        default="vanilla,cbdm,cbdm-tmax500,cbdm-tmax750,cbdm-tmax900,cbdm-same-attribute,cbdm-slota-tmax500",
    )
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-cell", type=int, default=8)
    p.add_argument("--select", action="store_true", help="also run the guidance selection grid on every variant")
    args = p.parse_args(argv)

    from fairsample.core.config import TrainConfig
    from fairsample.data.folder import load_folder
    from fairsample.models.bundle import default_model_path
    from fairsample.train.guard import conditioning_guard
    from fairsample.train.loop import train

    ds = load_folder(args.data)
    start = str(args.init_from or default_model_path())
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "cbdm_variants.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.variants.split(","):
        method, options = VARIANTS[name]
        folder = out / name
        cfg = TrainConfig(
            method=method,
            method_options=options,
            init_from=start,
            max_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lr_warmup_steps=args.warmup,
            checkpoint_every=0,
            seed=args.seed,
            device="cpu",
            guard=False,
        )
        row = results.get(name, {})
        if not (folder / "fairsample_config.json").is_file():
            t0 = time.time()
            res = train(ds, folder, cfg, progress=False, log=lambda s: print(s, file=sys.stderr))
            row = {
                "method": method,
                "options": options,
                "train_seconds": round(time.time() - t0, 1),
                "final_loss": res.final_loss,
            }
        if "guard" not in row:
            report = conditioning_guard(
                folder, ds, start=start, select=False, write=False, warn=False, images_per_cell=args.images_per_cell
            )
            row["guard"] = report.to_dict()
        if args.select and "selection" not in row:
            report = conditioning_guard(
                folder, ds, start=start, select=True, write=False, warn=False, images_per_cell=args.images_per_cell
            )
            row["selection"] = {"table": report.selection_table(), "guard": report.to_dict()}
        results[name] = row
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {row['guard']['flag']} {row['guard']['scores']['overall']}", file=sys.stderr)
    print(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown: per variant, flag, label / attribute accuracy (overall and worst value), BER, start's values."""
    lines = [
        "| variant | flag | label acc | attribute acc | worst value (label / attr) | BER (max) | start label / "
        "attr | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        g = row["guard"]
        sc = g["scores"]
        label = [k for k in sc["overall"] if k not in sc["ber"]][0]
        attr = next(iter(sc["ber"]))
        worst = min(sc["by_group"], key=lambda k: sc["by_group"][k][label] + sc["by_group"][k][attr])
        ref = g["reference"]["overall"]
        lines.append(
            f"| {name} | {g['flag']} | {sc['overall'][label]:.3f} | {sc['overall'][attr]:.3f} | {worst}: "
            f"{sc['by_group'][worst][label]:.2f} / {sc['by_group'][worst][attr]:.2f} | {sc['ber'][attr]:.3f} "
            f"({sc['ber_max'][attr]:.3f}) | {ref[label]:.3f} / {ref[attr]:.3f} | {row.get('train_seconds', '')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
