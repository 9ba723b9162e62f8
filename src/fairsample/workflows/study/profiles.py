"""Study profiles: every size setting of a ``fairsample study`` run, fixed before the run and recorded with it.

``small`` is the 2-core CPU profile (the whole grid in about 2 hours with 2 worker processes), ``full`` the GPU-sized
version of the same grid, ``tiny`` the test profile (an 8×8 U-Net; its numbers are meaningless). The protocol the
profiles implement — shared base without the minority, every method fine-tuned from it with the same budget and two
generator seeds, water-filling augmentation, oracle and counterfactual views — is in docs/decisions.md ("Fairness that
shows (issue #12)").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: training methods of the grid, in table order (FairGen Table 1: SD, CBRS, SQRS, CBDM, FairDiffusion, FairGen; plus
#: FairSkin-S and the attribute-keeping class-diversity variant).
METHODS: tuple[str, ...] = ("vanilla", "cbrs", "sqrs", "cbdm", "cbdm-keep", "fairskin-s", "fairdiffusion", "fairgen")
#: samplers of the grid; ``conditional`` runs on every model, the others on :data:`SAMPLER_MODELS` only.
SAMPLERS: tuple[str, ...] = ("conditional", "attribute_switch", "fairdiffusion_perturbed")
#: the models the sampling-time methods run on.
SAMPLER_MODELS: tuple[str, ...] = ("vanilla", "fairdiffusion")


@dataclass(frozen=True)
class StudyProfile:
    """Every size setting of a study (recorded in ``results.json``)."""

    name: str  # profile name
    description: str  # one line for RESULTS.md
    # -- the shared base: trained from scratch without (most of) the minority group
    base_steps: int  # optimizer steps of the base model (vanilla, from random init)
    base_learning_rate: float  # peak learning rate of the base (cosine after warmup)
    base_minority_keep: float  # fraction of the minority group's training images the base sees (0 = absent)
    base_batch_size: int  # images per base training step
    architecture: str  # built-in U-Net config of the base
    image_size: int  # training resolution
    cross_attention_dim: int  # token width
    # -- fine-tuning: every method, the same budget from the same base
    train_steps: int  # fine-tuning steps per method (vanilla included)
    batch_size: int  # images per fine-tuning step
    learning_rate: float  # peak AdamW learning rate of the fine-tuning (cosine after warmup)
    lr_warmup_steps: int  # linear warmup steps
    checkpoint_every: int  # training checkpoints (resume points) every N steps
    generator_seeds: tuple[int, ...]  # training seeds of every generator (generator-to-generator variation)
    curve_every: int  # vanilla (first seed) writes a snapshot every N steps: the minority-fidelity curve
    curve_images_per_cell: int  # images per cell and snapshot of the curve
    device: str  # training / sampling device ("cpu" or "auto")
    # -- conditioning guard and recommended sampling settings (run after every training run)
    guard_images_per_cell: int  # samples per cell the guard judges
    # -- fairgen's proxy preference pairs (built once from the base)
    prefs_per_cell: int
    prefs_candidates: int
    prefs_classifier_epochs: int
    # -- generation
    augment_total: int  # synthetic images per set: water-filling to balance the real train split
    sample_steps: int  # DDIM steps of generation, τ search trajectories' sampling and the perturbation search
    sample_batch: int  # images per engine batch
    tau_n_per_label: int  # τ search: trajectory pairs per label and ordered value pair
    tau_search_steps: int  # τ search: DDIM steps of the search schedule (>= 100 except in tests)
    perturb_iterations: int | None  # GP-UCB proposals after the initial design (None: zero offsets, no search)
    perturb_n_eval: int  # images per group and perturbation evaluation
    # -- evaluation
    classifier_seeds: int  # downstream classifier seeds 0..N-1
    eval_epochs: int  # downstream classifier epochs per seed
    eval_k: int  # size-matched FID draws per group
    eval_resamples: int  # bootstrap resamples per fairness report
    eval_feature_epochs: int | None  # DomainFeatures epochs (None: evaluate's default)
    eval_ber_epochs: int  # attribute-classifier epochs (BER)
    eval_size: int | None  # image side for every metric (None: the model's resolution)
    # -- machine
    workers: int  # processes that run independent model chains (train → export → τ → perturbation → generate)
    torch_threads: int | None = None  # torch intra-op threads per process (None: torch's default)
    eval_threads: int | None = None  # torch threads of the evaluation (it runs alone, after the workers)
    guard_guidance: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)  # the guard's candidate CFG scales
    sampler_models: tuple[str, ...] = SAMPLER_MODELS  # the models the sampling-time methods run on
    exporters: tuple[str, ...] | None = None  # ONNX exporter chain (None: the engine's default)
    default_methods: tuple[str, ...] = METHODS  # methods run when none are given
    default_samplers: tuple[str, ...] = SAMPLERS  # samplers run when none are given

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PROFILES: dict[str, StudyProfile] = {
    # sizes fixed before the run of docs/RESULTS.md; their cost is in that file's "Wall time per stage"
    # small is trimmed to fit 2 hours on 2 cores (measured on 2026-12-02, 1 thread: a fine-tuning step of the
    # tiny-32 U-Net costs 1.08 s at batch 32, 0.58 s at batch 16, cbdm 2.2 s at batch 32; the full grid at batch 32
    # needed ~98 min of training alone): batch 16, fairskin-s left out (sqrs + the reference cbdm term, both in the
    # grid), sampling-time methods on vanilla only, three guidance candidates. The protocol is unchanged.
    "small": StudyProfile(
        name="small",
        description="2-core CPU, about 2 h with 2 worker processes: 32x32 tiny U-Net, base without the minority, "
        "every method fine-tuned from it with 2 generator seeds (grid trimmed to fit: see the profile's comment)",
        base_steps=1500,
        base_learning_rate=1e-3,
        base_minority_keep=0.0,
        base_batch_size=32,
        architecture="tiny-32",
        image_size=32,
        cross_attention_dim=64,
        train_steps=400,
        batch_size=16,
        learning_rate=2e-4,
        lr_warmup_steps=20,
        checkpoint_every=100,
        generator_seeds=(0, 1),
        curve_every=100,
        curve_images_per_cell=8,
        device="cpu",
        guard_images_per_cell=6,
        prefs_per_cell=4,
        prefs_candidates=8,
        prefs_classifier_epochs=8,
        augment_total=300,
        sample_steps=20,
        sample_batch=32,
        tau_n_per_label=2,
        tau_search_steps=100,
        perturb_iterations=4,
        perturb_n_eval=32,
        classifier_seeds=3,
        eval_epochs=10,
        eval_k=10,
        eval_resamples=100,
        eval_feature_epochs=None,
        eval_ber_epochs=8,
        eval_size=None,
        workers=2,
        # OpenMP spin-waiting makes 2 torch threads 13-17x slower as soon as another process uses the other core
        # (docs/RESULTS.md of issue #7), so each worker runs 1 thread and the workers use the cores
        torch_threads=1,
        eval_threads=2,
        guard_guidance=(1.0, 1.5, 2.0),
        sampler_models=("vanilla",),
        default_methods=("vanilla", "cbrs", "sqrs", "cbdm", "cbdm-keep", "fairdiffusion", "fairgen"),
    ),
    "full": StudyProfile(
        name="full",
        description="GPU: the same grid with a longer base and fine-tuning, 4 generator seeds, 50 DDIM steps",
        base_steps=6000,
        base_learning_rate=1e-3,
        base_minority_keep=0.0,
        base_batch_size=64,
        architecture="tiny-32",
        image_size=32,
        cross_attention_dim=64,
        train_steps=2000,
        batch_size=64,
        learning_rate=2e-4,
        lr_warmup_steps=100,
        checkpoint_every=250,
        generator_seeds=(0, 1, 2, 3),
        curve_every=250,
        curve_images_per_cell=32,
        device="auto",
        guard_images_per_cell=16,
        prefs_per_cell=16,
        prefs_candidates=64,
        prefs_classifier_epochs=8,
        augment_total=300,
        sample_steps=50,
        sample_batch=64,
        tau_n_per_label=8,
        tau_search_steps=200,
        perturb_iterations=20,
        perturb_n_eval=64,
        classifier_seeds=5,
        eval_epochs=20,
        eval_k=10,
        eval_resamples=100,
        eval_feature_epochs=None,
        eval_ber_epochs=8,
        eval_size=None,
        workers=1,
    ),
    # for tests: the whole pipeline on the 8x8 'test' U-Net in about a minute (numbers are meaningless)
    "tiny": StudyProfile(
        name="tiny",
        description="tests only: 8x8 'test' U-Net trained from scratch for a few steps; numbers are meaningless",
        base_steps=6,
        base_learning_rate=1e-3,
        base_minority_keep=0.0,
        base_batch_size=8,
        architecture="test",
        image_size=8,
        cross_attention_dim=8,
        train_steps=2,
        batch_size=8,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        checkpoint_every=1,
        generator_seeds=(0, 1),
        curve_every=1,
        curve_images_per_cell=1,
        device="cpu",
        guard_images_per_cell=1,
        prefs_per_cell=1,
        prefs_candidates=2,
        prefs_classifier_epochs=1,
        augment_total=24,
        sample_steps=3,
        sample_batch=16,
        tau_n_per_label=1,
        tau_search_steps=10,
        perturb_iterations=None,
        perturb_n_eval=4,
        classifier_seeds=2,
        eval_epochs=1,
        eval_k=2,
        eval_resamples=0,
        eval_feature_epochs=1,
        eval_ber_epochs=1,
        eval_size=8,
        workers=1,
        torch_threads=1,
        exporters=("legacy",),  # 5 s instead of 22 s per export of the test U-Net
        default_methods=("vanilla", "fairdiffusion"),
    ),
}
