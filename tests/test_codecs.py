"""Storage codecs: uint8 codes with per-example offset and scale, and the plugin compressions.

Every codec is written through the real shard writer and read back through every path (the
fast memory-mapped path, h5py, the in-RAM cache, plain h5py + hdf5plugin), and the values
must be what was computed within half a step of the codes.
"""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

from loader import MelReader, ShardSequence, open_feature_set
from loader import read_kernels as loader_kernels
from melshards import codec, names
from melshards.config import FeatureConfig
from melshards.errors import ConfigError, IntegrityError
from melshards.verify import verify
from reference import hdf5_fletcher32, run_python
from synthetic_features import LABELLED_SET, expected_mel, make_feature_set

hdf5plugin = pytest.importorskip("hdf5plugin")  # part of the dev install; plugins need it

# (dtype, quant_bits, compression) of every stored codec the tests cover
CODECS = [
    ("uint8", 8, None),
    ("uint8", 8, "zstd"),
    ("uint8", 8, "bitshuffle-lz4"),
    ("uint8", 6, "zstd"),
    ("uint8", 3, "bitshuffle-lz4"),
    ("float16", 8, "zstd"),
    ("float32", 8, "bitshuffle-lz4"),
]


def codec_id(case) -> str:
    dtype, bits, compression = case
    return f"{dtype}-{bits}-{compression or 'plain'}"


def full_read(features, **kwargs) -> np.ndarray:
    ids = np.arange(features.n_examples)
    out = np.empty((ids.size, features.config.n_mels, features.config.n_frames, 1), dtype=np.float32)
    MelReader(features, **kwargs).read(ids, np.zeros(ids.size, dtype=np.int64), out)
    return out[..., 0]


# -- the quantizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 4, 6, 8])
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-80.0, 0.0), (-3.5, 7.25)])
def test_quantize_is_within_half_a_step(bits, low, high):
    rng = np.random.default_rng(bits)
    mel = (low + (high - low) * rng.random((16, 50))).astype(np.float32)
    mel[0, 0], mel[0, 1] = low, high  # the example's range is exactly [low, high]
    codes, offset, scale = codec.quantize(mel, bits)
    assert codes.dtype == np.uint8 and codes.max() == (1 << bits) - 1 and codes.min() == 0
    assert offset == np.float32(low)
    assert scale == pytest.approx((high - low) / ((1 << bits) - 1), rel=1e-6)
    error = np.abs(codec.dequantize(codes, offset, scale) - mel)
    assert error.max() <= scale / 2 * (1 + 1e-4) + 1e-6 * abs(low)
    assert error.max() > scale / 4  # codes really are this coarse: the bound is not loose


def test_a_constant_example_is_stored_exactly():
    mel = np.full((4, 9), -12.5, dtype=np.float32)
    codes, offset, scale = codec.quantize(mel, 8)
    assert not codes.any() and scale == 0 and offset == np.float32(-12.5)
    np.testing.assert_array_equal(codec.dequantize(codes, offset, scale), mel)


def test_quant_bits_is_checked_and_only_for_uint8():
    assert FeatureConfig(dtype="uint8", quant_bits=5).quant_bits == 5
    for bad in (0, 9, 6.5, True):
        with pytest.raises(ConfigError, match="quant_bits"):
            FeatureConfig(dtype="uint8", quant_bits=bad)
    with pytest.raises(ConfigError, match="quant_bits applies to dtype uint8 only"):
        FeatureConfig(dtype="float16", quant_bits=6)
    with pytest.raises(ConfigError, match="compression must be one of none, gzip, lzf, zstd, bitshuffle-lz4"):
        FeatureConfig(compression="brotli")


# -- written and read back through every path --------------------------------------------------


@pytest.fixture(scope="module", params=CODECS, ids=codec_id)
def codec_set(request, tmp_path_factory):
    dtype, bits, compression = request.param
    root = make_feature_set(
        tmp_path_factory.mktemp(codec_id(request.param)),
        dtype=dtype,
        quant_bits=bits,
        compression=compression,
        **LABELLED_SET,
    )
    return open_feature_set(root)


