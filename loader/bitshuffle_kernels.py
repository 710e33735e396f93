"""Compiled decoding of HDF5 ``bitshuffle-lz4`` chunks of one-byte values (uint8 codes).

The HDF5 bitshuffle filter stores a chunk as: its uncompressed size in bytes (big-endian
uint64), the block size in bytes (big-endian uint32), then each block of ``block`` values (the
last one shorter, a multiple of 8) as its compressed size (big-endian uint32) and an LZ4 block
of the block's bit planes: plane ``b`` holds bit ``b`` of every value, value ``8j + k`` at bit
``k`` of the plane's byte ``j``. The fewer than 8 values left over at the end follow as they
are.

The ``bitshuffle`` package decodes these in C, but for one-byte values its bit transpose runs
at ~1.5 GB/s and every call starts an OpenMP team. Here, one compiled call (GIL released)
decodes a whole chunk into a buffer the calling thread reuses: LZ4 copies 8 bytes at a time
(every write stays within the block plus 8 bytes of slack, every read within the chunk), and
the planes are transposed 8 values at a time with three masked shifts of a 64-bit word, a
loop LLVM vectorizes. 2-3x the package's speed on uint8 codes, the same bytes (checked against
it in ``tests/test_decode_pool.py``). Other value sizes keep ``melshards.codec``'s decoder.

A chunk that does not decode (a length or an offset out of bounds) is an IntegrityError,
never a read or write outside the buffers.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from loader.read_kernels import gather_codes
from melshards import codec
from melshards.errors import IntegrityError

if TYPE_CHECKING:
    from melshards.config import FeatureConfig

HEADER = 12  # uncompressed bytes (uint64) and block bytes (uint32), big-endian
SLACK = 8  # bytes past the end of each output the 8-byte copies may write


@intrinsic
def _load8(typingctx, arr, i):
    """8 bytes of a uint8 array from index ``i``, any alignment, as one uint64."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.bitcast(builder.gep(ary.data, [index]), ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)

    return types.uint64(arr, i), codegen


