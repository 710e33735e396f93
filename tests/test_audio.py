import numpy as np
import pytest
import soundfile as sf

from precompute.audio import decode, find_audio
from precompute.errors import AudioError


def test_stereo_is_averaged_to_mono_and_other_rates_resampled(tmp_path):
    left = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    right = np.full(16000, 0.25, dtype=np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(decode(tmp_path / "st.wav", sample_rate=16000), (left + right) / 2, atol=1e-7)
    y = decode(tmp_path / "st.wav", sample_rate=48000)
    assert y.shape == (48000,) and y.dtype == np.float32


def test_empty_file(tmp_path):
    (tmp_path / "e.flac").write_bytes(b"")
    with pytest.raises(AudioError, match=r"e.flac: empty file \(0 bytes\)"):
        decode(tmp_path / "e.flac", sample_rate=16000)


def test_not_audio(tmp_path):
    (tmp_path / "n.flac").write_text("this is not audio at all")
    with pytest.raises(AudioError, match="n.flac: not readable audio"):
        decode(tmp_path / "n.flac", sample_rate=16000)


def test_truncated_flac(tmp_path):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 4).astype(np.float32)
    sf.write(tmp_path / "t.flac", y, 16000, subtype="PCM_16")
    data = (tmp_path / "t.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="t.flac: (truncated|not readable audio)"):
        decode(tmp_path / "t.flac", sample_rate=16000)


def test_non_finite_samples(tmp_path):
    y = np.zeros(16000, dtype=np.float32)
    y[8000] = np.nan
    sf.write(tmp_path / "nan.wav", y, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav: non-finite sample \(NaN or inf\) at 0.500 s"):
        decode(tmp_path / "nan.wav", sample_rate=16000)


def test_find_audio_any_extension_and_never_outside(tmp_path):
    (tmp_path / "a.ogg").write_bytes(b"x")
    assert find_audio(tmp_path, "a") == tmp_path / "a.ogg"
    with pytest.raises(AudioError, match="audio file not found for recording b"):
        find_audio(tmp_path, "b")
    with pytest.raises(AudioError, match="outside the audio directory"):
        find_audio(tmp_path / "sub", "x", "../a.ogg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inside.flac").symlink_to(tmp_path / "sub" / "c.flac")
    (tmp_path / "sub" / "c.flac").write_bytes(b"x")
    (tmp_path / "sub" / "escape.flac").symlink_to(tmp_path / "a.ogg")
    assert find_audio(tmp_path / "sub", "inside") == tmp_path / "sub" / "inside.flac"
    with pytest.raises(AudioError, match=r"escape\.flac: resolves outside the audio directory"):
        find_audio(tmp_path / "sub", "escape")
