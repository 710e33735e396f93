"""Compiled loops of the reader: gather + crop + cast in one pass, HDF5's Fletcher-32, masks.

Every kernel works on a flat source array (``uint16`` holding float16 bit patterns,
``float32``, or ``uint8`` codes with a per-example offset and scale) and a start offset per
example, in elements. The source is either a read-only
memory map of a shard file (an example's chunk sits at a fixed byte offset) or an in-RAM
array; the same code serves both.

Half <-> single conversion uses the CPU's own instructions (LLVM ``fpext``/``fptrunc`` on
``half``; F16C on x86, native on ARM): exact, vectorized, and immune to flush-to-zero modes
that TensorFlow sets in its threads. ``half_conversion_ok`` checks once per process that the
compiled conversion agrees bit for bit with numpy; where it does not (an exotic CPU), the
reader falls back to ``copy_crop`` + numpy casts.

Cold start: numba compiles each kernel once and caches the machine code on disk, but a fresh
process still spends a few hundred milliseconds in numba's own start-up the first time it
calls any compiled function. ``start_warming`` (called when ``loader`` is imported) does that in
a background thread, overlapping it with whatever the program does next (importing Keras,
building the model), so that the first batch costs what any batch costs.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# -- scalar conversions ----------------------------------------------------------------------


@intrinsic
def _half_bits_to_single(typingctx, bits):
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _single_to_half_bits(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


def _to_single(value):
    """float32 value of a source element (float16 bits or float32)."""


@overload(_to_single, inline="always")
def _to_single_impl(value):
    if value == types.uint16:
        return lambda value: _half_bits_to_single(value)
    if value == types.float32:
        return lambda value: value
    return None


def _from_single(value, out):
    """A float32 ``value`` in the element type of ``out`` (float16 bits or float32)."""


@overload(_from_single, inline="always")
def _from_single_impl(value, out):
    if out.dtype == types.uint16:
        return lambda value, out: _single_to_half_bits(value)
    if out.dtype == types.float32:
        return lambda value, out: value
    return None


def _convert(value, out):
    """A source element in the element type of ``out``, exactly."""


@overload(_convert, inline="always")
def _convert_impl(value, out):
    if value == out.dtype:
        return lambda value, out: value
    if value == types.uint16 and out.dtype == types.float32:
        return lambda value, out: _half_bits_to_single(value)
    if value == types.float32 and out.dtype == types.uint16:
        return lambda value, out: _single_to_half_bits(value)
    return None


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to start loading the cache line of ``array[index]`` (a hint: no fault, no
    effect on results)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [address, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


# Rows of the source asked for ahead of the one being converted. A crop's row is a short run
# (938 values) of a longer one, so the hardware prefetcher starts over on every row; asking two
# rows ahead took a float16 batch of 32 x 128 x 938 from 1.10 to 1.00 ms on two threads.
AHEAD_ROWS = 2


@njit(inline="always", nogil=True, boundscheck=False)
def _prefetch_row(src, offsets, starts, n_frames, n_mels, crop, j, m):  # pragma: no cover
    """Prefetch row ``m`` of example ``j``'s crop (rows past the last run on into the next example)."""
    if m >= n_mels:
        j += 1
        m -= n_mels
    if j < offsets.shape[0]:
        first = offsets[j] + m * n_frames + starts[j]
        for q in range(first, first + crop, 64 // src.itemsize):
            _prefetch(src, q)
        _prefetch(src, first + crop - 1)


# -- gather ----------------------------------------------------------------------------------


@njit(cache=True, nogil=True, boundscheck=False)
def gather_crop(src, offsets, starts, n_frames, out, out_pos, gain, lo, hi, scale):  # pragma: no cover
    """Crop examples out of ``src`` into ``out``, casting, optionally with a gain.

    src : np.ndarray [shape=(N,)], uint16 (float16 bits) or float32
    offsets : np.ndarray [shape=(k,)], int64 -- element offset of each example in ``src``;
        an example is ``(n_mels, n_frames)`` C-ordered from there
    starts : np.ndarray [shape=(k,)], int64 -- first stored frame of each crop
    out : np.ndarray [shape=(B, n_mels, crop)], float32 or uint16 (float16 bits)
    out_pos : np.ndarray [shape=(k,)], int64 -- row of ``out`` each example goes to
    gain : np.ndarray [shape=(B,)], float32 -- per row of ``out``, used when ``scale``:
        ``min(max(v * g, lo), hi)``
    """
    n_mels = out.shape[1]
    crop = out.shape[2]
    for j in range(offsets.shape[0]):
        b = out_pos[j]
        for m in range(n_mels):
            _prefetch_row(src, offsets, starts, n_frames, n_mels, crop, j, m + AHEAD_ROWS)
            first = offsets[j] + m * n_frames + starts[j]
            seg = src[first : first + crop]
            row = out[b, m]
            if scale:
                g = gain[b]
                for t in range(crop):
                    v = _to_single(seg[t]) * g
                    row[t] = _from_single(min(max(v, lo), hi), out)
            else:
                for t in range(crop):
                    row[t] = _convert(seg[t], out)


@njit(cache=True, nogil=True, boundscheck=False)
def copy_crop(src, offsets, starts, n_frames, out, out_pos):  # pragma: no cover
    """``gather_crop`` without any cast: ``out`` has the element type of ``src``."""
    n_mels = out.shape[1]
    crop = out.shape[2]
    for j in range(offsets.shape[0]):
        b = out_pos[j]
        for m in range(n_mels):
            first = offsets[j] + m * n_frames + starts[j]
            seg = src[first : first + crop]
            row = out[b, m]
            for t in range(crop):
                row[t] = seg[t]


@njit(cache=True, nogil=True, boundscheck=False)
def gather_codes(
    src, offsets, starts, n_frames, base, step, out, out_pos, gain, lo, hi, scale
):  # pragma: no cover
    """``gather_crop`` for uint8 codes: each value is ``base[j] + code * step[j]`` (float32).

    src : np.ndarray [shape=(N,)], uint8 -- codes, an example ``(n_mels, n_frames)`` C-ordered
        from ``offsets[j]``
    base, step : np.ndarray [shape=(k,)], float32 -- each example's offset and scale
    The other arguments are ``gather_crop``'s.
    """
    n_mels = out.shape[1]
    crop = out.shape[2]
    for j in range(offsets.shape[0]):
        b = out_pos[j]
        v0 = base[j]
        dv = step[j]
        g = gain[b] if scale else np.float32(1)
        for m in range(n_mels):
            _prefetch_row(src, offsets, starts, n_frames, n_mels, crop, j, m + AHEAD_ROWS)
            first = offsets[j] + m * n_frames + starts[j]
            seg = src[first : first + crop]
            row = out[b, m]
            if scale:
                for t in range(crop):
                    v = (v0 + np.float32(seg[t]) * dv) * g
                    row[t] = _from_single(min(max(v, lo), hi), out)
            else:
                for t in range(crop):
                    row[t] = _from_single(v0 + np.float32(seg[t]) * dv, out)


# -- Fletcher-32 -----------------------------------------------------------------------------


@njit(cache=True, nogil=True, boundscheck=False)
def fletcher32(words, start, n_words, tail=-1):  # pragma: no cover
    """HDF5's Fletcher-32 of ``n_words`` 16-bit words from ``words[start]`` (then ``tail``).

    words : np.ndarray [shape=(N,)], uint16 -- the bytes of the file as native
        (little-endian) 16-bit integers; HDF5 reads each byte pair big-endian.

    HDF5 sums the words with end-around-carry folds, so each sum ends in ``[0, 0xffff]``:
    0 only when every word is 0, otherwise the residue mod 65535 with 0 written as 0xffff.
    The same residues are computed here in blocks of 256 words with 32-bit lanes (word ``i``
    of a block of ``size`` adds ``w`` to sum1 and ``(size - i) * w`` to the block's sum2, at most
    256 * 257 / 2 * 65535 < 2**32), which vectorizes. Returns ``(sum2 << 16) | sum1``, which
    HDF5 stores little-endian after the chunk's data. A chunk of an odd number of bytes (a
    compressed one) ends in one byte, ``tail`` (-1: none), which HDF5 adds as the high byte of
    a last word.
    """
    s1 = np.uint64(0)
    s2 = np.uint64(0)
    nonzero = False
    mod = np.uint64(65535)
    k0 = 0
    while k0 < n_words:
        size = min(256, n_words - k0)
        seg = words[start + k0 : start + k0 + size]
        a = np.uint32(0)
        c = np.uint32(0)
        for i in range(size):
            v = np.uint32(seg[i])
            w = ((v & np.uint32(0xFF)) << np.uint32(8)) | (v >> np.uint32(8))
            a += w
            c += np.uint32(size - i) * w
        k0 += size
        if a != 0:
            nonzero = True
        # every word after this block adds the block's whole sum to sum2 once more
        rest = np.uint64(n_words - k0) % mod
        s2 = (s2 + np.uint64(c) % mod + rest * (np.uint64(a) % mod)) % mod
        s1 = (s1 + np.uint64(a)) % mod
    if tail >= 0:
        w = np.uint64(tail) << np.uint64(8)
        nonzero = nonzero or w != 0
        s1 = (s1 + w) % mod
        s2 = (s2 + s1) % mod
    if not nonzero:
        return np.uint32(0)
    if s1 == 0:
        s1 = mod
    if s2 == 0:
        s2 = mod
    return np.uint32((s2 << np.uint64(16)) | s1)


def chunk_ok(raw):
    """Whether a stored chunk (its bytes, the 4-byte fletcher32 last) passes its checksum.

    raw : np.ndarray [shape=(k,)], uint8, any alignment and length > 4
    """
    data = raw[:-4]
    if raw.ctypes.data % 2:  # a compressed chunk may start at an odd byte: align a copy
        data = data.copy()
    n_words = data.shape[0] // 2
    tail = int(data[-1]) if data.shape[0] % 2 else -1
    stored = int.from_bytes(raw[-4:].tobytes(), "little")
    return int(fletcher32(data[: 2 * n_words].view(np.uint16), 0, n_words, tail)) == stored


@njit(cache=True, nogil=True, boundscheck=False)
def first_bad_chunk(words, word_offsets, n_words):  # pragma: no cover
    """Index into ``word_offsets`` of the first chunk whose checksum fails, or -1.

    Each chunk is ``n_words`` words of data followed by its Fletcher-32 as two
    little-endian words (low half first).
    """
    for j in range(word_offsets.shape[0]):
        p = word_offsets[j]
        q = p + n_words
        stored = np.uint32(words[q]) | (np.uint32(words[q + 1]) << np.uint32(16))
        if fletcher32(words, p, n_words) != stored:
            return j
    return -1


# -- augmentation ------------------------------------------------------------------------------


@njit(cache=True, nogil=True, boundscheck=False)
def mask_bands(cells, freq, time, fill):  # pragma: no cover
    """Set every cell of the frequency and time bands to its mel bin's fill value, in place.

    cells : (B, n_mels, frames) unsigned ints holding the batch's bit patterns
    freq, time : (B, k, 2) int64 -- (first, width) of each band of each example
    fill : (n_mels,) the fill value's bit pattern per mel bin, same dtype as ``cells``
    """
    n_mels, frames = cells.shape[1], cells.shape[2]
    for b in range(cells.shape[0]):
        for k in range(freq.shape[1]):
            lo = freq[b, k, 0]
            hi = min(lo + freq[b, k, 1], n_mels)
            for m in range(lo, hi):
                value = fill[m]
                for t in range(frames):
                    cells[b, m, t] = value
        for k in range(time.shape[1]):
            lo = time[b, k, 0]
            hi = min(lo + time[b, k, 1], frames)
            for m in range(n_mels):
                value = fill[m]
                for t in range(lo, hi):
                    cells[b, m, t] = value


# -- self-check ------------------------------------------------------------------------------

_HALF_OK: bool | None = None


def half_conversion_ok() -> bool:
    """Whether the compiled half <-> single casts agree bit for bit with numpy, here.

    Checked once per process over every float16 bit pattern (NaNs compared as NaNs) and a
    spread of float32 values; False if compilation fails on this CPU.
    """
    global _HALF_OK
    if _HALF_OK is None:
        try:
            _HALF_OK = _check_half_conversion()
        except Exception:  # any compile or link failure means: use the numpy path
            _HALF_OK = False
    return _HALF_OK


def _check_half_conversion() -> bool:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    n = bits.size
    ones = np.ones(1, np.float32)
    zero = np.zeros(1, np.int64)
    single = np.empty((1, 1, n), np.float32)
    gather_crop(bits, zero, zero, n, single, zero, ones, np.float32(0), np.float32(0), False)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    if not (np.array_equal(np.isnan(single[0, 0]), nan) and np.array_equal(single[0, 0][~nan], want[~nan])):
        return False
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            want[~nan],
            rng.standard_normal(4096).astype(np.float32) * np.float32(1e-5),
            rng.random(4096, dtype=np.float32),
            (rng.random(4096, dtype=np.float32) - np.float32(0.5)) * np.float32(1.4e5),
        ]
    )
    half = np.empty((1, 1, values.size), np.uint16)
    gather_crop(values, zero, zero, values.size, half, zero, ones, np.float32(0), np.float32(0), False)
    with np.errstate(over="ignore"):  # values past float16's range become inf, as they should
        want_half = values.astype(np.float16)
    return bool(np.array_equal(half[0, 0], want_half.view(np.uint16)))


