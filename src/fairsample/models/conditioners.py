"""Conditioners: turn a cell into ``encoder_hidden_states`` for a ``UNet2DConditionModel`` (METHODS.md §2.3).

- :class:`TokenTableConditioner` — built-in pixel models: one learned token per sensitive-attribute value and per
  label, plus a null token per slot; ``encoder_hidden_states = [S slots, D]``; CFG dropout nulls every slot.
- :class:`ClipTextConditioner` — Stable-Diffusion-style models: a frozen local CLIP text encoder over a prompt
  template per cell; the unconditional branch is the empty prompt.

Both cache per-cell embeddings (computed once, no grad) for sampling; training calls :meth:`embed` with gradients.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey

_UNKNOWN_VALUE = "cell {cell} has {slot}={value!r}, which this model was not trained on; known {slot} values: {known}."
_MISSING_SLOT = "cell {cell} has no value for {slot!r}; this model's cells have {slots}."
_BAD_KIND = "conditioner kind {kind!r} in {path} is not one of ['clip_text', 'token_table']; the bundle is damaged."
_BAD_P = "`{name}` must be in [0, 1], got {value!r}."

CONDITIONER_JSON = "conditioner.json"
TOKEN_TABLE_FILE = "token_table.safetensors"


@runtime_checkable
class Conditioner(Protocol):
    """What samplers, the training loop and the bundle need from a conditioner."""

    kind: str
    seq_len: int  # S
    dim: int  # D (= the U-Net's cross_attention_dim)

    def embed(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, S, D]`` embeddings with gradients (``None`` = unconditional)."""
        ...

    def cached(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, S, D]`` embeddings from the per-cell cache (no gradients)."""
        ...

    def save(self, bundle_dir: Path) -> None:
        """Write the conditioner's files into a bundle folder."""
        ...


class _EmbeddingCache:
    """Per-cell embedding cache keyed by (cell, device, dtype); cleared whenever weights may change."""

    def __init__(self) -> None:
        self._store: dict[tuple[Any, str, torch.dtype], Tensor] = {}

    def get(self, key: tuple[Any, str, torch.dtype]) -> Tensor | None:
        return self._store.get(key)

    def put(self, key: tuple[Any, str, torch.dtype], value: Tensor) -> None:
        self._store[key] = value

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


