"""Where read values go: a batch buffer (cast or decode, gain, clip) or the in-RAM cache (copy).

``loader.reader.MelReader`` finds the stored values of each example (a memory map, a
decompressed chunk, rows read through h5py, the in-RAM cache) and hands them, with each
example's offset in them and its crop start, to a target's ``fill``:

- ``Target``: an output batch buffer, float32 or float16: each crop is gathered, cast (or
  decoded from uint8 codes with its example's offset and scale), multiplied by its gain and
  clipped in one compiled pass (``loader.read_kernels``), or with numpy where the CPU lacks the
  compiled half casts.
- ``CopyTarget``: whole stored examples copied as they are, the in-RAM cache's fill.
"""

from __future__ import annotations

import numpy as np

from loader import read_kernels
from loader.decode_pool import DecodePool
from melshards import codec


def stored_view(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """uint8 bytes as the kernels' source type: float16 as uint16 bits, float32, uint8 codes."""
    if dtype == np.float16:
        return data.view(np.uint16)
    return data.view(dtype)


_ONE = np.ones(1, dtype=np.float32)  # the kernel reads ``gain`` only when scaling


class Target:
    """An output batch buffer and how to write into it (cast or decode codes, gain, clip)."""

    def __init__(self, out: np.ndarray, gain: np.ndarray | None, clip: tuple[float, float] | None) -> None:
        if out.dtype not in (np.float32, np.float16) or not out.flags.c_contiguous:
            raise ValueError(f"read: out must be a C-contiguous float32 or float16 array, got {out.dtype}")
        b, n_mels, crop = out.shape[0], out.shape[1], out.shape[2]
        self.out = out
        view = out.reshape(b, n_mels, crop)
        self.view = view.view(np.uint16) if out.dtype == np.float16 else view
        self.scale = gain is not None
        self.gain = _ONE if gain is None else np.asarray(gain, dtype=np.float32)
        if self.scale and self.gain.shape != (b,):
            raise ValueError(f"read: gain {self.gain.shape} does not match {b} examples")
        lo, hi = (-np.inf, np.inf) if clip is None else clip
        self.lo, self.hi = np.float32(lo), np.float32(hi)
        self.native = read_kernels.half_conversion_ok()

    def fill(
        self,
        values: np.ndarray,
        offsets: np.ndarray,
        starts: np.ndarray,
        out_pos: np.ndarray,
        n_frames: int,
        quant: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Crops of the examples at ``offsets`` of ``values`` into rows ``out_pos``.

        quant : (offset, scale) per example, float32, when ``values`` are uint8 codes
        """
        if self.native:
            if quant is None:
                read_kernels.gather_crop(
                    values,
                    offsets,
                    starts,
                    n_frames,
                    self.view,
                    out_pos,
                    self.gain,
                    self.lo,
                    self.hi,
                    self.scale,
                )
            else:
                read_kernels.gather_codes(
                    values,
                    offsets,
                    starts,
                    n_frames,
                    quant[0],
                    quant[1],
                    self.view,
                    out_pos,
                    self.gain,
                    self.lo,
                    self.hi,
                    self.scale,
                )
            return
        # Portable path for CPUs where the compiled half casts are unavailable: copy the
        # stored values with the compiled loop, cast and scale with numpy.
        b, n_mels, crop = self.view.shape
        raw = np.empty((out_pos.shape[0], n_mels, crop), dtype=values.dtype)
        read_kernels.copy_crop(
            values, offsets, starts, n_frames, raw, np.arange(out_pos.shape[0], dtype=np.int64)
        )
        stored = raw.view(np.float16) if values.dtype == np.uint16 else raw
        block = stored.astype(np.float32) if quant is None else codec.dequantize(stored, *quant)
        if self.scale:
            block *= self.gain[out_pos][:, None, None]
            np.clip(block, self.lo, self.hi, out=block)
        self.out.reshape(b, n_mels, crop)[out_pos] = block.astype(self.out.dtype)


class CopyTarget:
    """Whole stored examples copied as they are (no cast, no decoding): the in-RAM cache's fill."""

    def __init__(self, out: np.ndarray) -> None:
        self.view = stored_view(out, out.dtype)

    def fill(self, values, offsets, starts, out_pos, n_frames, quant=None) -> None:
        read_kernels.copy_crop(values, offsets, starts, n_frames, self.view, out_pos)


def fill_side_by_side(pool: DecodePool, target: Target | CopyTarget, fills: list[tuple]) -> None:
    """``target.fill(*args)`` of every ``args`` in ``fills``, each cut into one interleaved part
    per thread of ``pool`` (examples ``k, k + threads, ...``), which runs them side by side. The
    parts write disjoint rows of the target, so the batch comes out the same as filled in one
    call. Interleaved rather than in halves: two threads reading neighbouring examples measured
    1.1 ms per float16 batch (32 x 128 x 938) against 1.2-1.4 ms for halves and 1.6 ms for one
    thread, on the 2-core machine of docs/performance.md.

    fills : ``(values, offsets, starts, out_pos, n_frames, quant)`` per source array
    """
    pieces = []
    for values, offsets, starts, out_pos, n_frames, quant in fills:
        n = min(pool.threads, offsets.shape[0])
        for k in range(n):
            # contiguous, as the compiled loops take them (a copy only for a strided part)
            part = [np.ascontiguousarray(a[k::n]) for a in (offsets, starts, out_pos)]
            q = None if quant is None else tuple(np.ascontiguousarray(a[k::n]) for a in quant)
            pieces.append((values, *part, n_frames, q))
    pool.run(lambda k: target.fill(*pieces[k]), len(pieces))
