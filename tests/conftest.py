"""Suite-wide settings (offline, CPU, deterministic) and the fixtures several test folders share; fixtures of one
folder live in tests/<subpackage>/conftest.py."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting makes them 10-100x slower when the
# two cores are shared with another process; one thread keeps the suite fast and its timing stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The post-training conditioning guard (fairsample.train.guard) samples every trained model at several guidance scales;
# tests that train tiny models opt out through its default, and the guard's own tests turn it on explicitly.
os.environ.setdefault("FAIRSAMPLE_GUARD", "0")
# The sampling commands default to `--backend auto` (onnxruntime on a CPU: an ONNX export per new model). Tests that
# do not name a backend get the torch engine, as before; the auto choice has its own tests (engines/test_choice.py).
os.environ.setdefault("FAIRSAMPLE_BACKEND", "torch")
# Engines built by the tests go to a per-session cache, never the user's ~/.cache/fairsample (so a run on a developer
# machine neither reuses nor pollutes real artifacts, and every run pays the same exports a fresh CI machine does).
if "FAIRSAMPLE_CACHE_DIR" not in os.environ:
    # <tmp>/engines: the τ search and the judges cache next to the engine root (its parent), inside <tmp> too
    _cache = tempfile.mkdtemp(prefix="fairsample-test-cache-")
    os.environ["FAIRSAMPLE_CACHE_DIR"] = os.path.join(_cache, "engines")
    atexit.register(shutil.rmtree, _cache, True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset folder (digits source, seed 0; with counterfactual/ and holdout/), built once per worker.

    Read-only: a test that changes files copies it first (``shutil.copytree(demo_dir, tmp_path / ...)``).
    """
    from fairsample.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_dataset(root, source="digits", seed=0)
    return root
