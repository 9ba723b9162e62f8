"""Confirmation step for a finished `fairsample bench --quality` JSON (docs/decisions.md, "Confirmation step").

`bench --quality` confirms its recommendation itself; this script runs the same step on a document written without
it (an older run, or `confirm=False`): the same reference (same seed), the same engines, the recommended setting and
the fastest at any precision re-sampled on the anchor's other seed sets.

    python benchmarks/quality_confirm.py --input out/quality.json --output out/quality.confirmed.json

For a bundle other than the embedded model pass `--model BUNDLE --data DATA` as for `bench --quality`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="a bench --quality JSON")
    parser.add_argument("--output", type=Path, required=True, help="the confirmed JSON (+ .png plot next to it)")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the embedded model)")
    parser.add_argument("--data", type=Path, default=None, help="the model's real data (default: the demo)")
    parser.add_argument("--max-tries", type=int, default=4)
    args = parser.parse_args()
    if not args.input.is_file():
        sys.exit(f"error: --input {args.input} is not a file; pass the JSON that bench --quality wrote.")
    if args.model is not None and args.data is None:
        sys.exit("error: --data is required with --model: pass the real data the model was trained on.")
    doc = json.loads(args.input.read_text())
    if "confirmation" in doc:
        sys.exit(f"error: {args.input} is confirmed already (it has 'confirmation'); nothing to do.")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    from fairsample.data.folder import load_folder  # heavy imports after the argument checks
    from fairsample.models.bundle import ModelBundle
    from fairsample.workflows.quality_bench import confirm_quality, pareto_plot

    bundle = ModelBundle.load(args.model) if args.model else ModelBundle.load_default()
    with tempfile.TemporaryDirectory(prefix="fairsample-confirm-") as tmp:
        data = args.data
        if data is None:
            from fairsample.data.demo import make_demo_dataset

            data = Path(tmp) / "demo"
            make_demo_dataset(data)
        doc = confirm_quality(bundle, load_folder(data), doc, max_tries=args.max_tries, progress=say)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    doc["plot"] = str(pareto_plot(doc, args.output.with_suffix(".png")))
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"recommended": doc["recommended"], "fastest_any": doc["fastest_within_noise_any_precision"]}))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