@intrinsic
def _store8(typingctx, arr, i, value):
    """Write a uint64 as 8 bytes of a uint8 array from index ``i``, any alignment."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.bitcast(builder.gep(ary.data, [index]), ir.IntType(64).as_pointer())
        word = context.cast(builder, args[2], signature.args[2], types.uint64)
        builder.store(word, pointer, align=1)
        return context.get_dummy_value()

    return types.none(arr, i, value), codegen


@njit(cache=True, nogil=True, boundscheck=False)
def _length(src, p, end, n):  # pragma: no cover
    """An LZ4 length ``n`` (15 in its token's nibble) extended by the bytes from ``p``: (n, p), or (-1, p)."""
    while True:
        if p >= end:
            return -1, p
        b = np.int64(src[p])
        p += 1
        n += b
        if b != 255:
            return n, p


@njit(cache=True, nogil=True, boundscheck=False)
def lz4_block(src, p, end, dst, size):  # pragma: no cover
    """Decode the LZ4 block ``src[p:end]`` into ``dst[:size]``; returns ``size``, or -1 when the
    block is corrupt. ``dst`` holds at least ``size + SLACK`` bytes."""
    n_src = src.shape[0]
    o = 0
    while p < end:
        token = np.int64(src[p])
        p += 1
        lit = token >> 4
        if lit == 15:
            lit, p = _length(src, p, end, lit)
        if lit < 0 or p + lit > end or o + lit > size:
            return -1
        if p + lit + 8 <= n_src:
            for i in range(0, lit, 8):
                _store8(dst, o + i, _load8(src, p + i))
        else:
            for i in range(lit):
                dst[o + i] = src[p + i]
        p += lit
        o += lit
        if p == end:  # the last sequence is literals only
            return o if o == size else -1
        if p + 2 > end:
            return -1
        off = np.int64(src[p]) | (np.int64(src[p + 1]) << 8)
        p += 2
        match = token & 15
        if match == 15:
            match, p = _length(src, p, end, match)
        match += 4
        if off == 0 or off > o or match < 4 or o + match > size:
            return -1
        q = o - off
        if off == 1:  # a run of one byte
            word = np.uint64(dst[q]) * np.uint64(0x0101010101010101)
            for i in range(0, match, 8):
                _store8(dst, o + i, word)
        else:
            # The match repeats every ``off`` bytes, so a byte ``span`` >= 8 back (a multiple
            # of ``off``) is already written and equal: copy 8 bytes at a time from there.
            span = off if off >= 8 else off * ((8 + off - 1) // off)
            head = min(span, match) if off < 8 else 0
            for i in range(head):
                dst[o + i] = dst[q + i]
            for i in range(head, match, 8):
                _store8(dst, o + i, _load8(dst, o + i - span))
        o += match
    return -1


@njit(cache=True, nogil=True, boundscheck=False)
def unshuffle_bytes(planes, n, out, o, g0, g1):  # pragma: no cover
    """Groups ``g0`` to ``g1 - 1`` (values ``8 * g0`` to ``8 * g1 - 1``) of the bit planes of ``n``
    one-byte values (``n`` a multiple of 8; plane ``b`` is ``planes[b * n // 8 : (b + 1) * n //
    8]``) into ``out[o + 8 * g0 : o + 8 * g1]``; ``g0 = 0, g1 = n // 8`` for them all.

    Each group of 8 values is an 8x8 bit matrix: one byte from each plane packed into a 64-bit
    word (plane ``b`` in byte ``b``), transposed by three masked exchanges so that byte ``k``
    holds value ``k``'s bits, and stored as 8 bytes (little-endian).
    """
    m = n // 8
    mask1 = np.uint64(0x00AA00AA00AA00AA)
    mask2 = np.uint64(0x0000CCCC0000CCCC)
    mask4 = np.uint64(0x00000000F0F0F0F0)
    # one slice per plane: with the planes' bytes at fixed offsets from one index, LLVM keeps
    # the loop vectorized (2.5x the speed of indexing ``planes[b * m + j]`` in an inner loop)
    p0, p1 = planes[g0:g1], planes[m + g0 : m + g1]
    p2, p3 = planes[2 * m + g0 : 2 * m + g1], planes[3 * m + g0 : 3 * m + g1]
    p4, p5 = planes[4 * m + g0 : 4 * m + g1], planes[5 * m + g0 : 5 * m + g1]
    p6, p7 = planes[6 * m + g0 : 6 * m + g1], planes[7 * m + g0 : 7 * m + g1]
    first = o + 8 * g0
    for i in range(g1 - g0):
        x = np.uint64(p0[i]) | (np.uint64(p1[i]) << np.uint64(8)) | (np.uint64(p2[i]) << np.uint64(16))
        x |= (np.uint64(p3[i]) << np.uint64(24)) | (np.uint64(p4[i]) << np.uint64(32))
        x |= (np.uint64(p5[i]) << np.uint64(40)) | (np.uint64(p6[i]) << np.uint64(48))
        x |= np.uint64(p7[i]) << np.uint64(56)
        t = (x ^ (x >> np.uint64(7))) & mask1
        x = x ^ t ^ (t << np.uint64(7))
        t = (x ^ (x >> np.uint64(14))) & mask2
        x = x ^ t ^ (t << np.uint64(14))
        t = (x ^ (x >> np.uint64(28))) & mask4
        x = x ^ t ^ (t << np.uint64(28))
        _store8(out, first + 8 * i, x)


@njit(cache=True, nogil=True, boundscheck=False)
def decode_chunk(raw, total, block, out, scratch, row, start, crop):  # pragma: no cover
    """Decode a bitshuffle-lz4 chunk of ``total`` one-byte values in blocks of ``block`` into
    ``out[:total]``; returns -1 when it decodes, else the index of the first corrupt block
    (the number of blocks for bytes missing or left over at the end).

    raw : np.ndarray [shape=(k,)], uint8 -- the chunk, header included
    out : np.ndarray [shape=(>= total,)], uint8
    scratch : np.ndarray [shape=(>= block + SLACK,)], uint8 -- one block's bit planes
    row, start, crop : the values are rows of ``row`` values, and only the ``crop`` values of
        each row from ``start`` are needed: the bit planes of the others are not transposed
        (their bytes in ``out`` are left as they were); ``total, 0, total`` for every value.
        Every block is still decompressed and checked.
    """
    end = raw.shape[0]
    p = 12
    n_full = total // block
    last = total % block - total % 8
    n_blocks = n_full + (1 if last else 0)
    o = 0
    for k in range(n_blocks):
        size = block if k < n_full else last
        if p + 4 > end:
            return k
        c = (np.int64(raw[p]) << 24) | (np.int64(raw[p + 1]) << 16) | (np.int64(raw[p + 2]) << 8)
        c |= np.int64(raw[p + 3])
        p += 4
        if p + c > end or lz4_block(raw, p, p + c, scratch, size) != size:
            return k
        for m in range(o // row, (o + size - 1) // row + 1):
            a = max(m * row + start, o)
            b = min(m * row + start + crop, o + size)
            if a < b:
                unshuffle_bytes(scratch, size, out, o, (a - o) // 8, (b - o - 1) // 8 + 1)
        p += c
        o += size
    if end - p != total - o:
        return n_blocks
    for i in range(total - o):
        out[o + i] = raw[p + i]
    return -1


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` as a pointer to bytes, for ``carray``."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.CPointer(types.uint8)(address), codegen


@njit(cache=True, nogil=True, boundscheck=False)
def _big_endian(raw, p, n):  # pragma: no cover
    value = np.int64(0)
    for i in range(n):
        value = (value << 8) | np.int64(raw[p + i])
    return value


@njit(cache=True, nogil=True, boundscheck=False)
def decode_fill(
    addresses, sizes, expected, starts, n_frames, base, step, out, out_pos, gain, lo, hi, scale, buf, scratch
):  # pragma: no cover
    """Decode bitshuffle-lz4 chunks of uint8 codes and gather their crops into ``out``, one
    chunk after another in one call: ``decode_chunk`` into ``buf``, then ``gather_codes``.
    Returns -1, or the index of the first chunk that does not decode (its header disagreeing
    with ``expected`` values included); the chunks before it are filled.

    addresses, sizes : np.ndarray [shape=(k,)], int64 -- each chunk's bytes (its checksum
        left out) in memory the caller holds alive: a memory map checked to hold them
    buf : np.ndarray [shape=(>= expected,)], uint8; scratch : one block's planes (grown here
        when a chunk's blocks are larger)
    The other arguments are ``gather_codes``'s, per chunk.
    """
    first = np.zeros(1, dtype=np.int64)
    crop = out.shape[2]
    for k in range(addresses.shape[0]):
        raw = carray(_pointer(addresses[k]), (sizes[k],))
        if sizes[k] < HEADER:
            return k
        block = _big_endian(raw, 8, 4)
        if _big_endian(raw, 0, 8) != expected or block == 0 or block % 8:
            return k
        if scratch.shape[0] < block + SLACK:
            scratch = np.empty(block + SLACK, dtype=np.uint8)
        if decode_chunk(raw, expected, block, buf, scratch, n_frames, starts[k], crop) >= 0:
            return k
        gather_codes(
            buf,
            first,
            starts[k : k + 1],
            n_frames,
            base[k : k + 1],
            step[k : k + 1],
            out,
            out_pos[k : k + 1],
            gain,
            lo,
            hi,
            scale,
        )
    return -1


_local = threading.local()  # each thread's buffers for ``decode_fill``


def thread_buffers(expected: int) -> tuple[np.ndarray, np.ndarray]:
    """The calling thread's ``buf`` (``expected`` values) and ``scratch`` for ``decode_fill``."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] != expected:
        buf = _local.buf = np.empty(expected, dtype=np.uint8)
        _local.scratch = np.empty(8192 + SLACK, dtype=np.uint8)
    return buf, _local.scratch


def chunk_decoder(config: FeatureConfig) -> Callable[[np.ndarray, str], np.ndarray] | None:
    """The loader's decoder of one stored chunk of ``mel`` (``melshards.codec.chunk_decoder``'s
    contract): the compiled one for uint8 codes with bitshuffle-lz4, else the codec's.

    The compiled decoder returns a view of a buffer its calling thread reuses: the values are
    valid until that thread's next call.
    """
    if config.compression != "bitshuffle-lz4" or uses_openmp(config):
        return codec.chunk_decoder(config)
    return byte_decoder(config.n_mels * config.n_frames)


def uses_openmp(config: FeatureConfig) -> bool:
    """Whether the config's chunks decode through the ``bitshuffle`` package (OpenMP teams)."""
    return config.compression == "bitshuffle-lz4" and np.dtype(config.dtype).itemsize != 1


def byte_decoder(expected: int) -> Callable[[np.ndarray, str], np.ndarray]:
    """The compiled decoder of bitshuffle-lz4 chunks of ``expected`` one-byte values."""
    local = threading.local()

    def decode_bitshuffle(raw: np.ndarray, where: str) -> np.ndarray:
        if raw.shape[0] < HEADER:
            raise IntegrityError(f"{where}: bitshuffle chunk of {raw.shape[0]} bytes has no header")
        total, block = struct.unpack(">QI", raw[:HEADER].tobytes())
        if total != expected or block == 0 or block % 8:
            raise IntegrityError(f"{where}: bitshuffle chunk holds {total} bytes, expected {expected}")
        out = getattr(local, "out", None)
        if out is None:
            out = local.out = np.empty(expected, dtype=np.uint8)
        scratch = getattr(local, "scratch", None)
        if scratch is None or scratch.shape[0] < block + SLACK:
            scratch = local.scratch = np.empty(block + SLACK, dtype=np.uint8)
        bad = decode_chunk(raw, expected, block, out, scratch, expected, 0, expected)
        if bad >= 0:
            raise IntegrityError(f"{where}: bitshuffle-lz4 chunk does not decode (block {bad} is corrupt)")
        return out

    return decode_bitshuffle
