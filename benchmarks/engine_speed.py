"""Engine speed benchmark (issue #3 §8): sampling images/s per backend at B = 1/8/32, CFG on/off, CFG packing, and
U-Net GFLOP/s vs a float32 matmul measured in the same run. Same as `fairsample bench`, with the result saved.

    python benchmarks/engine_speed.py --output out/bench/engine_speed.json

Run it on an otherwise idle machine: the ratios are measured in one process, but two processes sharing the cores
distort both sides (OpenMP spin-waiting).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairsample.models.bundle import ModelBundle
from fairsample.workflows.bench import format_table, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the embedded model)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("out/bench/engine_speed.json"))
    args = parser.parse_args()
    bundle = ModelBundle.load(args.model) if args.model else ModelBundle.load_default()
    doc = run_bench(
        bundle,
        batches=[int(b) for b in args.batches.split(",")],
        steps=args.steps,
        repeats=args.repeats,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(doc))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
