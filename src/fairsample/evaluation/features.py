"""Feature modules for FID / KID / IS (METHODS.md §5.0, §5.1, §5.4): nothing here ever downloads weights.

- :class:`DomainFeatures` (the offline default): a :class:`~fairsample.evaluation.classifiers.SmallCNN` trained on the
  *real*
  images to predict their **cell** (attribute values × label), so its features respond both to what is depicted (the
  label) and to how the group is rendered (the attributes). Its penultimate, globally average-pooled activations are
  the features; its label logits (cell probabilities summed per label) give IS-domain. Reports identify it by
  :attr:`DomainFeatures.hash`.
- :func:`inception_features`: the torchmetrics / torch-fidelity Inception-v3 from a **user-supplied local** weights
  file (the ``[inception]`` extra). Only its error messages are tested here.

Both follow torchmetrics' custom-feature contract: ``forward`` takes ``(N, 3, H, W)`` uint8 images (or float in
[0, 1], as sent with ``normalize=True``) and returns ``(N, d)``; ``num_features`` holds ``d``, so torchmetrics never
runs its dummy 299×299 forward pass to infer it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.tables import natural_key
from fairsample.evaluation.classifiers import SmallCNN, train_classifier

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "MIN_TRAIN_STEPS",
    "WEIGHTS_FILE",
    "DomainFeatures",
    "InceptionFeatures",
    "inception_features",
    "module_hash",
]

FORMAT = "fairsample.DomainFeatures"
FORMAT_VERSION = 1
WEIGHTS_FILE = "domain_features.safetensors"
CONFIG_FILE = "domain_features.json"
INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
#: with ``epochs=None``, training runs at least this many optimisation steps (and at least 8 epochs): 8 epochs of
#: a few hundred images are ~50 steps, which leaves the SmallCNN near chance on the demo's 15 cells.
MIN_TRAIN_STEPS = 300

_BAD_INPUT = (
    "`x` must be a (N, 3, H, W) uint8 tensor (or float in [0, 1]), got {kind} of shape {shape} and dtype {dtype}; "
    "convert (N, H, W, 3) arrays with torch.from_numpy(a).permute(0, 3, 1, 2)."
)
_BAD_TARGET = "`target` must be one of ['cell', 'label'], got {value!r}."
_LEN_MISMATCH = "`labels` has {m} entries but `targets` has {n}; give one label per image."
_CLASS_TWO_LABELS = "class {cls!r} occurs with labels {labels}; each target class must belong to one label."
_BAD_CLASS_LABELS = "`class_labels` has {m} entries but there are {n} classes; give one label per class."
_BAD_HEAD = "`model` has {n_out} outputs but {n} classes were given; pass one class name per output."
_NO_SAVED = "no {name} in {path}; pass the folder written by DomainFeatures.save()."
_BAD_SAVED = "{path} is not a DomainFeatures config ({detail}); pass the folder written by DomainFeatures.save()."
_HASH_MISMATCH = (
    "{path}: the weights hash {actual} does not match the recorded hash {expected}; the files were modified or "
    "mixed up, save the module again."
)
_NEEDS_TORCH_FIDELITY = (
    "Inception features need torch-fidelity: pip install 'fairsample[inception]' "
    "(or use DomainFeatures, the offline default)."
)
_NO_WEIGHTS = (
    "`weights_path` {path} is not a file; download " + INCEPTION_WEIGHTS_NAME + " yourself and pass its local path "
    "(fairsample never downloads weights)."
)
_BAD_INCEPTION_FEATURE = "`feature` must be one of [64, 192, 768, 2048], got {value!r}."


def module_hash(module: nn.Module, extra: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of a module's ``state_dict`` (names, dtypes, shapes and raw bytes, in sorted name order).

    Args:
        module: any module; only its state (parameters and buffers) counts.
        extra: optional JSON-able settings hashed too (canonical JSON, sorted keys).

    Returns:
        64 hex digits; identical for identical state on any machine (little-endian CPU bytes).

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> module_hash(a) == module_hash(b), len(module_hash(a))
        (True, 64)
    """
    h = hashlib.sha256()
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_images(x: Any) -> Tensor:
    """(N, 3, H, W) uint8 or float tensor → float32 in [0, 1]."""
    ok = isinstance(x, Tensor) and x.ndim == 4 and x.shape[1] == 3
    if not ok or not (x.dtype == torch.uint8 or x.is_floating_point()):
        shape, dtype = tuple(getattr(x, "shape", ())), getattr(x, "dtype", None)
        raise ConfigError(_BAD_INPUT.format(kind=type(x).__name__, shape=shape, dtype=dtype))
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class DomainFeatures(nn.Module):
    """Penultimate features of a :class:`SmallCNN` trained on real images (the offline FID / KID / IS module).

    Build one with :meth:`fit` (arrays) or :meth:`fit_folder` (a dataset), or wrap an existing ``SmallCNN``. The
    module never leaves evaluation mode and never needs gradients (like torchmetrics' ``NoTrainInceptionV3``).

    Args:
        model: the classifier; its ``features`` + global average pool give ``4 * width`` features.
        classes: class name of each output of ``model.head`` (cell texts or labels).
        class_labels: the label of each class (for cells ``tone=dark,label=3`` → ``"3"``); ``None`` means the
            classes are the labels. :meth:`logits` sums class probabilities per label.
        image_size: side the model was trained at; inputs of another size are resized (bilinear, antialiased).
        target: what the classes are (``"cell"`` or ``"label"``), recorded in the config.
        training: provenance (epochs, seed, images, ...) saved in the JSON and reports; not part of the hash.

    Attributes:
        num_features: feature dimension ``d`` (read by torchmetrics).
        labels: the label names of :meth:`logits`' columns, numeric-aware sorted.

    Example:
        >>> m = DomainFeatures(SmallCNN(2, width=2), ["a", "b"])
        >>> m(torch.zeros(4, 3, 32, 32, dtype=torch.uint8)).shape, m.num_features, len(m.hash)
        (torch.Size([4, 8]), 8, 64)
    """

    def __init__(
        self,
        model: SmallCNN,
        classes: Sequence[str],
        *,
        class_labels: Sequence[str] | None = None,
        image_size: int = 32,
        target: str = "label",
        training: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        classes = [str(c) for c in classes]
        if model.head.out_features != len(classes):
            raise ConfigError(_BAD_HEAD.format(n_out=model.head.out_features, n=len(classes)))
        class_labels = list(classes) if class_labels is None else [str(v) for v in class_labels]
        if len(class_labels) != len(classes):
            raise ConfigError(_BAD_CLASS_LABELS.format(m=len(class_labels), n=len(classes)))
        if target not in ("cell", "label"):
            raise ConfigError(_BAD_TARGET.format(value=target))
        self.model = model
        self.classes = classes
        self.class_labels = class_labels
        self.labels = sorted(set(class_labels), key=natural_key)
        self.image_size = int(image_size)
        self.target = target
        self.width = model.head.in_features // 4
        self.num_features = model.head.in_features
        self.training_info = dict(training or {})
        masks = torch.tensor([[c == lab for c in class_labels] for lab in self.labels], dtype=torch.bool)
        self.register_buffer("_label_masks", masks, persistent=False)
        self.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def fit(
        cls,
        images: np.ndarray | Tensor,
        targets: Sequence[str],
        *,
        labels: Sequence[str] | None = None,
        target: str = "label",
        epochs: int | None = None,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        seed: int = 0,
    ) -> DomainFeatures:
        """Train the module with :func:`~fairsample.evaluation.classifiers.train_classifier` (deterministic in
        ``seed``).

        Args:
            images: ``(N, H, W, 3)`` uint8 (square) or ``(N, 3, H, W)`` float in [0, 1]; H is the module's size.
            targets: ``N`` class names (cell texts or labels).
            labels: ``N`` labels when ``targets`` are finer than labels (cells); ``None`` = targets are labels.
            target: ``"cell"`` or ``"label"``, recorded in the config.
            epochs: training epochs; ``None`` = at least 8 epochs and :data:`MIN_TRAIN_STEPS` steps.
            batch_size, learning_rate, seed: passed to ``train_classifier``.

        Raises:
            ConfigError: bad images, fewer than two classes, mismatched lengths, or a class with two labels.
        """
        if labels is not None and len(labels) != len(targets):
            raise ConfigError(_LEN_MISMATCH.format(m=len(labels), n=len(targets)))
        if epochs is None:
            epochs = max(8, math.ceil(MIN_TRAIN_STEPS / max(1, math.ceil(len(targets) / batch_size))))
        clf = train_classifier(
            images, list(targets), epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed
        )
        class_labels = None
        if labels is not None:
            seen: dict[str, set[str]] = {}
            for t, lab in zip(targets, labels, strict=True):
                seen.setdefault(str(t), set()).add(str(lab))
            for c, labs in seen.items():
                if len(labs) > 1:
                    raise ConfigError(_CLASS_TWO_LABELS.format(cls=c, labels=sorted(labs)))
            class_labels = [next(iter(seen[c])) for c in clf.classes]
        size = images.shape[1] if images.shape[-1] == 3 else images.shape[-1]
        training = {
            "n_images": len(targets),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
        }
        return cls(
            clf.model, clf.classes, class_labels=class_labels, image_size=int(size), target=target, training=training
        )

    @classmethod
    def fit_folder(
        cls,
        dataset: Any,
        *,
        rows: Sequence[int] | np.ndarray | None = None,
        target: str = "cell",
        size: int = 32,
        epochs: int | None = None,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        seed: int = 0,
    ) -> DomainFeatures:
        """Train on a :class:`~fairsample.data.folder.FolderDataset` (its real images).

        Args:
            dataset: the real dataset.
            rows: rows to train on (default: all); pass a train split to keep the FID reference unseen.
            target: ``"cell"`` (default: attribute values × label, so features see the attributes) or ``"label"``.
            size: square image side; images are loaded with bicubic resizing.
            epochs, batch_size, learning_rate, seed: as :meth:`fit`.
        """
        if target not in ("cell", "label"):
            raise ConfigError(_BAD_TARGET.format(value=target))
        idx = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
        images = np.stack([np.asarray(dataset.load_image(int(i), size=size), np.uint8) for i in idx])
        labels = [str(v) for v in dataset.frame[dataset.spec.label].to_numpy()[idx]]
        if target == "cell":
            targets = [dataset.cell_of(int(i)).to_text(dataset.spec.label) for i in idx]
        else:
            targets = labels
        return cls.fit(
            images,
            targets,
            labels=labels,
            target=target,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        )

    # ---------------------------------------------------------------------------------------------------- forward

    def train(self, mode: bool = True) -> DomainFeatures:
        """Stay in evaluation mode whatever ``mode`` is (BatchNorm statistics are part of the hashed state)."""
        return super().train(False)

    def _prepare(self, x: Tensor) -> Tensor:
        x = _check_images(x).to(self.model.head.weight.device)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` uint8 (or float in [0, 1]) → ``(N, num_features)`` float32 pooled features."""
        return self.model.features(self._prepare(x)).mean(dim=(2, 3))

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` images → ``(N, len(labels))`` label log-probabilities (class probabilities summed per
        label), the input of IS-domain."""
        log_p = torch.log_softmax(self.model.head(self.forward(x)), dim=1)
        masks: Tensor = self._label_masks  # type: ignore[assignment]
        return torch.stack([torch.logsumexp(log_p[:, m], dim=1) for m in masks], dim=1)

    @property
    def classifier(self) -> nn.Module:
        """An ``nn.Module`` view whose ``forward`` is :meth:`logits` (for ``classifier_logits_module=``)."""
        return _LogitsView(self)

    # -------------------------------------------------------------------------------------------------- identity

    def config(self) -> dict[str, Any]:
        """The JSON-able settings needed to rebuild the module (hashed together with the weights)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "classes": list(self.classes),
            "class_labels": list(self.class_labels),
            "image_size": self.image_size,
            "width": self.width,
            "target": self.target,
            "num_features": self.num_features,
        }

    @property
    def hash(self) -> str:
        """SHA-256 of the state_dict bytes and :meth:`config` (see :func:`module_hash`); recorded in reports."""
        return module_hash(self.model, self.config())

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``domain_features.safetensors`` (config in its metadata) and ``domain_features.json``.

        Returns:
            The directory.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        config = {**self.config(), "hash": self.hash, "training": self.training_info}
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(root / WEIGHTS_FILE), metadata={"fairsample": json.dumps(config, sort_keys=True)})
        (root / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DomainFeatures:
        """Read a folder written by :meth:`save` (safetensors + JSON; nothing is unpickled).

        Raises:
            DataError: a missing file, a foreign config, or weights whose hash differs from the recorded one.
        """
        root = Path(directory)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (root / name).is_file():
                raise DataError(_NO_SAVED.format(name=name, path=root))
        try:
            config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
            if config.get("format") != FORMAT:
                raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
            model = SmallCNN(len(config["classes"]), width=int(config["width"]))
            model.load_state_dict(load_file(str(root / WEIGHTS_FILE)))
            module = cls(
                model.eval(),
                config["classes"],
                class_labels=config["class_labels"],
                image_size=int(config["image_size"]),
                target=config["target"],
                training=config.get("training"),
            )
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise DataError(_BAD_SAVED.format(path=root / CONFIG_FILE, detail=exc)) from exc
        if module.hash != config.get("hash"):
            raise DataError(_HASH_MISMATCH.format(path=root, actual=module.hash, expected=config.get("hash")))
        return module


class _LogitsView(nn.Module):
    """``forward = DomainFeatures.logits`` (shares the weights)."""

    def __init__(self, parent: DomainFeatures) -> None:
        super().__init__()
        self.parent = parent

    def forward(self, x: Tensor) -> Tensor:
        return self.parent.logits(x)


# ----------------------------------------------------------------------------------------------------- Inception


def _has_torch_fidelity() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


class InceptionFeatures(nn.Module):
    """torchmetrics' ``NoTrainInceptionV3`` on a local weights file; ``forward`` gives pool features, ``logits`` the
    ImageNet logits (IS-ImageNet). Built by :func:`inception_features`."""

    def __init__(self, weights_path: Path, feature: int) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.weights_path = weights_path
        self.num_features = feature
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(feature)], feature_extractor_weights_path=str(weights_path)
        )
        self._logits_net: nn.Module | None = None
        self._hash: str | None = None

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` uint8 → ``(N, feature)`` (resized to 299 inside torch-fidelity)."""
        return self.net(x)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` uint8 → ``(N, 1008)`` unbiased ImageNet logits."""
        if self._logits_net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self._logits_net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["logits_unbiased"],
                feature_extractor_weights_path=str(self.weights_path),
            )
        return self._logits_net(x)

    @property
    def classifier(self) -> nn.Module:
        """An ``nn.Module`` whose ``forward`` is :meth:`logits`."""
        return _LogitsView(self)  # type: ignore[arg-type]

    @property
    def hash(self) -> str:
        """SHA-256 of the weights file plus the feature layer."""
        if self._hash is None:
            h = hashlib.sha256(f"inception-v3-compat|{self.num_features}\n".encode())
            with open(self.weights_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            self._hash = h.hexdigest()
        return self._hash


def inception_features(weights_path: str | os.PathLike[str], *, feature: int = 2048) -> InceptionFeatures:
    """Inception-v3 features (torchmetrics ``NoTrainInceptionV3``) from a local torch-fidelity weights file.

    Args:
        weights_path: local ``pt_inception-2015-12-05-6726825d.pth`` (torchmetrics'
            ``feature_extractor_weights_path``); it is never downloaded.
        feature: Inception layer, one of 64, 192, 768, 2048 (pool3).

    Raises:
        ConfigError: torch-fidelity is not installed, the file does not exist, or a bad ``feature``.

    Example:
        >>> inception_features("/nonexistent.pth")  # doctest: +SKIP
    """
    if feature not in (64, 192, 768, 2048):
        raise ConfigError(_BAD_INCEPTION_FEATURE.format(value=feature))
    if not _has_torch_fidelity():
        raise ConfigError(_NEEDS_TORCH_FIDELITY)
    path = Path(weights_path)
    if not path.is_file():
        raise ConfigError(_NO_WEIGHTS.format(path=path))
    return InceptionFeatures(path, feature)
