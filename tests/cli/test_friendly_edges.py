"""Friendly edges (issue 13, item 7): a missing extra names its `pip install`, `info` and bad paths answer without
importing torch, help keeps brackets and whole option names at 80 columns."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import typer

from fairsample.cli import app
from fairsample.core.errors import EXTRAS, missing_extra_message, require

from .conftest import TINY_TRAIN, invoke


def test_train_without_accelerate_names_the_extra(runner, demo_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now raises ImportError
    res = invoke(
        runner,
        "train",
        demo_dir,
        "--output-dir",
        tmp_path / "m",
        "--max-steps",
        "1",
        *TINY_TRAIN,
        "--no-guard",
        "--format",
        "json",
    )
    assert res.exit_code == 1
    assert "pip install 'fairsample[train]'" in res.stderr and "accelerate" in res.stderr
    assert res.stderr.count("error:") == 1


def test_require_and_message_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "botorch", None)
    with pytest.raises(ImportError, match=r"GP-UCB needs botorch: pip install 'fairsample\[train\]'"):
        require("botorch", feature="GP-UCB")
    try:
        import botorch  # noqa: F401
    except ImportError as exc:
        assert missing_extra_message(exc).endswith("pip install 'fairsample[train]'")
    assert missing_extra_message(ImportError("The X needs y: pip install 'fairsample[ort]'")).count("pip") == 1
    assert missing_extra_message(ModuleNotFoundError("No module named 'zzz'", name="zzz")) == "No module named 'zzz'"
    assert set(EXTRAS.values()) <= {"train", "sd", "ort", "tensorrt", "inception"}


def _typer_apps(typer_app: typer.Typer):
    yield typer_app
    for group in typer_app.registered_groups:
        yield from _typer_apps(group.typer_instance)


def test_help_keeps_brackets_and_whole_option_names_at_80_columns(runner):
    assert all(a.rich_markup_mode is None for a in _typer_apps(app))  # plain click help on every (sub)app
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())  # help text is re-wrapped; compare across line breaks
    assert "--gradient-accumulation-steps" in res.stdout
    assert "([train] table or top level)" in text
    res = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert "([generate] table or top level)" in " ".join(res.stdout.split())


#: runs in a fresh interpreter: which heavy modules do `info` and the bad-path errors import?
_PROBE = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from fairsample.cli import app
    runner, out = CliRunner(), {"import": sorted(m for m in ("torch", "diffusers", "pandas") if m in sys.modules)}
    res = runner.invoke(app, ["info", "--format", "json"])
    out["info"] = [res.exit_code, json.loads(res.stdout)]
    calls = {
        "train": ["train", "NOPE", "-o", "x"],
        "data check": ["data", "check", "NOPE"],
        "augment": ["augment", "NOPE", "--total", "3", "-o", "x"],
        "evaluate": ["evaluate", "--real", "NOPE", "--synthetic", "NOPE", "-o", "x"],
        "prefs build": ["prefs", "build", "--model", "M", "--data", "NOPE", "-o", "x"],
        "study": ["study", "--data", "NOPE", "-o", "x"],
        "tune-perturbation": ["tune-perturbation", "--data", "NOPE", "--attribute", "tone"],
    }
    for name, args in calls.items():
        res = runner.invoke(app, [sys.argv[1] if a == "NOPE" else sys.argv[2] if a == "M" else a for a in args])
        out[name] = [res.exit_code, res.stderr.strip()]
    out["heavy"] = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
    print(json.dumps(out))
    """
)


def test_info_and_bad_paths_do_not_import_torch(tmp_path):
    from fairsample.models.bundle import default_model_path, library_versions

    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "nope"), str(default_model_path())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["import"] == []  # `import fairsample.cli` is light
    code, doc = out["info"]
    assert code == 0 and doc["versions"] == library_versions()  # the same record, read from package metadata
    assert doc["embedded_model"] == str(default_model_path()) and doc["embedded_model_present"]
    for name in ("train", "data check", "augment", "evaluate", "prefs build", "study", "tune-perturbation"):
        code, err = out[name]
        assert code == 1 and err.startswith("error: ") and str(tmp_path / "nope") in err, (name, err)
        assert "does not exist" in err or "is not a folder" in err, (name, err)
    assert out["heavy"] == []  # every answer came before torch / diffusers were imported


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--backend", "tvm", "-o", "x"],
        ["augment", "DATA", "--total", "3", "--backend", "tvm", "-o", "x"],
        ["tau", "--attribute", "tone", "--from", "light", "--to", "dark", "--backend", "tvm"],
        ["prefs", "build", "--model", "m", "--data", "DATA", "-o", "p", "--backend", "tvm"],
    ],
)
def test_every_sampling_command_checks_backend_first(tmp_path, args):
    from typer.testing import CliRunner

    from fairsample.cli import app

    (tmp_path / "data").mkdir()
    res = CliRunner().invoke(app, [str(tmp_path / "data") if a == "DATA" else a for a in args])
    assert res.exit_code == 1
    # generate and augment also accept "auto" (their list says so); tau and prefs build take an engine backend only
    choices = "'auto', 'torch'" if args[0] in ("generate", "augment") else "'torch'"
    assert f"`backend` must be one of [{choices}, 'onnxruntime', 'tensorrt', 'openvino'], got 'tvm'" in res.stderr
