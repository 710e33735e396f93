"""A batch's compressed chunks: checked, decompressed and filled side by side.

``MelReader`` maps the shards and hands over, for each chunk of a batch read from a compressed
set, its shard's map and its row; ``fill_compressed`` checks each chunk's Fletcher-32 the first
time this process reads it, decompresses it and fills its crop into the target, on the reader's
``DecodePool``. Two ways, with the same bytes:

- **uint8 codes with bitshuffle-lz4 into a batch buffer**: the batch is cut into one
  interleaved part per thread (chunks ``k, k + threads, ...``) and each part is one compiled
  call (``loader.bitshuffle_kernels.decode_fill``) that decodes and gathers chunk after chunk,
  so no Python runs per chunk once the chunks are checked. A uint8 + bitshuffle-lz4 batch of
  32 x 128 x 938 took 2.96 ms on one thread chunk by chunk, of which ~0.5 ms was Python around
  the compiled calls.
- **the others** (zstd, float16 and float32 bitshuffle-lz4, the in-RAM cache's copy, CPUs
  without the compiled half casts): one pool position per chunk, which decodes it with the
  reader's chunk decoder and fills it through the target.

Either way a failing chunk raises what reading the chunks one after another would have raised
first: a checksum that fails, or a chunk that does not decode, at the lowest position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from loader import bitshuffle_kernels, read_kernels
from loader.decode_pool import DecodePool
from loader.targets import CopyTarget, Target, stored_view
from melshards.errors import IntegrityError


class Chunks:
    """The compressed chunks of a batch, in the order read, and how to report a bad one.

    maps : per chunk, its shard's mapped file (``loader.reader._MappedShard``)
    layouts : per chunk, its shard's ``ShardLayout``
    rows : per chunk, its row in the shard
    decode : the reader's chunk decoder (``bitshuffle_kernels.chunk_decoder``)
    bad_checksum : ``(chunk position) -> IntegrityError`` naming the chunk's example
    """

    def __init__(
        self,
        maps: Sequence,
        layouts: Sequence,
        rows: Sequence[int],
        decode: Callable[[np.ndarray, str], np.ndarray],
        bad_checksum: Callable[[int], IntegrityError],
    ) -> None:
        self.maps, self.layouts, self.rows = maps, layouts, rows
        self.decode, self.bad_checksum = decode, bad_checksum

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, k: int) -> np.ndarray:
        """Chunk ``k``'s stored bytes, its 4-byte checksum last."""
        layout, row = self.layouts[k], self.rows[k]
        offset = int(layout.byte_offsets[row])
        return self.maps[k].raw[offset : offset + int(layout.chunk_sizes[row])]

    def checked(self, k: int) -> bool:
        """Whether chunk ``k`` passes its checksum (computed once per process and chunk)."""
        mapped, row = self.maps[k], self.rows[k]
        if not mapped.verified[row]:
            if not read_kernels.chunk_ok(self.raw(k)):
                return False
            mapped.verified[row] = True
        return True

    def values(self, k: int) -> np.ndarray:
        """Chunk ``k`` decompressed (checked first); IntegrityError for a bad chunk."""
        if not self.checked(k):
            raise self.bad_checksum(k)
        layout = self.layouts[k]
        return self.decode(self.raw(k)[:-4], f"{layout.path}: example {self.rows[k]}")


def fill_compressed(
    pool: DecodePool,
    chunks: Chunks,
    target: Target | CopyTarget,
    starts: np.ndarray,
    out_pos: np.ndarray,
    n_frames: int,
    dtype: np.dtype,
    quant: tuple[np.ndarray, np.ndarray] | None,
    *,
    fused: bool,
) -> None:
    """Fill ``target`` from every chunk of ``chunks`` (see the module docstring).

    starts, out_pos : per chunk, its crop's first frame and its row of the target
    quant : per chunk, offset and scale (uint8 codes), or None
    fused : the chunks are uint8 codes with bitshuffle-lz4 (``decode_fill`` may take them)
    """
    if fused and quant is not None and isinstance(target, Target) and target.native:
        _fill_fused(pool, chunks, target, starts, out_pos, n_frames, quant)
        return
    zero = np.zeros(1, dtype=np.int64)

    def one(k: int) -> None:
        values = stored_view(chunks.values(k), dtype)
        q = None if quant is None else (quant[0][k : k + 1], quant[1][k : k + 1])
        target.fill(values, zero, starts[k : k + 1], out_pos[k : k + 1], n_frames, q)

    pool.run(one, len(chunks))


def _fill_fused(
    pool: DecodePool,
    chunks: Chunks,
    target: Target,
    starts: np.ndarray,
    out_pos: np.ndarray,
    n_frames: int,
    quant: tuple[np.ndarray, np.ndarray],
) -> None:
    n = len(chunks)
    expected = target.view.shape[1] * n_frames
    addresses = np.array(
        [
            chunks.maps[k].raw.ctypes.data + int(chunks.layouts[k].byte_offsets[chunks.rows[k]])
            for k in range(n)
        ],
        dtype=np.int64,
    )
    sizes = np.array(
        [int(lay.chunk_sizes[row]) - 4 for lay, row in zip(chunks.layouts, chunks.rows, strict=True)],
        np.int64,
    )
    parts = min(pool.threads, n)
    failed = [n] * parts  # each part's first failing chunk position (n: none)

    def part(i: int) -> None:
        positions = np.arange(i, n, parts)
        stop = next((j for j, k in enumerate(positions.tolist()) if not chunks.checked(k)), len(positions))
        take = positions[:stop]
        buf, scratch = bitshuffle_kernels.thread_buffers(expected)
        bad = bitshuffle_kernels.decode_fill(
            addresses[take], sizes[take], expected, starts[take], n_frames, quant[0][take], quant[1][take],
            target.view, out_pos[take], target.gain, target.lo, target.hi, target.scale, buf, scratch,
        )  # fmt: skip
        if bad >= 0:
            failed[i] = int(take[bad])
        elif stop < len(positions):
            failed[i] = int(positions[stop])

    pool.run(part, parts)
    first = min(failed)
    if first < n:
        chunks.values(first)  # raises the chunk's own error, checksum or decoding
        raise IntegrityError(f"{chunks.layouts[first].path}: example {chunks.rows[first]} does not decode")