def test_every_read_path_gives_the_same_values_within_half_a_step(codec_set):
    config = codec_set.config
    truth = np.stack(
        [expected_mel(i, n_mels=config.n_mels, n_frames=config.n_frames) for i in range(codec_set.n_examples)]
    ).astype(np.float32)
    fast = full_read(codec_set)
    np.testing.assert_array_equal(full_read(codec_set, direct=False), fast)
    np.testing.assert_array_equal(full_read(codec_set, cache_ids=np.arange(codec_set.n_examples)), fast)
    assert all(layout.byte_offsets is not None for layout in codec_set.shards)  # the fast path ran
    assert all(layout.compressed == (config.compression is not None) for layout in codec_set.shards)
    if config.dtype == "uint8":
        step = (truth.max(axis=(1, 2)) - truth.min(axis=(1, 2))) / ((1 << config.quant_bits) - 1)
        error = np.abs(fast - truth).max(axis=(1, 2))
        assert (error <= step / 2 * (1 + 1e-4)).all()
        np.testing.assert_allclose(codec_set.mel_scale, step, rtol=1e-5)
    else:
        np.testing.assert_array_equal(fast, truth)  # float codecs are lossless on these values


def test_plain_h5py_with_hdf5plugin_reads_every_value(codec_set):
    fast = full_read(codec_set)
    rows = []
    for layout in codec_set.shards:
        with h5py.File(layout.path, "r") as h5:
            stored = h5[names.MEL][()]
            if codec_set.config.dtype == "uint8":
                offset, scale = h5[names.MEL_OFFSET][()], h5[names.MEL_SCALE][()]
                stored = offset[:, None, None] + stored * scale[:, None, None]
            rows.append(stored.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate(rows), fast)


def test_batches_with_augmentation_decode_codes_like_floats(codec_set, tmp_path):
    # The same examples stored as float32 and read with the same draws (crop, gain, clip,
    # masks, mixup) must differ only by the codes' rounding, carried through the gain.
    config = codec_set.config
    exact = make_feature_set(tmp_path / "exact", dtype="float32", **LABELLED_SET)
    kwargs = {"split": "all", "batch_size": 8, "seed": 3, "augment": {"mixup_p": 0.5, "gain": (0.8, 1.2)}}
    coded = ShardSequence(codec_set.root, **kwargs)
    plain = ShardSequence(exact, **kwargs)
    step = float(codec_set.mel_scale.max()) if config.dtype == "uint8" else 0.0
    for i in range(len(coded)):
        (xc, yc, *_), (xp, yp, *_) = coded[i], plain[i]
        np.testing.assert_array_equal(yc, yp)
        assert np.abs(xc - xp).max() <= step / 2 * 1.2 + 1e-6  # 1.2: the largest gain


def test_verify_passes_an_intact_set(codec_set):
    assert verify(codec_set.root) == []