class TokenTableConditioner(nn.Module):
    """Learned token table: one slot per sensitive attribute plus a label slot, each with a null token.

    Token layout: slot ``k`` owns a contiguous block ``[offset_k, offset_k + len(values_k) + 1)``; the block's last
    index is the slot's null token. ``encoder_hidden_states`` for a cell is the ``[S, D]`` stack of its tokens plus a
    learned per-slot position vector (so equal values in different slots stay distinguishable).

    Args:
        attributes: ordered ``{attribute: [values...]}`` (the sensitive-attribute slots).
        labels: label values (the last slot).
        dim: embedding width D; must equal the U-Net's ``cross_attention_dim``.
        label_name: the label column name (used in :class:`CellKey` text).

    Example:
        >>> cond = TokenTableConditioner({"tone": ["dark", "light"]}, ["0", "1"], dim=8)
        >>> cell = CellKey((("tone", "dark"),), "1")
        >>> cond.embed([cell, None]).shape
        torch.Size([2, 2, 8])
    """

    kind = "token_table"

    def __init__(
        self, attributes: Mapping[str, Sequence[str]], labels: Sequence[str], *, dim: int, label_name: str = "label"
    ) -> None:
        super().__init__()
        self.attributes: dict[str, list[str]] = {k: [str(v) for v in vals] for k, vals in attributes.items()}
        self.labels: list[str] = [str(v) for v in labels]
        self.label_name = label_name
        self.dim = int(dim)
        self._slots: list[tuple[str, list[str]]] = list(self.attributes.items()) + [(label_name, self.labels)]
        for slot, vals in self._slots:  # two equal values would share one token: their cells would be one cell
            if len(set(vals)) != len(vals) or not vals:
                dup = sorted({v for v in vals if vals.count(v) > 1})
                raise ConfigError(
                    f"token table slot {slot!r} has {'repeated values ' + str(dup) if vals else 'no values'}; "
                    "every value needs its own token: give each value once."
                )
        self._offsets: list[int] = []
        total = 0
        for _, vals in self._slots:
            self._offsets.append(total)
            total += len(vals) + 1
        self.seq_len = len(self._slots)
        self.tokens = nn.Embedding(total, self.dim)
        self.position = nn.Parameter(torch.zeros(self.seq_len, self.dim))
        nn.init.normal_(self.tokens.weight, std=1.0)
        self._cache = _EmbeddingCache()

    # -- indices ---------------------------------------------------------------------------------------------------
    def null_indices(self, batch: int) -> Tensor:
        """``[B, S]`` long: the null token of every slot."""
        row = torch.tensor(
            [off + len(vals) for off, (_, vals) in zip(self._offsets, self._slots, strict=True)], dtype=torch.long
        )
        return row.expand(batch, -1).clone()

    def indices(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, S]`` long token indices; ``None`` → all null. Unknown values raise :class:`ConfigError`."""
        out = self.null_indices(len(cells))
        for b, cell in enumerate(cells):
            if cell is None:
                continue
            values = dict(cell.groups)
            values[self.label_name] = cell.label
            for k, ((slot, vals), off) in enumerate(zip(self._slots, self._offsets, strict=False)):
                if slot not in values:
                    raise ConfigError(_MISSING_SLOT.format(cell=cell, slot=slot, slots=[s for s, _ in self._slots]))
                try:
                    out[b, k] = off + vals.index(values[slot])
                except ValueError:
                    raise ConfigError(
                        _UNKNOWN_VALUE.format(cell=cell, slot=slot, value=values[slot], known=vals)
                    ) from None
        return out

    def drop(
        self, idx: Tensor, *, p_uncond: float, p_slot: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """CFG dropout: each row becomes all-null with probability ``p_uncond``; then each remaining slot becomes null
        with probability ``p_slot`` (attribute-only guidance, off by default).

        Args:
            idx: ``[B, S]`` long from :meth:`indices`.
            p_uncond: probability in [0, 1].
            p_slot: per-slot probability in [0, 1].
            generator: CPU generator for the coin flips.

        Returns:
            ``[B, S]`` long, a new tensor.
        """
        for name, p in (("p_uncond", p_uncond), ("p_slot", p_slot)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(_BAD_P.format(name=name, value=p))
        null = self.null_indices(idx.shape[0]).to(idx.device)
        out = idx.clone()
        if p_slot > 0:
            slot_mask = torch.rand(idx.shape, generator=generator) < p_slot
            out = torch.where(slot_mask.to(idx.device), null, out)
        row_mask = (torch.rand(idx.shape[0], generator=generator) < p_uncond)[:, None]
        return torch.where(row_mask.to(idx.device), null, out)

    # -- embeddings ------------------------------------------------------------------------------------------------
    def forward(self, idx: Tensor) -> Tensor:
        """``[B, S]`` long → ``[B, S, D]`` float."""
        return self.tokens(idx) + self.position

    def embed(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, S, D]`` embeddings with gradients (``None`` = unconditional)."""
        return self(self.indices(cells).to(self.tokens.weight.device))

    def cached(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, S, D]`` from the per-cell cache: each distinct cell is embedded once (no gradients)."""
        dev, dt = self.tokens.weight.device, self.tokens.weight.dtype
        rows = []
        for cell in cells:
            key = (cell, str(dev), dt)
            hit = self._cache.get(key)
            if hit is None:
                with torch.no_grad():
                    hit = self(self.indices([cell]).to(dev))[0].detach()
                self._cache.put(key, hit)
            rows.append(hit)
        return torch.stack(rows)

    def clear_cache(self) -> None:
        """Forget cached embeddings (called automatically on ``train()``, ``load_state_dict`` and ``to``)."""
        self._cache.clear()

    def train(self, mode: bool = True) -> TokenTableConditioner:
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TokenTableConditioner:
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- persistence -----------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-safe constructor arguments."""
        return {
            "kind": self.kind,
            "attributes": self.attributes,
            "labels": self.labels,
            "dim": self.dim,
            "label_name": self.label_name,
        }

    def save(self, bundle_dir: Path) -> None:
        """Write ``conditioner/token_table.safetensors`` and ``conditioner/conditioner.json``."""
        d = Path(bundle_dir) / "conditioner"
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / TOKEN_TABLE_FILE))
        (d / CONDITIONER_JSON).write_text(json.dumps(self.config(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TokenTableConditioner:
        """Build an untrained conditioner from :meth:`config` output."""
        label_name = config.get("label_name", "label")
        return cls(config["attributes"], config["labels"], dim=config["dim"], label_name=label_name)

    @classmethod
    def load(cls, bundle_dir: Path) -> TokenTableConditioner:
        """Read a conditioner written by :meth:`save` (safetensors + JSON only)."""
        d = Path(bundle_dir) / "conditioner"
        cfg = json.loads((d / CONDITIONER_JSON).read_text(encoding="utf-8"))
        cond = cls.from_config(cfg)
        cond.load_state_dict(load_file(str(d / TOKEN_TABLE_FILE)))
        return cond


class ClipTextConditioner(nn.Module):
    """Frozen CLIP text encoder over a prompt template per cell (Stable-Diffusion-style latent bundles).

    The prompt for a cell is ``template.format(**values)`` where ``values`` maps every attribute and the label name to
    its display text (``value_text[attr][value]`` when given, else the raw value). ``None`` gives the empty prompt,
    the unconditional branch of diffusers pipelines. Needs the ``[sd]`` extra (transformers).

    Args:
        text_encoder: a ``transformers.CLIPTextModel`` (frozen here).
        tokenizer: the matching ``CLIPTokenizer``.
        template: e.g. ``"Dermoscopic image of a {tone} skin patient with {label}"``.
        attributes: ordered ``{attribute: [values...]}``.
        labels: label values.
        label_name: the label column name (a template field).
        value_text: optional display text per attribute value, e.g. ``{"tone": {"dark": "dark-skinned"}}``.

    Example (with local components; nothing is downloaded):
        >>> cond = ClipTextConditioner(enc, tok, template="{tone} {label}", attributes={"tone": ["dark"]},
        ...                            labels=["1"])  # doctest: +SKIP
        >>> cond.prompt(CellKey((("tone", "dark"),), "1"))  # doctest: +SKIP
        'dark 1'
    """

    kind = "clip_text"

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer: Any,
        *,
        template: str,
        attributes: Mapping[str, Sequence[str]],
        labels: Sequence[str],
        label_name: str = "label",
        value_text: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.template = template
        self.attributes = {k: [str(v) for v in vals] for k, vals in attributes.items()}
        self.labels = [str(v) for v in labels]
        self.label_name = label_name
        self.value_text = {k: dict(v) for k, v in (value_text or {}).items()}
        self.seq_len = int(tokenizer.model_max_length)
        self.dim = int(text_encoder.config.hidden_size)
        self._cache = _EmbeddingCache()
        check_template(template, tokenizer, self.attributes, self.labels, label_name, self.value_text)

    def prompt(self, cell: CellKey | None) -> str:
        """The prompt text for a cell (``""`` for ``None``)."""
        if cell is None:
            return ""
        values = dict(cell.groups)
        values[self.label_name] = cell.label
        for slot, known in list(self.attributes.items()) + [(self.label_name, self.labels)]:
            if slot not in values:
                raise ConfigError(_MISSING_SLOT.format(cell=cell, slot=slot, slots=list(self.attributes)))
            if values[slot] not in known:
                raise ConfigError(_UNKNOWN_VALUE.format(cell=cell, slot=slot, value=values[slot], known=known))
        shown = {k: self.value_text.get(k, {}).get(v, v) for k, v in values.items()}
        return self.template.format(**shown)

    def embed(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, 77, D]`` last hidden states of the text encoder (frozen, so no gradients either way)."""
        prompts = [self.prompt(c) for c in cells]
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.seq_len, truncation=True, return_tensors="pt"
        )
        dev = next(self.text_encoder.parameters()).device
        with torch.no_grad():
            return self.text_encoder(tok.input_ids.to(dev))[0]

    def cached(self, cells: Sequence[CellKey | None]) -> Tensor:
        """``[B, 77, D]`` from the per-cell cache (each distinct prompt is encoded once)."""
        p = next(self.text_encoder.parameters())
        missing = [c for c in dict.fromkeys(cells) if self._cache.get((c, str(p.device), p.dtype)) is None]
        if missing:
            for c, e in zip(missing, self.embed(missing), strict=False):
                self._cache.put((c, str(p.device), p.dtype), e.detach())
        return torch.stack([self._cache.get((c, str(p.device), p.dtype)) for c in cells])  # type: ignore[misc]

    def clear_cache(self) -> None:
        """Forget cached embeddings."""
        self._cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> ClipTextConditioner:
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def config(self) -> dict[str, Any]:
        """JSON-safe settings (the encoder and tokenizer are saved in their own subfolders)."""
        return {
            "kind": self.kind,
            "template": self.template,
            "attributes": self.attributes,
            "labels": self.labels,
            "label_name": self.label_name,
            "value_text": self.value_text,
        }

    def save(self, bundle_dir: Path) -> None:
        """Write `text_encoder/`, `tokenizer/` (diffusers layout, safetensors) and `conditioner/conditioner.json`."""
        root = Path(bundle_dir)
        self.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(root / "tokenizer")
        (root / "conditioner").mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config(), indent=2) + "\n"
        (root / "conditioner" / CONDITIONER_JSON).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, bundle_dir: Path) -> ClipTextConditioner:
        """Read a conditioner written by :meth:`save` from local files only (never downloads)."""
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("The CLIP text conditioner needs transformers: pip install 'fairsample[sd]'") from exc
        root = Path(bundle_dir)
        cfg = json.loads((root / "conditioner" / CONDITIONER_JSON).read_text(encoding="utf-8"))
        enc = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True, use_safetensors=True)
        tok = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        kw = {k: v for k, v in cfg.items() if k != "kind"}
        return cls(enc, tok, **kw)


def template_fields(template: str) -> list[str]:
    """Named fields of a ``str.format`` template, in order of appearance.

    Example:
        >>> template_fields("{tone} skin, {label}")
        ['tone', 'label']
    """
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            f"`template` {template!r} is not a format string ({exc}); write fields as {{name}}."
        ) from None
    return list(dict.fromkeys(names))


def default_template(attributes: Sequence[str], label_name: str) -> str:
    """The prompt template used when none is given: every cell field named with its column name.

    Example:
        >>> default_template(["tone", "sex"], "finding")
        'tone {tone}, sex {sex}, finding {finding}'
    """
    return ", ".join(f"{name} {{{name}}}" for name in [*attributes, label_name])


def check_template(
    template: str,
    tokenizer: Any,
    attributes: Mapping[str, Sequence[str]],
    labels: Sequence[str],
    label_name: str,
    value_text: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Refuse a prompt template that could make two cells look alike to the model (METHODS.md §2.3).

    The template must name every attribute and the label (and nothing else); every cell's prompt must fit the
    tokenizer's ``model_max_length`` (start and end tokens included) without truncation; and no two cells may map to
    the same token ids (a tokenizer that lower-cases or maps unknown characters to one token can merge values).

    Raises:
        ConfigError: one line naming the missing/unknown fields, or the cell, its token count and the limit, or the
            two colliding cells.
    """
    import itertools

    fields = [*attributes, label_name]
    used = template_fields(template)
    if any(not f.isidentifier() for f in used):
        raise ConfigError(f"`template` {template!r} has a positional or indexed field; use named fields {fields}.")
    unknown = [f for f in used if f not in fields]
    missing = [f for f in fields if f not in used]
    if unknown or missing:
        what = f"uses unknown field(s) {unknown}" if unknown else f"does not name the cell field(s) {missing}"
        raise ConfigError(
            f"`template` {template!r} {what}; a template must name every cell field exactly: "
            f"{', '.join('{' + f + '}' for f in fields)} (e.g. {default_template(list(attributes), label_name)!r})."
        )
    shown = {k: dict(v) for k, v in (value_text or {}).items()}
    limit = int(tokenizer.model_max_length)
    seen: dict[tuple[int, ...], str] = {}
    slots = [[(a, v) for v in vals] for a, vals in attributes.items()] + [[(label_name, lab) for lab in labels]]
    for combo in itertools.product(*slots):
        values = {k: shown.get(k, {}).get(v, v) for k, v in combo}
        cell = ",".join(f"{k}={v}" for k, v in combo)
        ids = tuple(int(i) for i in tokenizer(template.format(**values), truncation=False, verbose=False).input_ids)
        if len(ids) > limit:
            raise ConfigError(
                f"`template` {template!r} gives cell {cell} {len(ids)} tokens, over the tokenizer's limit of {limit} "
                f"(the end would be cut, so cells could become identical); shorten the template or the values."
            )
        if ids in seen:
            raise ConfigError(
                f"`template` {template!r} maps cells {seen[ids]} and {cell} to the same {len(ids)} token ids "
                f"(limit {limit}); the model could not tell them apart: change the template or the value texts."
            )
        seen[ids] = cell


def load_conditioner(bundle_dir: Path) -> TokenTableConditioner | ClipTextConditioner:
    """Load whichever conditioner a bundle holds, by the ``kind`` in ``conditioner/conditioner.json``."""
    path = Path(bundle_dir) / "conditioner" / CONDITIONER_JSON
    kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    if kind == TokenTableConditioner.kind:
        return TokenTableConditioner.load(bundle_dir)
    if kind == ClipTextConditioner.kind:
        return ClipTextConditioner.load(bundle_dir)
    raise ConfigError(_BAD_KIND.format(kind=kind, path=path))
