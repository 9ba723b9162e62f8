"""The SDK's public names resolve from ``fairsample`` whatever was imported first (issue #14)."""

from __future__ import annotations

import subprocess
import sys

import fairsample


def test_every_public_name_resolves():
    for name in fairsample.__all__:
        assert getattr(fairsample, name) is not None, name


def test_train_is_callable_even_after_its_submodules_are_imported():
    code = (
        "import fairsample.train.loop as loop, fairsample as fs\n"
        "loop_train = loop.train\n"
        "calls = []\n"
        "import fairsample.train\n"
        "fairsample.train.train = lambda *a, **k: calls.append((a, k)) or 'ok'\n"
        "print(fs.train(1, x=2), calls)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok [((1,), {'x': 2})]"
