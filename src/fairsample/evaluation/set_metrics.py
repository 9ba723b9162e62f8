"""The per-set stages of :func:`~fairsample.evaluation.evaluate.evaluate` (issue #4; METHODS.md §5.14): the feature
module and the generative metrics of every synthetic set replicate, the balanced error rate of attribute classifiers,
and the mean ± sd of both over each name's replicates.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fairsample.core.errors import DataError, FairsampleWarning
from fairsample.core.json_safe import json_safe
from fairsample.evaluation.aggregate import _cell_columns, _counts, _keys, _mean_sd

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset
    from fairsample.evaluation.evaluate import EvaluationSettings, Progress, _Warnings


def _generative_stage(
    real: FolderDataset,
    sets: Mapping[str, FolderDataset],
    attrs: Sequence[str],
    cfg: EvaluationSettings,
    log: _Warnings,
    say: Progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The feature module (once) and the generative report + per-cell FID of every set."""
    from fairsample.evaluation.features import DomainFeatures
    from fairsample.evaluation.generative import generative_report, group_fid

    say(f"training the feature module (DomainFeatures, target = cell) on {len(real)} real images")
    with log.stage("feature module"):
        features = DomainFeatures.fit_folder(
            real, target="cell", size=cfg.size, epochs=cfg.feature_epochs, batch_size=cfg.batch_size, seed=cfg.seed
        )
    feat_doc = {
        "kind": type(features).__name__,
        "hash": features.hash,
        "num_features": int(features.num_features),
        "target": features.target,
        "trained_on": "all real images (the FID reference)",
        "training": dict(features.training_info),
        "image_size": cfg.size,
    }
    cols = _cell_columns(real, attrs)
    real_keys = _keys(real, cols)
    out: dict[str, Any] = {}
    for name, syn in sets.items():
        say(f"generative metrics for {name!r} ({len(syn)} images)")
        with log.stage(f"generative ({name})"):
            rep = generative_report(
                real, syn, group_by=list(attrs), features=features, k=cfg.k, seed=cfg.seed, size=cfg.size
            )
            rep["features"]["trained_on_reference"] = True  # trained here, once, on these real images
            syn_keys = _keys(syn, cols)
            n_r, n_s = _counts(real_keys), _counts(syn_keys)
            ok = [c for c in n_r if n_s.get(c, 0) >= 2 and n_r[c] >= 2]
            few = [c for c in n_r if c not in ok and n_s.get(c, 0) > 0]
            if few:
                warnings.warn(
                    f"cells {few} have < 2 real or < 2 synthetic images and are left out of the per-cell FID",
                    FairsampleWarning,
                    stacklevel=2,
                )
            cells = None
            if ok:
                r_rows = np.flatnonzero(np.isin(real_keys, ok))
                s_rows = np.flatnonzero(np.isin(syn_keys, ok))
                cells = group_fid(
                    real.subset(r_rows),
                    syn.subset(s_rows),
                    features=features,
                    groups="cell",
                    k=cfg.k,
                    seed=cfg.seed,
                    size=cfg.size,
                )
                for entry in cells["groups"].values():
                    entry.pop("fid_draws", None)
                cells["overall_at_n_star"].pop("fid_draws", None)
            rep["cells"] = json_safe(cells)
            rep["cells_missing"] = [c for c in n_r if n_s.get(c, 0) == 0]
            out[name] = rep
    return out, feat_doc


def _ber_stage(
    real: FolderDataset,
    x_real: np.ndarray,
    sets: Mapping[str, FolderDataset],
    x_sets: Mapping[str, np.ndarray],
    attrs: Sequence[str],
    cfg: EvaluationSettings,
    log: _Warnings,
    say: Progress,
) -> dict[str, Any]:
    """BER of fresh attribute classifiers (real and each set) and of the real-trained one on each set."""
    from sklearn.metrics import balanced_accuracy_score

    from fairsample.evaluation.attribute_ber import attribute_classifier_ber
    from fairsample.evaluation.features import module_hash

    def fresh(x: np.ndarray, s: Sequence[str], where: str) -> tuple[dict[str, Any], Any]:
        try:
            res = attribute_classifier_ber(
                x, s, seed=cfg.seed, epochs=cfg.ber_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate
            )
        except DataError as exc:
            warnings.warn(f"BER is not defined for {where}: {exc}", FairsampleWarning, stacklevel=2)
            return {"ber": None, "error": str(exc)}, None
        k = len(res.classes)
        doc = res.to_dict() | {"ber_max": (k - 1) / k, "classifier_hash": module_hash(res.classifier.model)}
        return doc, res.classifier

    out: dict[str, Any] = {"real": {}, "sets": {name: {} for name in sets}}
    for a in attrs:
        say(f"attribute classifier (BER) for {a!r} on the real images")
        with log.stage(f"BER {a} (real)"):
            s_real = real.frame[a].astype(str).tolist()
            out["real"][a], clf = fresh(x_real, s_real, f"{a!r} on the real data")
        for name, syn in sets.items():
            say(f"attribute classifier (BER) for {a!r} on {name!r}")
            with log.stage(f"BER {a} ({name})"):
                s_syn = syn.frame[a].astype(str).tolist()
                doc, _ = fresh(x_sets[name], s_syn, f"{a!r} on set {name!r}")
                if clf is not None:
                    bacc = float(balanced_accuracy_score(s_syn, clf.predict(x_sets[name])))
                    doc["real_trained"] = {"ber": 1.0 - bacc, "balanced_accuracy": bacc, "n": len(s_syn)}
                else:
                    doc["real_trained"] = None
                out["sets"][name][a] = doc
    return out


def _replicate_summary(
    replicates: Mapping[str, Sequence[str]],
    generative: Mapping[str, Any],
    ber: Mapping[str, Any],
    attrs: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean ± sd over each name's replicates of the generative headline numbers and of BER."""
    gen: dict[str, Any] = {}
    ber_summary: dict[str, Any] = {}
    for name, ids in replicates.items():
        reps = [generative[i] for i in ids]
        by: dict[str, Any] = {}
        for a in attrs:
            groups = list(dict.fromkeys(g for rep in reps for g in rep["by"][a]["groups"]))
            by[a] = {
                "fid_variance": _mean_sd([rep["by"][a]["fid_variance"]["variance"] for rep in reps]),
                "es_fid": _mean_sd([rep["by"][a]["es_fid"]["value"] for rep in reps]),
                "fid_by_group": {
                    g: _mean_sd([(rep["by"][a]["groups"].get(g) or {}).get("fid_mean") for rep in reps])
                    for g in groups
                },
            }
        gen[name] = {
            "n_replicates": len(ids),
            "sets": list(ids),
            "fid": _mean_sd([rep["overall"]["fid"] for rep in reps]),
            "kid": _mean_sd([rep["overall"]["kid_mean"] for rep in reps]),
            "is_domain": _mean_sd([rep["overall"]["is_domain_mean"] for rep in reps]),
            "by": by,
        }
        ber_summary[name] = {
            a: {
                "ber": _mean_sd([(ber["sets"][i].get(a) or {}).get("ber") for i in ids]),
                "real_trained_ber": _mean_sd(
                    [((ber["sets"][i].get(a) or {}).get("real_trained") or {}).get("ber") for i in ids]
                ),
            }
            for a in attrs
        }
    return gen, ber_summary
