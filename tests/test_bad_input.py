"""The fault matrix: each bad input gets a one-line error naming the file (and line) and loses
nothing that was good."""

import json
import re

import h5py
import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import HEADER, TINY, tone_recording
from melshards.index import read_index
from melshards.names import FAILURES_FILE
from melshards.verify import verify
from precompute.cli import main
from precompute.errors import AudioError, LockedError, ManifestError
from precompute.lock import output_lock
from precompute.run import run_features

SR = 16000
GOOD = "good,1,1,2.0,450,3.0,550\ngood,2,1,5.0,950,6.0,1050\n"


def dataset(tmp_path, *, bad_audio=None, bad_rows="", fp_rows=""):
    """Two good slices on ``good.flac`` plus whatever is bad."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.flac", tone_recording(8.0, sr=SR, tones=[(2, 3, 1000.0)]), SR, subtype="PCM_16")
    if bad_audio is not None:
        bad_audio(audio / "bad.flac")
    (tmp_path / "tp.csv").write_text(HEADER + GOOD + bad_rows)
    (tmp_path / "fp.csv").write_text(HEADER + fp_rows)
    return audio


def run(tmp_path, audio, on_error="skip", out="out"):
    return run_features(
        audio_dir=audio,
        tp=tmp_path / "tp.csv",
        fp=tmp_path / "fp.csv",
        out=tmp_path / out,
        config=TINY,
        jobs=1,
        progress=False,
        on_error=on_error,
    )


def good_slices_present(tmp_path):
    index = read_index(tmp_path / "out")
    lines = []
    for entry in index.shards:
        with h5py.File(tmp_path / "out" / entry.file, "r", locking=False) as h5:
            ids = h5["recording_id"][:].astype(str)
            lines += [int(n) for n, r in zip(h5["anchor/line"][:], ids, strict=True) if r == "good"]
    return sorted(lines) == [2, 3]


def write_bytes(data):
    return lambda path: path.write_bytes(data)


def write_audio(seconds=8.0, *, channels=1, sr=SR, nan=False, subtype="PCM_16", truncate=False):
    def make(path):
        y = tone_recording(seconds, sr=sr, tones=[(1, 2, 1500.0)], seed=3)
        if nan:  # inside the window of BAD_ROW: only the spans that windows need are decoded
            y[int(1.5 * sr)] = np.nan
        data = np.stack([y] * channels, axis=1) if channels > 1 else y
        fmt = "WAV" if subtype == "FLOAT" else "FLAC"
        sf.write(path.with_suffix(".tmp"), data, sr, subtype=subtype, format=fmt)
        raw = path.with_suffix(".tmp").read_bytes()
        path.with_suffix(".tmp").unlink()
        path.write_bytes(raw[: len(raw) // 2] if truncate else raw)

    return make


BAD_ROW = "bad,1,1,1.0,450,2.0,550\n"

# case -> (bad audio maker, extra TP rows, the failure message expected)
AUDIO_CASES = {
    "missing audio file": (None, BAD_ROW, r"bad\.\*: audio file not found for recording bad"),
    "zero-byte file": (write_bytes(b""), BAD_ROW, r"bad\.flac: empty file \(0 bytes\)"),
    "truncated FLAC": (write_audio(truncate=True), BAD_ROW, r"bad\.flac: (truncated|not readable audio)"),
    "not audio": (write_bytes(b"<html>not audio</html>" * 50), BAD_ROW, r"bad\.flac: not readable audio"),
    "NaN samples": (write_audio(nan=True, subtype="FLOAT"), BAD_ROW, r"bad\.flac: non-finite sample"),
    "event beyond the end": (
        write_audio(),
        "bad,1,1,7.5,450,9.0,550\n",
        r"tp\.csv line 4: event ends at 9\.0 s, beyond the end of .*bad\.flac \(8\.000 s\)",
    ),
}

ROW_CASES = {
    "t_min >= t_max": ("good,1,1,3.0,450,2.0,550\n", r"tp\.csv line 4: t_min 3\.0 >= t_max 2\.0"),
    "negative times": ("good,1,1,-1.0,450,2.0,550\n", r"tp\.csv line 4: negative time: t_min -1\.0"),
    "species outside the class list": (
        "good,7,1,1.0,450,2.0,550\n",
        r"tp\.csv line 4: species_id 7 is outside the class list 0\.\.3",
    ),
    "duplicate row": ("good,1,1,2.0,450,3.0,550\n", r"tp\.csv line 4: duplicate of tp\.csv line 2"),
    "path separator in recording_id": (
        "../good,1,1,1.0,450,2.0,550\n",
        r"tp\.csv line 4: recording_id '\.\./good' contains a path separator or '\.\.'",
    ),
}


@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_bad_audio_is_recorded_and_good_slices_written(tmp_path, case):
    maker, rows, message = AUDIO_CASES[case]
    audio = dataset(tmp_path, bad_audio=maker, bad_rows=rows)
    summary = run(tmp_path, audio)
    assert good_slices_present(tmp_path)
    assert len(summary.failures) == 1
    assert summary.failures[0]["id"] == "bad"
    assert summary.failures[0]["error"] == "AudioError"
    assert "\n" not in summary.failures[0]["message"]

    assert re.search(message, summary.failures[0]["message"]), summary.failures[0]["message"]
    recorded = [json.loads(line) for line in (tmp_path / "out" / FAILURES_FILE).read_text().splitlines()]
    assert recorded == summary.failures
    assert read_index(tmp_path / "out").failures == 1
    with pytest.raises(AudioError, match=message):
        run(tmp_path, audio, on_error="fail", out="strict")


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_rows_are_recorded_and_good_slices_written(tmp_path, case):
    rows, message = ROW_CASES[case]
    audio = dataset(tmp_path, bad_rows=rows)
    summary = run(tmp_path, audio)
    assert good_slices_present(tmp_path)
    assert [f["error"] for f in summary.failures] == ["ManifestError"]

    assert re.search(message, summary.failures[0]["message"]), summary.failures[0]["message"]
    with pytest.raises(ManifestError, match=message):
        run(tmp_path, audio, on_error="fail")


def test_more_than_one_channel_is_averaged_and_other_rates_resampled(tmp_path):
    def stereo_44k(path):
        write_audio(channels=2, sr=44100)(path)

    audio = dataset(tmp_path, bad_audio=stereo_44k, bad_rows=BAD_ROW)
    summary = run(tmp_path, audio)
    assert summary.failures == [] and summary.examples == 3


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "recording_id,species_id,songtype_id,t_min,f_min,f_max\n",
            r"tp\.csv line 1: missing column\(s\) t_max; the file has recording_id,species_id,",
        ),
        (
            "recording,species_id,songtype_id,t_min,f_min,t_max\n",
            r"tp\.csv line 1: missing column\(s\) recording_id",
        ),
    ],
)
def test_missing_columns_stop_with_the_file_named(tmp_path, capsys, header, message):
    audio = dataset(tmp_path)
    (tmp_path / "tp.csv").write_text(header + "good,1,1,2.0,450,3.0\n")
    code = main(
        [
            "features",
            "--audio-dir",
            str(audio),
            "--tp",
            str(tmp_path / "tp.csv"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("precompute features: error: ")
    assert re.search(message, captured.err)


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    audio = dataset(tmp_path)
    (tmp_path / "out").mkdir()
    with (
        output_lock(tmp_path / "out"),
        pytest.raises(LockedError, match=r"out: another precompute run \(pid \d+\)"),
    ):
        run(tmp_path, audio)


def test_verify_names_the_shard_with_a_flipped_byte(tmp_path):
    audio = dataset(tmp_path)
    run(tmp_path, audio)
    assert verify(tmp_path / "out") == []
    shard = tmp_path / "out" / "shard-00000.h5"
    with h5py.File(shard, "r") as h5:
        offset = h5["mel"].id.get_chunk_info(1).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 100] ^= 0x40
    shard.write_bytes(bytes(data))
    problems = verify(tmp_path / "out")
    assert any("shard-00000.h5: sha256" in p for p in problems)
    assert any("shard-00000.h5: example 1: checksum or read error" in p for p in problems)
    assert main(["verify", "--quiet", str(tmp_path / "out")]) == 2
    # The fix verify prints: delete the named shard, run again; only that shard is rebuilt.
    shard.unlink()
    summary = run(tmp_path, audio)
    assert summary.shards_built == 1
    assert verify(tmp_path / "out") == []
