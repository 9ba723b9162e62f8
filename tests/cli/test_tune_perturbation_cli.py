"""`fairsample tune-perturbation`: θ = 0 first, Sobol design, GP-UCB proposals, held-out guard, perturbation.json."""

from __future__ import annotations

import json

from fairsample.samplers.perturbed import Perturbation

from .conftest import run_cli


def test_tune_perturbation_writes_a_loadable_file(demo_dir, tmp_path):
    out = tmp_path / "perturbation.json"
    proc = run_cli("tune-perturbation", "--data", demo_dir, "--attribute", "tone", "--n-eval", "3",
                   "--iterations", "1", "--steps", "2", "--output", out, "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["output"] == str(out) and doc["kept"] in ("zero", "theta_star")
    pert = Perturbation.load(out)
    meta = pert.meta
    assert meta["method_status"] == "project-extension" and meta["reference"] == "validation split"
    trace = meta["trace"]
    assert [t["kind"] for t in trace] == ["zero"] + ["sobol"] * 6 + ["ucb"]  # d = 2 x 3 tones
    assert set(trace[0]["guidance"].values()) == {0.0} and set(trace[0]["temperature"].values()) == {0.0}
    lo, hi = meta["bounds"]["temperature"]
    assert all(lo <= v <= hi for t in trace for v in t["temperature"].values())
    if doc["kept"] == "zero":
        assert pert.is_zero()
    held = meta["held_out"]
    assert set(held) == {"zero", "theta_star"} and all("reward" in v for v in held.values())


def test_embedded_model_needs_output(demo_dir):
    proc = run_cli("tune-perturbation", "--data", demo_dir, "--attribute", "tone")
    text = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 2 and "the embedded model is read-only: pass --output PATH" in text
