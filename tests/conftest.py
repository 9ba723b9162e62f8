"""Suite-wide settings: offline, CPU, deterministic. Subpackage fixtures live in tests/<subpackage>/conftest.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting makes them 10-100x slower when the
# two cores are shared with another process; one thread keeps the suite fast and its timing stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
