"""Does the embedded model draw what it is asked for? Label and tone accuracy of generated images (JSON).

Trains small CNNs on the real demo data (train+val split), generates a balanced set with the model, and reports the
fraction of generated images whose requested label / tone the classifiers recover, with the classifiers' accuracy on
the real test split as the ceiling. Issue #2 asks for ≥ 0.80 label and ≥ 0.90 tone accuracy on 200 images.

    python benchmarks/embedded_model_quality.py --output-dir out/quality            # embedded model
    python benchmarks/embedded_model_quality.py --model runs/m --n 200 --steps 50    # any bundle

``--select`` instead measures the candidate sampling settings the way every trained bundle gets its recommended ones
(:func:`fairsample.train.guard.conditioning_guard`: judges trained on the real train split, ``--images-per-cell``
samples per cell at validation seeds 900000+, guidance ``--guidance`` and, for v-prediction models, guidance rescale
``--rescale`` at the largest w) and prints the selection table; nothing is written to the bundle.

    python benchmarks/embedded_model_quality.py --select --data demo --output-dir out/select
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fairsample.data.demo import make_demo_dataset
from fairsample.data.folder import load_folder
from fairsample.evaluation.fidelity import conditional_accuracy
from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan
from fairsample.models.bundle import ModelBundle


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the embedded model)")
    p.add_argument("--output-dir", type=Path, default=Path("out/quality"))
    p.add_argument("--n", type=int, default=200, help="generated images, balanced over the cells")
    p.add_argument("--steps", type=int, default=None, help="default: the bundle's recommended setting")
    p.add_argument("--scheduler", default=None, help="default: the bundle's recommended setting")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the bundle's recommended setting")
    p.add_argument("--seed-offset", type=int, default=100_000, help="first seed (away from the README demo seeds)")
    p.add_argument("--data", type=Path, default=None, help="real dataset folder (default: a fresh demo dataset)")
    p.add_argument("--select", action="store_true", help="measure the guard's candidate settings instead")
    p.add_argument("--guidance", default="1.0,1.5,2.0,3.0", help="--select: candidate guidance scales")
    p.add_argument("--rescale", default="0.7", help="--select: guidance-rescale values tried at the largest w")
    p.add_argument("--images-per-cell", type=int, default=8, help="--select: samples per cell")
    p.add_argument("--judge-steps", type=int, default=25, help="--select: DDIM steps of every candidate")
    args = p.parse_args(argv)

    out = args.output_dir
    real_dir = args.data or out / "real"
    if not (real_dir / "metadata.csv").is_file():
        make_demo_dataset(real_dir, overwrite=True)
    real = load_folder(real_dir)
    bundle = ModelBundle.load(args.model) if args.model else ModelBundle.load_default()
    if args.select:
        return select(bundle, real, out, args)
    plan = GenerationPlan.balanced(bundle.cells(), args.n, range(args.seed_offset, args.seed_offset + args.n))
    pipe = FairSamplePipeline(bundle)
    cfg = pipe.default_config().replace(steps=args.steps, scheduler=args.scheduler, guidance_scale=args.guidance_scale)
    t0 = time.time()
    gen = pipe.generate_to_folder(out / "generated", plan, cfg, overwrite=True)
    gen_seconds = time.time() - t0
    scores = conditional_accuracy(real, load_folder(out / "generated"))
    doc = {
        "model": bundle.bundle_id,
        "n_generated": gen.n_images,
        "sample_config": cfg.to_dict(),
        "generation_seconds": round(gen_seconds, 1),
        "label_accuracy": scores["targets"]["label"]["generated_accuracy"],
        "tone_accuracy": scores["targets"]["tone"]["generated_accuracy"],
        "real_test_label_accuracy": scores["targets"]["label"]["real_test_accuracy"],
        "real_test_tone_accuracy": scores["targets"]["tone"]["real_test_accuracy"],
        "details": scores,
    }
    (out / "quality.json").write_text(json.dumps(doc, indent=2) + "\n")
    json.dump({k: v for k, v in doc.items() if k != "details"}, sys.stdout, indent=2)
    print()
    return doc


def select(bundle: ModelBundle, real: Any, out: Path, args: argparse.Namespace) -> dict:
    """The guard's selection table for ``bundle`` (written to ``<out>/selection.json``, printed as markdown)."""
    from fairsample.train.guard import conditioning_guard

    floats = [float(v) for v in args.guidance.split(",")]
    rescale = [float(v) for v in args.rescale.split(",") if v.strip()]
    report = conditioning_guard(
        bundle,
        real,
        start=None,
        guidance=floats,
        rescale=rescale,
        steps=args.judge_steps,
        images_per_cell=args.images_per_cell,
        write=False,
        warn=False,
    )
    doc = {
        "model": bundle.bundle_id,
        "data": str(real.root),
        "selection": report.selection_table(),
        "guard": report.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("| w | rescale | score (worst value) | worst value | label acc | attribute acc | BER | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for row in doc["selection"]["candidates"]:
        acc = row["overall"]
        label, attrs = next(iter(acc)), [k for k in acc if k in row["ber"]]
        accs = ", ".join(f"{acc[a]:.3f}" for a in attrs)
        bers = ", ".join(f"{row['ber'][a]:.3f}" for a in attrs)
        print(
            f"| {row['guidance_scale']:g} | {row['guidance_rescale']:g} | {row['score']:.3f} | {row['worst_group']} "
            f"| {acc[label]:.3f} | {accs} | {bers} | {row['seconds']} |"
        )
    print(
        f"selected: {doc['selection']['selected']} (tolerance {doc['selection']['tolerance']}); "
        f"guard: {report.summary()}"
    )
    return doc


if __name__ == "__main__":
    main()
