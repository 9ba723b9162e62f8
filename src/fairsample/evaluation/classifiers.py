"""Small image classifiers trained from scratch on CPU (no pretrained backbone is ever downloaded).

Used to check what generated images depict (label and attribute accuracy of the embedded model) and, later, for the
downstream-fairness protocols of METHODS.md §3.7 / §5.6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fairsample.core.errors import ConfigError

_BAD_INPUT = "`images` must be (N, H, W, 3) uint8 or (N, 3, H, W) float in [0, 1], got shape {shape} dtype {dtype}."
_LEN_MISMATCH = "`images` has {n} rows but `targets` has {m}; give one target per image."
_ONE_CLASS = "`targets` has a single class ({value!r}); a classifier needs at least two."
_UNKNOWN_TARGETS = "`targets` has value(s) {values} that are not in `classes` {classes}; add them or drop those rows."
_BAD_EPOCH_INDICES = "`epoch_indices` must return {n} row indices (one per image), got shape {shape}."

#: ``(epoch, generator) → (N,) int64`` row indices to visit in that epoch, in order.
EpochIndices = Callable[[int, torch.Generator], Tensor]
#: ``(epoch, classifier, mean train loss)``, called after every epoch with the model in eval mode.
EpochEnd = Callable[[int, "TrainedClassifier", float], None]


class SmallCNN(nn.Module):
    """Three conv blocks (16/32/64 channels, BatchNorm, ReLU, 2×2 max-pool) + global average pool + linear head.

    Input ``(N, 3, H, W)`` float in [0, 1] (H, W ≥ 8); output ``(N, num_classes)`` logits. ~25 k parameters.

    Example:
        >>> SmallCNN(5)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def to_float_images(images: np.ndarray | Tensor) -> Tensor:
    """``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [0, 1] → ``(N, 3, H, W)`` float32 in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2).float() / 255.0
    if images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3:
        return images.float()
    raise ConfigError(_BAD_INPUT.format(shape=tuple(images.shape), dtype=images.dtype))


@dataclass
class TrainedClassifier:
    """A trained :class:`SmallCNN` and its class names (index k ↔ ``classes[k]``)."""

    model: SmallCNN
    classes: list[str]

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
        """``(N, K)`` class probabilities."""
        self.model.eval()
        x = to_float_images(images)
        out = [torch.softmax(self.model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def predict(self, images: np.ndarray | Tensor) -> list[str]:
        """Predicted class names."""
        return [self.classes[k] for k in self.predict_proba(images).argmax(1)]


def train_classifier(
    images: np.ndarray | Tensor,
    targets: Sequence[str],
    *,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    augment_shift: int = 2,
) -> TrainedClassifier:
    """Train a :class:`SmallCNN` (AdamW, cosine LR, random ±``augment_shift``-pixel shifts), deterministically.

    Args:
        images: ``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [0, 1].
        targets: ``N`` class names.
        epochs, batch_size, learning_rate: optimisation settings.
        seed: the only seed (initialisation, batch order, augmentation).
        augment_shift: maximum random translation in pixels (0 disables).

    Returns:
        :class:`TrainedClassifier`.

    Example:
        >>> x = np.zeros((8, 8, 8, 3), np.uint8); x[4:] = 255
        >>> clf = train_classifier(x, ["a"] * 4 + ["b"] * 4, epochs=30, batch_size=8)
        >>> clf.predict(x[[0, 7]])
        ['a', 'b']
    """
    return fit_classifier(
        images,
        targets,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        augment_shift=augment_shift,
    )


def fit_classifier(
    images: np.ndarray | Tensor,
    targets: Sequence[str],
    *,
    classes: Sequence[str] | None = None,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    augment_shift: int = 2,
    epoch_indices: EpochIndices | None = None,
    on_epoch_end: EpochEnd | None = None,
) -> TrainedClassifier:
    """:func:`train_classifier` with a fixed class list, a per-epoch row order and a per-epoch callback.

    With the defaults it is :func:`train_classifier` exactly (same random stream, same weights).

    Args:
        images: ``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [0, 1].
        targets: ``N`` class names.
        classes: the class list (index k ↔ ``classes[k]``); every target must be in it. ``None``: the sorted
            distinct targets, as :func:`train_classifier`.
        epochs, batch_size, learning_rate, seed, augment_shift: as :func:`train_classifier`.
        epoch_indices: ``(epoch, generator) → (N,) int64`` rows to visit in that epoch, in order (e.g. draws of a
            ``WeightedRandomSampler``); ``None``: a fresh permutation per epoch.
        on_epoch_end: ``(epoch, classifier, mean train loss)`` after every epoch, with the model in eval mode; the
            model is put back in train mode afterwards.

    Returns:
        :class:`TrainedClassifier` after the last epoch.

    Raises:
        ConfigError: bad images, length mismatch, fewer than two classes, a target outside ``classes``, or
            ``epoch_indices`` returning other than ``N`` rows.

    Example:
        >>> x = np.zeros((8, 8, 8, 3), np.uint8); x[4:] = 255
        >>> losses = []
        >>> clf = fit_classifier(x, ["a"] * 4 + ["b"] * 4, classes=["b", "a", "c"], epochs=2, batch_size=8,
        ...                      on_epoch_end=lambda epoch, c, loss: losses.append(epoch))
        >>> clf.classes, losses
        (['b', 'a', 'c'], [0, 1])
    """
    x = to_float_images(images)
    if len(x) != len(targets):
        raise ConfigError(_LEN_MISMATCH.format(n=len(x), m=len(targets)))
    if classes is None:
        classes = sorted(set(targets), key=lambda v: (len(v), v))
    classes = list(classes)
    if len(classes) < 2:
        raise ConfigError(_ONE_CLASS.format(value=classes[0] if classes else None))
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted(set(targets) - set(index))
    if unknown:
        raise ConfigError(_UNKNOWN_TARGETS.format(values=unknown, classes=classes))
    y = torch.tensor([index[t] for t in targets])
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        if epoch_indices is None:
            perm = torch.randperm(len(x), generator=g)
        else:
            perm = torch.as_tensor(epoch_indices(epoch, g), dtype=torch.int64)
            if perm.shape != (len(x),):
                raise ConfigError(_BAD_EPOCH_INDICES.format(n=len(x), shape=tuple(perm.shape)))
        total, count = 0.0, 0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb = x[idx]
            if augment_shift:
                dx, dy = (int(v) for v in torch.randint(-augment_shift, augment_shift + 1, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if on_epoch_end is not None:
            on_epoch_end(epoch, TrainedClassifier(model.eval(), classes), total / max(count, 1))
    return TrainedClassifier(model.eval(), classes)
