"""benchmarks/quality_confirm.py: argument errors arrive before any model or data work (the confirmation logic itself
is tested in tests/workflows/test_quality_bench.py)."""

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_confirm.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(_SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_missing_input_and_confirmed_input_are_one_line_errors(tmp_path):
    proc = _run("--input", str(tmp_path / "nope.json"), "--output", str(tmp_path / "o.json"))
    assert proc.returncode == 1 and "--input" in proc.stderr and "is not a file" in proc.stderr
    done = tmp_path / "done.json"
    done.write_text(json.dumps({"confirmation": {}}))
    proc = _run("--input", str(done), "--output", str(tmp_path / "o.json"))
    assert proc.returncode == 1 and "is confirmed already" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.json").exists()