# -- warming up ------------------------------------------------------------------------------

_warming: threading.Thread | None = None


def warm() -> None:
    """Load the reader's kernels for the array types it uses (from numba's cache when there)."""
    half_conversion_ok()
    zero = np.zeros(1, dtype=np.int64)
    gain = np.ones(1, dtype=np.float32)
    step = np.ones(1, dtype=np.float32)
    limit = np.float32(1)
    sources = {dtype: np.zeros(8, dtype=dtype) for dtype in (np.uint16, np.float32, np.uint8)}
    for source in sources.values():  # memory-mapped shards are read-only arrays
        source.setflags(write=False)
    for out in (np.zeros((1, 1, 2), dtype=np.float32), np.zeros((1, 1, 2), dtype=np.uint16)):
        for scale in (False, True):
            gather_crop(sources[np.uint16], zero, zero, 2, out, zero, gain, -limit, limit, scale)
            gather_codes(sources[np.uint8], zero, zero, 2, step, step, out, zero, gain, -limit, limit, scale)
    first_bad_chunk(sources[np.uint16], zero, 2)
    bands = np.zeros((1, 1, 2), dtype=np.int64)
    for bits in (np.uint16, np.uint32):
        mask_bands(np.zeros((1, 1, 2), dtype=bits), bands, bands, np.zeros(1, dtype=bits))


def start_warming() -> None:
    """Run ``warm`` in a background thread, once per process (a forked child starts its own)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_warm_quietly, name="melshards-kernel-warmup")
        _warming.start()


def _warm_quietly() -> None:
    with contextlib.suppress(Exception):  # the first real call reports any problem itself
        warm()


def _join_warming() -> None:
    # Never fork while the thread may hold numba's compiler lock: the child would inherit it held.
    if _warming is not None and _warming.is_alive():
        _warming.join()


def _forget_warming() -> None:
    global _warming
    _warming = None


os.register_at_fork(before=_join_warming, after_in_child=_forget_warming)
