"""Does the embedded model draw what it is asked for? Label and tone accuracy of generated images (JSON).

Trains small CNNs on the real demo data (train+val split), generates a balanced set with the model, and reports the
fraction of generated images whose requested label / tone the classifiers recover, with the classifiers' accuracy on
the real test split as the ceiling. Issue #2 asks for ≥ 0.80 label and ≥ 0.90 tone accuracy on 200 images.

    python benchmarks/embedded_model_quality.py --output-dir out/quality            # embedded model
    python benchmarks/embedded_model_quality.py --model runs/m --n 200 --steps 50    # any bundle
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fairsample.data.demo import make_demo_dataset
from fairsample.data.folder import load_folder
from fairsample.eval.fidelity import conditional_accuracy
from fairsample.models.bundle import ModelBundle
from fairsample.pipeline import FairSamplePipeline, GenerationPlan


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the embedded model)")
    p.add_argument("--output-dir", type=Path, default=Path("out/quality"))
    p.add_argument("--n", type=int, default=200, help="generated images, balanced over the cells")
    p.add_argument("--steps", type=int, default=None, help="default: the bundle's recommended setting")
    p.add_argument("--scheduler", default=None, help="default: the bundle's recommended setting")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the bundle's recommended setting")
    p.add_argument("--seed-offset", type=int, default=100_000, help="first seed (away from the README demo seeds)")
    args = p.parse_args(argv)

    out = args.output_dir
    real_dir = out / "real"
    if not (real_dir / "metadata.csv").is_file():
        make_demo_dataset(real_dir, overwrite=True)
    real = load_folder(real_dir)
    bundle = ModelBundle.load(args.model) if args.model else ModelBundle.load_default()
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


if __name__ == "__main__":
    main()
