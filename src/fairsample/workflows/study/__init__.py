"""``fairsample study``: does fair training or sampling close the minority gap better than plain fine-tuning?

One resumable grid, built only from the public SDK (issue #12; protocol in docs/decisions.md):

1. a shared **base** generator trained from scratch without the minority group (or one the user names);
2. every method fine-tuned from it with the same budget and several **generator seeds**, each checked by the
   conditioning guard (attribute and label still recoverable from its samples) and given sampling settings chosen on
   validation seeds;
3. per model: engine export, τ search and perturbation search (sampling-time methods), and one synthetic set with
   the study's **augmentation plan** (water-filling the real train split to ``augment_total`` images);
4. an **oracle** set of real held-out images in the same per-cell numbers;
5. one evaluation: downstream classifiers on real train + each set, the Base (real only) and oracle rows, on the
   **counterfactual** test set (paired content) and the real test split; **gap closure** with CIs over generator
   and classifier seeds.

Modules: :mod:`~fairsample.workflows.study.profiles` (sizes), :mod:`~fairsample.workflows.study.plan` (the grid),
:mod:`~fairsample.workflows.study.grid` (resumable cells, worker processes), :mod:`~fairsample.workflows.study.stages`
(what each cell
computes), :mod:`~fairsample.workflows.study.curve` (vanilla's minority-fidelity curve),
:mod:`~fairsample.workflows.study.run`
(:func:`run_study`), :mod:`~fairsample.workflows.study.report` (``results.json``, ``RESULTS.md``, plots).
"""

from fairsample.workflows.study.plan import _BAD_METHOD, GridCell, StudyPlan, model_name, plan_study, set_name
from fairsample.workflows.study.profiles import METHODS, PROFILES, SAMPLER_MODELS, SAMPLERS, StudyProfile
from fairsample.workflows.study.run import _NO_ATTRIBUTE, _UNKNOWN_ATTRIBUTE, SCHEMA, StudyResult, run_study

__all__ = [
    "METHODS",
    "PROFILES",
    "SAMPLERS",
    "SAMPLER_MODELS",
    "SCHEMA",
    "GridCell",
    "StudyPlan",
    "StudyProfile",
    "StudyResult",
    "model_name",
    "plan_study",
    "run_study",
    "set_name",
    "_BAD_METHOD",
    "_NO_ATTRIBUTE",
    "_UNKNOWN_ATTRIBUTE",
]
