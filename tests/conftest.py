"""Suite-wide settings: offline, CPU, deterministic. Subpackage fixtures live in tests/<subpackage>/conftest.py."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting makes them 10-100x slower when the
# two cores are shared with another process; one thread keeps the suite fast and its timing stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The post-training conditioning guard (fairsample.train.guard) samples every trained model at several guidance scales;
# tests that train tiny models opt out through its default, and the guard's own tests turn it on explicitly.
os.environ.setdefault("FAIRSAMPLE_GUARD", "0")
# Engines built by the tests go to a per-session cache, never the user's ~/.cache/fairsample (so a run on a developer
# machine neither reuses nor pollutes real artifacts, and every run pays the same exports a fresh CI machine does).
if "FAIRSAMPLE_CACHE_DIR" not in os.environ:
    # <tmp>/engines: the τ search and the judges cache next to the engine root (its parent), inside <tmp> too
    _cache = tempfile.mkdtemp(prefix="fairsample-test-cache-")
    os.environ["FAIRSAMPLE_CACHE_DIR"] = os.path.join(_cache, "engines")
    atexit.register(shutil.rmtree, _cache, True)

import torch  # noqa: E402

torch.set_num_threads(1)
