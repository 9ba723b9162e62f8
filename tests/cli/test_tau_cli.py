"""`fairsample tau` on the embedded model: τ*, the J(τ) curve as JSON + PNG, the cache, one-line errors."""

from __future__ import annotations

import json

from .conftest import run_cli


def test_tau_json_plot_and_cache(tmp_path):
    args = ["tau", "--attribute", "tone", "--from", "light", "--to", "dark", "--n-per-label", "1", "--steps", "4",
            "--grid", "100", "--cache-dir", tmp_path / "engines"]  # fmt: skip
    proc = run_cli(*args, "--output-dir", tmp_path / "t", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["cached"] is False and doc["taus"] == list(range(0, 1000, 100))
    assert doc["objective"][doc["taus"].index(doc["tau_star"])] == min(doc["objective"])
    assert doc["settings"]["attribute"] == "tone" and doc["settings"]["batch_size"] == 5  # 5 labels x 1
    assert json.loads((tmp_path / "t" / "tau.json").read_text())["tau_star"] == doc["tau_star"]
    assert (tmp_path / "t" / "tau.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = json.loads(run_cli(*args, "--format", "json").stdout)
    assert again["cached"] is True and again["objective"] == doc["objective"]
    assert list((tmp_path / "tau").glob("*.json"))


def test_tau_bad_value_is_one_line():
    proc = run_cli("tau", "--attribute", "tone", "--from", "light", "--to", "olive")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: `target` 'olive' is not a value of attribute 'tone'; its values are ['dark', 'light', 'medium']."
    )
