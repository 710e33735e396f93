"""The device path on PyTorch: a stored batch finished with torch operations on its device.

``build_batch(tensors, recipe)`` takes the tensors of a ``loader.stored_batch.StoredBatch``
(``StoredBatch.arrays()`` as tensors, by name: what ``ShardDataset(..., on_device=True)``
yields) wherever they are, on the GPU after ``.to(device, non_blocking=True)`` or on the CPU,
and returns ``(x, y)`` or ``(x, y, known)`` as the CPU path's ``ShardBatches.batch`` gives
them: ``x`` (B, n_mels, crop, 1) in the recipe's dtype. Every operation runs where the
tensors are; nothing is copied back to the host and nothing waits for the device.

The steps and their order are the CPU path's (``loader.stored_batch``): decode, gain and clip,
cast, mixup, masks, then the labels mixed. On the CPU device the result equals the CPU path bit
for bit; on a GPU within ``loader.stored_batch.FEATURE_TOLERANCE``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from loader.stored_batch import DeviceRecipe
from melshards.errors import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def build_batch(tensors: Mapping[str, torch.Tensor], recipe: DeviceRecipe) -> tuple[torch.Tensor, ...]:
    """``(x, y)`` or ``(x, y, known)`` of one stored batch (see the module docstring)."""
    x = build_features(tensors, recipe)
    y, known = mix_labels(tensors, recipe)
    return (x, y, known) if recipe.return_mask else (x, y)


def to_device(
    tensors: Mapping[str, torch.Tensor], recipe: DeviceRecipe, device: torch.device | str | None = None
) -> tuple[torch.Tensor, ...]:
    """Move a stored batch to ``device`` (``non_blocking``: overlaps when pinned) and build it there."""
    moved = {name: t.to(device, non_blocking=True) for name, t in tensors.items()}
    return build_batch(moved, recipe)


def build_features(tensors: Mapping[str, torch.Tensor], recipe: DeviceRecipe) -> torch.Tensor:
    """``x`` (B, n_mels, crop, 1) in ``recipe.dtype``: decoded, gain, mixup, masks."""
    if not isinstance(tensors, Mapping) or "stored" not in tensors:
        raise ConfigError(
            "device batch: expected the tensors of a stored batch (ShardDataset(..., on_device=True)), "
            f"got {type(tensors).__name__}"
        )
    stored = tensors["stored"]
    x = stored.to(torch.float32)
    if "offset" in tensors:  # uint8 codes: offset + codes * scale, as the CPU path's kernel
        x = tensors["offset"][:, None, None] + x * tensors["scale"][:, None, None]
    if "gain" in tensors:
        x = x * tensors["gain"][:, None, None]
        if recipe.clip is not None:
            x = x.clamp(recipe.clip[0], recipe.clip[1])
    x = x.to(_DTYPES[recipe.dtype])
    if recipe.mixup:
        x = _mixup(x, tensors["partner"], tensors["weight"])
    x = _masks(x, tensors["freq"], tensors["time"], _fill(recipe, x.device))
    return x.unsqueeze(-1)


def _mixup(x: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows with a partner become ``lam * x + (1 - lam) * x[partner]`` (float32, then cast)."""
    other = x[partner.clamp(min=0).long()]  # partners as they were before mixing
    lam = weight[:, None, None]
    mixed = (lam * x.to(torch.float32) + (1 - lam) * other.to(torch.float32)).to(x.dtype)
    return torch.where((partner >= 0)[:, None, None], mixed, x)


def _masks(x: torch.Tensor, freq: torch.Tensor, time: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Cells of every frequency and time band set to their mel bin's fill value."""
    if freq.shape[1] == 0 and time.shape[1] == 0:
        return x
    cells = _bands(freq, x.shape[1])[:, :, None] | _bands(time, x.shape[2])[:, None, :]
    return torch.where(cells, fill[None, :, None], x)


def _bands(bands: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: positions inside any ``(first, width)`` band of each example."""
    position = torch.arange(size, device=bands.device, dtype=bands.dtype)
    first, width = bands[:, :, 0:1], bands[:, :, 1:2]
    return ((position >= first) & (position < first + width)).any(dim=1)


@functools.lru_cache(maxsize=32)
def _fill(recipe: DeviceRecipe, device: torch.device) -> torch.Tensor:
    # Made once per device: a fresh host-to-device copy every batch would wait for the device.
    return torch.tensor(recipe.fill, dtype=_DTYPES[recipe.dtype]).to(device)


def mix_labels(
    tensors: Mapping[str, torch.Tensor], recipe: DeviceRecipe
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``y`` and ``known`` of the mixed examples (``Augment.mix_labels``), clip or frame targets."""
    y, known = tensors["y"], tensors.get("known")
    if not recipe.mixup:
        return y, known
    partner = tensors["partner"]
    rows = partner.clamp(min=0).long()
    mixed = (partner >= 0).reshape(-1, *(1,) * (y.dim() - 1))
    y_other = y[rows]
    k_other = None if known is None else known[rows]
    if recipe.mixup_labels == "max":
        y_new = torch.maximum(y, y_other)
        k_new = None if known is None else torch.maximum(y_new, known * k_other)
    else:
        lam = tensors["weight"].reshape(-1, *(1,) * (y.dim() - 1))
        y_new = lam * y + (1 - lam) * y_other
        k_new = None if known is None else known * k_other
    y = torch.where(mixed, y_new, y)
    return y, None if known is None else torch.where(mixed, k_new, known)