# -- integrity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "bitshuffle-lz4", None])
def test_a_flipped_byte_in_a_chunk_is_an_integrity_error_on_every_path(tmp_path, compression):
    root = make_feature_set(tmp_path / "set", dtype="uint8", compression=compression, **LABELLED_SET)
    features = open_feature_set(root)
    layout = features.shards[1]
    row = 3
    position = int(layout.byte_offsets[row] + layout.chunk_sizes[row] // 2)
    with open(layout.path, "r+b") as fh:
        fh.seek(position)
        byte = fh.read(1)
        fh.seek(position)
        fh.write(bytes([byte[0] ^ 0x10]))
    damaged = open_feature_set(root)  # the metadata is intact: the set opens
    bad = np.array([layout.first + row])
    out = np.empty((1, damaged.config.n_mels, damaged.config.n_frames, 1), dtype=np.float32)
    for kwargs in ({}, {"direct": False}):
        with pytest.raises(IntegrityError, match=f"example {row} .*fletcher32"):
            MelReader(damaged, **kwargs).read(bad, np.zeros(1, dtype=np.int64), out)
    problems = verify(root)
    assert any(f"example {row}" in p for p in problems) and any("sha256" in p for p in problems)


def test_the_checksum_kernel_agrees_with_hdf5_on_chunks_of_every_length():
    # Compressed chunks have any length and start at any byte; HDF5 pads an odd one.
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 255, 256, 257, 511, 4097, 70001):
        data = rng.integers(0, 256, n + 1).astype(np.uint8)
        checksum = hdf5_fletcher32(data[1:].tobytes())
        raw = np.concatenate([data, np.frombuffer(int(checksum).to_bytes(4, "little"), np.uint8)])[1:]
        assert loader_kernels.chunk_ok(raw), n  # odd start address: the kernel aligns a copy
        raw = raw.copy()
        raw[n // 2] ^= 1
        assert not loader_kernels.chunk_ok(raw), n


def test_a_missing_plugin_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # what an environment without it imports
    config = FeatureConfig(dtype="uint8", compression="zstd")
    with pytest.raises(ConfigError, match=r"needs the zstandard package: pip install 'melshards\[compact\]'"):
        codec.chunk_decoder(config)


def test_inspect_names_the_codec():
    assert codec.describe(FeatureConfig(dtype="uint8")) == "uint8 codes (8-bit)"
    assert (
        codec.describe(FeatureConfig(dtype="uint8", quant_bits=6, compression="zstd"))
        == "uint8 codes (6-bit), zstd"
    )
    assert codec.describe(FeatureConfig()) == "float16"


def test_precompute_without_the_plugin_package_is_one_line_naming_the_extra(tmp_path):
    from audio_fixtures import write_dataset

    paths = write_dataset(tmp_path / "data")
    args = [
        "features",
        "--audio-dir",
        str(paths["audio"]),
        "--tp",
        str(paths["tp"]),
        "--out",
        str(tmp_path / "f"),
    ]
    done = run_python(
        """
        import sys
        sys.modules["hdf5plugin"] = None  # an install without the [compact] extra
        from precompute.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        *args,
        "--set",
        "compression=zstd",
        "--set",
        "duration=2",
        "--quiet",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "precompute features: error: compression 'zstd' needs the hdf5plugin package: "
        "pip install 'melshards[compact]' (hdf5plugin, zstandard, bitshuffle)"
    )
    assert not (tmp_path / "f").exists()  # refused before any work


def test_precompute_writes_the_codes_of_what_it_computes(tmp_path):
    # The whole run with dtype uint8: each stored example is the 8-bit codes of the float
    # log-mel the same run stores as float16, with its own offset and scale.
    import dataclasses

    import h5py

    from audio_fixtures import TINY, read_arrays, run_tiny, write_dataset

    paths = write_dataset(tmp_path / "data")
    run_tiny(paths, tmp_path / "f16")
    run_tiny(paths, tmp_path / "u8", config=dataclasses.replace(TINY, dtype="uint8"))
    exact, coded = read_arrays(tmp_path / "f16"), read_arrays(tmp_path / "u8")
    assert coded["mel"].dtype == np.uint8 and "mel_offset" not in exact
    np.testing.assert_array_equal(coded["recording_id"], exact["recording_id"])
    decoded = codec.dequantize(coded["mel"], coded["mel_offset"], coded["mel_scale"])
    steps = coded["mel_scale"][:, None, None]
    # within half a step of the float16 values, plus float16's own rounding (half of 2**-11)
    assert (np.abs(decoded - exact["mel"].astype(np.float32)) <= steps / 2 + 2.0**-12).all()
    with h5py.File(tmp_path / "u8" / "shard-00000.h5", "r") as h5:
        assert h5["mel_scale"][0] == np.float32(1 / 255) and h5["mel_offset"][0] == 0  # min-max
