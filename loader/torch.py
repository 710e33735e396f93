"""PyTorch: the batches of ``ShardSequence`` through ``torch.utils.data.DataLoader``.

``ShardDataset`` is a map-style dataset whose items are whole batches: item ``(epoch, i)``
is batch ``i`` of ``epoch``, the same arrays ``ShardSequence`` gives for the same settings
(``loader.batches.ShardBatches`` builds both), as tensors ``(x, y)`` or ``(x, y, known)``
(with ``targets="frames"``, ``y`` and ``known`` are (B, steps, n_classes): ``loader.frame_targets``).
Its ``loader()`` makes the ``DataLoader``: ``batch_size=None`` (items are batches already) and
an ``EpochSampler`` that yields ``(epoch, i)`` pairs, so worker processes, persistent or not,
build the batches of the epoch the main process is in::

    from loader.torch import ShardDataset

    data = ShardDataset("features/demo", split="train", batch_size=32, seed=0)
    batches = data.loader(num_workers=2, pin_memory=True, persistent_workers=True)
    for epoch in range(10):
        data.set_epoch(epoch)
        for x, y, known in batches:  # return_mask=True is the default here
            ...

Resuming: ``data.state_dict()`` is the position of what the loader has handed out (the epoch,
and the batches of it yielded so far, counted in the main process whatever ``num_workers``
prefetched); save it with the model after a step. ``data.load_state_dict(state)`` in a new
process makes the next pass yield the rest of that epoch, then ``set_epoch`` goes on as
before::

    data.load_state_dict(saved)
    for epoch in range(data.epoch, 10):
        data.set_epoch(epoch)           # keeps the loaded batch for the loaded epoch
        for x, y, known in batches:     # the remaining batches first, then whole epochs
            ...
            torch.save({"model": ..., "loader": data.state_dict()}, path)

Batches built on the accelerator: with ``on_device=True`` the items are the stored values of
each batch's crops with its augmentation draws and unmixed labels (a dict of tensors,
``loader.stored_batch``), a few times fewer bytes than float32 batches and no decoding on the
host; ``data.to_device(item, device)`` moves one to the device and finishes it there with
torch operations (``loader.device_torch``) into the ``(x, y, known)`` of the default path::

    data = ShardDataset("features/demo", split="train", batch_size=32, on_device=True)
    for item in data.loader(num_workers=2, pin_memory=True):
        x, y, known = data.to_device(item, "cuda")

Every batch is a pure function of ``(seed, epoch, index, rank)``, so the batches are the same
whatever ``num_workers``. Each worker opens its own handles and maps (nothing with a handle is
pickled). Ranks come from ``torch.distributed`` when it is initialised, unless given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from loader import device_torch
from loader.batches import ShardBatches
from loader.feature_set import FeatureSet
from loader.options import LoaderOptions
from loader.state import LoaderState
from loader.stored_batch import DeviceRecipe
from melshards.errors import ConfigError


def _distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (its rank and size hold)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class ShardDataset(Dataset):
    """Batches of a feature set as tensors, for a ``DataLoader`` (see the module docstring).

    path : feature set directory or URL (or an open ``loader.FeatureSet``)
    options : a ``LoaderOptions`` (default: every default, but ``return_mask=True``)
    rank, world_size : this process's block of the split; default: from ``torch.distributed``
        when it is initialised, else the options' (the whole split unless set there)
    return_mask : also yield ``known`` (default True, or the options' when given: the masked
        loss wants it)
    on_device : yield each batch as its stored values and draws (a dict of tensors) for
        ``to_device`` to finish on the accelerator, instead of finished ``(x, y, known)``
    **kwargs : every other ``ShardSequence`` option by name, over ``options`` (``split``,
        ``fold``, ``batch_size``, ``seed``, ``augment``, ``dtype``, ``in_memory``,
        ``crop_frames``, ``lookahead``: in the main process (``num_workers=0``), build batch
        ``i + 1`` in a background thread while the training step runs on batch ``i``, ...)
    """

    def __init__(
        self,
        path: str | os.PathLike | FeatureSet,
        options: LoaderOptions | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        return_mask: bool | None = None,
        on_device: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(on_device, bool):
            raise ConfigError(f"ShardDataset: on_device must be True or False, got {on_device!r}")
        if (rank is None) != (world_size is None):
            raise ConfigError("ShardDataset: give both rank and world_size, or neither")
        if rank is None and _distributed():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if rank is not None:
            kwargs |= {"rank": rank, "world_size": world_size}
        if return_mask is not None or options is None:
            kwargs["return_mask"] = True if return_mask is None else return_mask
        options = LoaderOptions.from_kwargs(options, who=type(self).__name__, **kwargs)
        self.batches = ShardBatches(path, options)
        self.batches.on_device = on_device
        self._recipe: DeviceRecipe | None = None
        self._sampler: EpochSampler | None = None
        self.next_batch = 0  # of the current epoch: the first one the loader has not handed out

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose batches the next pass yields (as ``DistributedSampler.set_epoch``);
        the loaded epoch keeps its loaded batch."""
        if epoch != self.batches.epoch:
            self.next_batch = 0
        self.batches.set_epoch(epoch)
        if self._sampler is not None:
            self._sampler.epoch = self.batches.epoch

    def state_dict(self) -> dict:
        """The position of what the loader has handed out, as a ``loader.state.LoaderState`` dict."""
        return self.batches.state_dict(next_batch=self.next_batch)

    def load_state_dict(self, state: LoaderState | dict) -> None:
        """Go to a saved position: the next pass yields the rest of its epoch (ConfigError for a
        state of another feature set, seed, rank, world size, batch size or epoch length)."""
        self.batches.load_state_dict(state)
        self.next_batch = self.batches.start_batch
        if self._sampler is not None:
            self._sampler.epoch = self.batches.epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (self.batches.epoch, key)
        if get_worker_info() is None:  # the main process: the look-ahead guesses i + 1
            arrays = self.batches.get(index, epoch=epoch)
        elif self.on_device:  # a worker gets every num_workers-th batch: no guessing
            arrays = self.batches.stored_batch(index, epoch=epoch)
        else:
            arrays = self.batches.batch(index, epoch=epoch)
        # from_numpy shares the batch's memory; the batch array is reused only once the tensor
        # is gone (loader.buffers), and a worker's tensors are copied into shared memory on send.
        if self.on_device:
            return {name: torch.from_numpy(a) for name, a in arrays.arrays().items()}
        return tuple(torch.from_numpy(a) for a in arrays)

    @property
    def on_device(self) -> bool:
        """Whether items are stored batches for ``to_device`` (``on_device=True``)."""
        return self.batches.on_device

    @property
    def recipe(self) -> DeviceRecipe:
        """What ``to_device`` needs besides each item (``loader.stored_batch.DeviceRecipe``)."""
        if self._recipe is None:
            self._recipe = self.batches.device_recipe
        return self._recipe

    def to_device(
        self, item: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, ...]:
        """An item of ``on_device=True`` moved to ``device`` (default: where it is; non-blocking)
        and finished there: ``(x, y, known)`` (or ``(x, y)``), as the default items are."""
        if not self.on_device:
            raise ConfigError(
                "ShardDataset.to_device: items are finished batches; make the dataset with on_device=True"
            )
        return device_torch.to_device(item, self.recipe, device)

    def sampler(self) -> EpochSampler:
        """The sampler of this dataset's ``DataLoader``: ``(epoch, i)`` for every batch ``i``."""
        if self._sampler is None:
            self._sampler = EpochSampler(self)
        return self._sampler

    def loader(self, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` over this dataset's batches; ``kwargs`` go to ``DataLoader``
        (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ...)."""
        for fixed in ("batch_size", "sampler", "batch_sampler", "shuffle"):
            if fixed in kwargs:
                raise ConfigError(
                    f"ShardDataset.loader: {fixed} is set by the dataset (items are whole batches, "
                    "shuffled by the dataset's seed); pass it to ShardDataset instead"
                )
        return ShardLoader(self, batch_size=None, sampler=self.sampler(), **kwargs)

    def close(self) -> None:
        """Stop the look-ahead thread and any worker threads or processes of the batch builder."""
        self.batches.close()


class ShardLoader(DataLoader):
    """A ``DataLoader`` that counts, in the main process, the batches it hands out of the
    dataset's epoch (``ShardDataset.next_batch``, what ``state_dict`` saves)."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            self.dataset.next_batch += 1
            yield batch


class EpochSampler(Sampler):
    """Yields ``(epoch, i)`` for every batch ``i`` of the dataset's current epoch, in order;
    after ``load_state_dict``, the first pass over the loaded epoch starts at its batch."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset
        self.epoch = dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _first(self) -> int:
        batches = self.dataset.batches
        return batches.start_batch if self.epoch == batches.epoch else 0

    def __len__(self) -> int:
        return len(self.dataset) - self._first()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # A generator: DataLoader makes (and drops) one iterator more than it uses with workers,
        # and only the one it draws from may consume a loaded position.
        epoch, first = self.epoch, self._first()
        self.dataset.batches.start_batch = 0  # the passes after this one are whole
        self.dataset.next_batch = first
        for i in range(first, len(self.dataset)):
            yield epoch, i
