"""Packing recordings into shards, so that shards stay put as data grows.

A recording never spans two shards (each recording is decoded once), and a shard holds whole
recordings until it has ``shard_size`` windows (``pack_in_order``). Given the shard each
recording was in (``previous``, read from the output directory by the run driver,
``precompute.resume.previous_assignment``), a recording keeps its shard, and only new
recordings are packed, into new shards numbered after the highest one; a shard left without
recordings is dropped (``assign_shards``). So a grown dataset rebuilds only the shards whose
recordings changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def pack_in_order(sizes: list[int], *, shard_size: int) -> list[range]:
    """Consecutive tasks per shard: whole recordings until a shard holds ``shard_size`` windows."""
    groups, first, count = [], 0, 0
    for k, size in enumerate(sizes):
        if count >= shard_size and k > first:
            groups.append(range(first, k))
            first, count = k, 0
        count += size
    if first < len(sizes):
        groups.append(range(first, len(sizes)))
    return groups


def assign_shards(
    ids: Sequence[str], sizes: list[int], *, shard_size: int, previous: Mapping[str, int] | None
) -> list[tuple[int, Sequence[int]]]:
    """(shard index, positions of its recordings) for every shard of a plan.

    ids, sizes : the recordings in planning order (sorted) and their windows
    previous : the shard index each recording was in, or None to pack every recording afresh

    With ``previous``, a recording keeps its shard; the others are packed by ``pack_in_order``, in
    order, into shards numbered after the highest index of ``previous``. A shard keeps its
    recordings in planning order, the order they were packed in.
    """
    if not previous:
        return list(enumerate(pack_in_order(sizes, shard_size=shard_size)))
    kept: dict[int, list[int]] = {}
    new: list[int] = []
    for k, recording_id in enumerate(ids):
        shard = previous.get(recording_id)
        if shard is None:
            new.append(k)
        else:
            kept.setdefault(shard, []).append(k)
    first = max(previous.values()) + 1
    packed = pack_in_order([sizes[k] for k in new], shard_size=shard_size)
    return [(i, kept[i]) for i in sorted(kept)] + [
        (first + j, [new[k] for k in group]) for j, group in enumerate(packed)
    ]
