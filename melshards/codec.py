"""How ``mel`` values become stored bytes and back: the dtype codecs and the compression filters.

Three dtypes (``FeatureConfig.dtype``):

- ``float16`` and ``float32`` store the values themselves;
- ``uint8`` stores codes: each example's values are mapped onto ``0..2**quant_bits - 1``
  between that example's minimum and maximum, and the shard keeps the example's ``mel_offset``
  (its minimum) and ``mel_scale`` (one step) as float32. A value is ``offset + code * scale``,
  within half a step of what was computed; this works for ``normalize = none`` (dB) too.

And the HDF5 filters on ``mel`` (``FeatureConfig.compression``): h5py's ``gzip`` and ``lzf``,
and ``zstd`` and ``bitshuffle-lz4`` from the ``hdf5plugin`` package, which plain h5py reads
once ``import hdf5plugin`` has registered them. Every example is one chunk, so the loader
decodes a plugin-compressed chunk itself (``chunk_decoder``) straight from the file's bytes,
skipping HDF5's per-call cost; ``zstandard`` and ``bitshuffle`` do the decoding (the loader
decodes uint8 codes under bitshuffle-lz4 with its own compiled decoder,
``loader.bitshuffle_kernels``, which gives the same bytes).

The optional packages are imported only when a feature set uses them; a missing one is a
ConfigError saying what to install.
"""

from __future__ import annotations

import importlib
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from melshards.errors import ConfigError, IntegrityError
from melshards.names import PLUGIN_FILTER_IDS, QUANTIZED_DTYPE

if TYPE_CHECKING:
    from melshards.config import FeatureConfig

ZSTD_LEVEL = 3  # zstd's own default: higher levels shrink these codes by about 1% more, slower

INSTALL_HINT = "pip install 'melshards[compact]' (hdf5plugin, zstandard, bitshuffle)"


def is_quantized(config: FeatureConfig) -> bool:
    return config.dtype == QUANTIZED_DTYPE


def describe(config: FeatureConfig) -> str:
    """How ``mel`` is stored, in a few words: ``uint8 codes (8-bit)``, ``float16, zstd``."""
    stored = f"uint8 codes ({config.quant_bits}-bit)" if is_quantized(config) else config.dtype
    return stored if config.compression is None else f"{stored}, {config.compression}"


def quantize(mel: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, np.float32]:
    """Codes of one example and its (offset, scale): ``offset + codes * scale`` is within half a step.

    mel : np.ndarray [shape=(n_mels, n_frames)], finite floats
    Returns (codes uint8 of the same shape, offset, scale), offset and scale float32; a constant
    example has scale 0 and every code 0.
    """
    values = np.asarray(mel, dtype=np.float32)
    top = (1 << bits) - 1
    offset = np.float32(values.min()) if values.size else np.float32(0)
    span = np.float32(values.max()) - offset if values.size else np.float32(0)
    scale = np.float32(span / np.float32(top))
    if scale == 0 or not np.isfinite(scale):
        return np.zeros(values.shape, dtype=np.uint8), offset, np.float32(0)
    codes = np.rint((values - offset) / scale)
    np.clip(codes, 0, top, out=codes)
    return codes.astype(np.uint8), offset, scale


def dequantize(codes: np.ndarray, offset: Any, scale: Any) -> np.ndarray:
    """float32 values of codes: ``offset + codes * scale`` (offset and scale broadcast per example).

    codes : np.ndarray [shape=(..., n_mels, n_frames)], uint8; offset, scale : scalars, or
    arrays of shape ``codes.shape[:-2]``.
    """
    offset = np.asarray(offset, dtype=np.float32)[..., None, None]
    scale = np.asarray(scale, dtype=np.float32)[..., None, None]
    return offset + codes.astype(np.float32) * scale


def _import(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {name} package: {INSTALL_HINT}") from None


def register_filters(config: FeatureConfig) -> None:
    """Make HDF5 able to read and write the config's plugin filter (no-op for the others)."""
    if config.compression in PLUGIN_FILTER_IDS:
        _import("hdf5plugin", f"compression {config.compression!r}")


def dataset_options(config: FeatureConfig) -> dict[str, Any]:
    """``create_dataset`` keyword arguments for the config's compression of ``mel``."""
    if config.compression is None:
        return {}
    if config.compression not in PLUGIN_FILTER_IDS:
        return {"compression": config.compression}
    hdf5plugin = _import("hdf5plugin", f"compression {config.compression!r}")
    if config.compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=ZSTD_LEVEL))
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


def chunk_decoder(config: FeatureConfig) -> Callable[[np.ndarray, str], np.ndarray] | None:
    """A function decoding one stored chunk of ``mel`` (its bytes without the checksum).

    Returns None where the loader reads through h5py instead (no compression, gzip, lzf). The
    function takes the chunk's bytes (uint8 array) and a description for errors, and returns the
    example's stored values as a flat uint8 array (the dtype's bytes); a chunk that does not
    decode to exactly one example is an IntegrityError.
    """
    if config.compression not in PLUGIN_FILTER_IDS:
        return None
    expected = config.n_mels * config.n_frames * np.dtype(config.dtype).itemsize
    if config.compression == "zstd":
        zstandard = _import("zstandard", "reading zstd-compressed shards")
        local = threading.local()  # a ZstdDecompressor is not safe across threads

        def decode_zstd(raw: np.ndarray, where: str) -> np.ndarray:
            decompressor = getattr(local, "decompressor", None)
            if decompressor is None:
                decompressor = local.decompressor = zstandard.ZstdDecompressor()
            try:
                data = decompressor.decompress(raw, max_output_size=expected)
            except zstandard.ZstdError as err:
                raise IntegrityError(f"{where}: zstd chunk does not decode ({err})") from None
            if len(data) != expected:
                raise IntegrityError(f"{where}: zstd chunk decodes to {len(data)} bytes, expected {expected}")
            return np.frombuffer(data, dtype=np.uint8)

        return decode_zstd

    bitshuffle = _import("bitshuffle", "reading bitshuffle-lz4 shards")
    itemsize = np.dtype(config.dtype).itemsize

    def decode_bitshuffle(raw: np.ndarray, where: str) -> np.ndarray:
        # The HDF5 bitshuffle filter's chunk: uncompressed bytes (big-endian uint64), block size
        # in bytes (big-endian uint32), then the LZ4 blocks.
        if raw.shape[0] < 12:
            raise IntegrityError(f"{where}: bitshuffle chunk of {raw.shape[0]} bytes has no header")
        total, block = struct.unpack(">QI", raw[:12].tobytes())
        if total != expected or block % itemsize:
            raise IntegrityError(f"{where}: bitshuffle chunk holds {total} bytes, expected {expected}")
        try:
            values = bitshuffle.decompress_lz4(
                raw[12:], (expected // itemsize,), np.dtype(config.dtype), block // itemsize
            )
        except (ValueError, RuntimeError) as err:
            raise IntegrityError(f"{where}: bitshuffle-lz4 chunk does not decode ({err})") from None
        return values.view(np.uint8)

    return decode_bitshuffle
