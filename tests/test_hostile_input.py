"""Inputs crafted (or damaged) to break a run: a header that promises 2**36 frames, manifests
that are not UTF-8 text, numbers Python reads too kindly, one recording named by two paths or
two files, links out of the audio directory. Each costs its own rows or recordings, or stops
the command with one line naming the file; none takes the run down with a traceback."""

import gzip
import json
import re
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from test_cli import TINY_SET

from audio_fixtures import HEADER, read_arrays, tone_recording
from melshards.index import read_index
from melshards.names import EVENT_TP, FAILURES_FILE
from precompute.audio import BLOCK_FRAMES, decode
from precompute.cli import main
from precompute.errors import AudioError
from precompute.inputs.manifest import read_manifest

SR = 16000
GOOD = "good,1,1,2.0,450,3.0,550\ngood,2,1,5.0,950,6.0,1050\n"
# ``windows --step 5`` over an 8 s recording: 0, 5 and 5.5 s (to end it), on the 16 ms hop grid.
STARTS = [0.0, 312 * 256 / SR, 343 * 256 / SR]


def write_tone(path, seconds=8.0, *, seed=0):
    sf.write(path, tone_recording(seconds, sr=SR, tones=[(2, 3, 1000.0)], seed=seed), SR, subtype="PCM_16")


def header_bomb(path, frames):
    """A real one-second FLAC whose STREAMINFO claims ``frames`` frames.

    STREAMINFO follows ``fLaC`` and a 4-byte block header; its bytes 10..17 hold the sample
    rate (20 bits), channels - 1 (3), bits per sample - 1 (5) and the total samples (36).
    """
    write_tone(path, 1.0)
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0  # the first block is STREAMINFO
    packed = int.from_bytes(raw[18:26], "big")
    packed = (packed & ~(2**36 - 1)) | frames
    raw[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(raw)


def features(tmp_path, audio, *extra, tp="tp.csv"):
    argv = ["features", "--audio-dir", str(audio), "--tp", str(tmp_path / tp), "--out", str(tmp_path / "out")]
    return main([*argv, "--jobs", "1", "--quiet", *TINY_SET, *extra])


def windows(tmp_path, audio, step="5"):
    argv = ["windows", "--audio-dir", str(audio), "--out", str(tmp_path / "out"), "--step", step]
    return main([*argv, "--jobs", "1", "--quiet", *TINY_SET])


def failures(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out" / FAILURES_FILE).read_text().splitlines()]


def examples(tmp_path):
    """(recording id, anchor line, start) of every stored example, in index order."""
    arrays = read_arrays(tmp_path / "out")
    ids = arrays["recording_id"].astype(str).tolist()
    return list(zip(ids, arrays["anchor/line"].tolist(), arrays["start"].tolist(), strict=True))


def one_error_line(capsys, command="features"):
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"precompute {command}: error: ")
    return lines[0]


# -- 1. a header that promises more frames than the file holds ----------------------------------


def test_libsndfile_trusts_a_patched_flac_header_and_decode_refuses_it(tmp_path):
    header_bomb(tmp_path / "bomb.flac", 2**36 - 1)
    assert sf.info(str(tmp_path / "bomb.flac")).frames == 2**36 - 1  # what a plain read allocates
    with pytest.raises(
        AudioError,
        match=r"bomb\.flac: header promises 68719476735 frames \(1193\.0 h at 16000 Hz\), "
        r"more than the 24 h limit: a corrupt header",
    ):
        decode(tmp_path / "bomb.flac", sample_rate=SR)


def test_decode_memory_follows_the_samples_not_the_header(tmp_path):
    # 2**28 frames is 4.7 h at 16 kHz, under the limit: decoding starts, and must not
    # allocate the 1 GiB the header promises.
    header_bomb(tmp_path / "liar.flac", 2**28)
    tracemalloc.start()
    try:
        with pytest.raises(AudioError, match=r"liar\.flac: truncated: .* of the 268435456 frames its header"):
            decode(tmp_path / "liar.flac", sample_rate=SR)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * BLOCK_FRAMES * 4  # a few blocks of float32, not 2**28 frames of them


def test_decode_in_blocks_gives_the_samples_of_one_read(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (2 * BLOCK_FRAMES + 1234, 2)).astype(np.float32)
    sf.write(tmp_path / "long.wav", stereo, SR, subtype="FLOAT")
    y = decode(tmp_path / "long.wav", sample_rate=SR)
    np.testing.assert_array_equal(y, stereo.mean(axis=1, dtype=np.float32))
    assert y.flags.c_contiguous


def test_a_header_bomb_fails_its_recording_and_the_run_goes_on(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    header_bomb(audio / "bomb.flac", 2**36 - 1)
    (tmp_path / "tp.csv").write_text(HEADER + GOOD + "bomb,1,1,0.2,450,0.8,550\n")
    assert features(tmp_path, audio) == 3
    assert [(rid, line) for rid, line, _ in examples(tmp_path)] == [("good", 2), ("good", 3)]
    [failure] = failures(tmp_path)
    assert (failure["id"], failure["error"], failure["slices"]) == ("bomb", "AudioError", 1)
    assert re.fullmatch(r".*/audio/bomb\.flac: header promises 68719476735 frames .*", failure["message"])
    assert read_index(tmp_path / "out").failures == 1


def test_a_header_bomb_among_windows_is_one_failure(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    header_bomb(audio / "bomb.flac", 2**36 - 1)
    assert windows(tmp_path, audio) == 3
    assert [(rid, start) for rid, _, start in examples(tmp_path)] == [("good", t) for t in STARTS]
    [failure] = failures(tmp_path)
    assert (failure["id"], failure["slices"]) == ("bomb", 1)
    assert "bomb.flac: header promises 68719476735 frames" in failure["message"]


# -- 2. manifests that are not UTF-8 CSV text ----------------------------------------------------

LATIN1 = (HEADER + GOOD + "caf\xe9,1,1,2.0,450,3.0,550\n").encode("latin-1")

# case -> (file name, content, the error expected after "precompute features: error: ")
MANIFEST_FILES = {
    "Latin-1 text": (
        "tp.csv",
        LATIN1,
        rf"tp\.csv line 4: not UTF-8 text \(byte 0xe9 at offset {LATIN1.index(0xE9)}\); save the manifest as UTF-8",
    ),
    "gzip file": (
        "tp.csv.gz",
        gzip.compress((HEADER + GOOD).encode()),
        r"tp\.csv\.gz line 1: not UTF-8 text \(byte 0x8b at offset 1\)",
    ),
    "random bytes": (
        "tp.csv",
        bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)),
        r"tp\.csv line \d+: (not UTF-8 text \(byte 0x[0-9a-f]{2} at offset \d+\)|contains a NUL byte)",
    ),
    "UTF-16 without a byte order mark": (
        "tp.csv",
        (HEADER + GOOD).encode("utf-16-le"),
        r"tp\.csv line 1: contains a NUL byte \(a binary or UTF-16 file\?\); save the manifest as UTF-8",
    ),
    "NUL byte in a row": (
        "tp.csv",
        (HEADER + GOOD + "good,3,1,4.0,450\x00,5.0,550\n").encode(),
        r"tp\.csv line 4: contains a NUL byte",
    ),
    "field over the csv limit": (
        "tp.csv",
        (HEADER + GOOD + "x" * 200_000 + ",1,1,1.0,450,2.0,550\n").encode(),
        r"tp\.csv line 4: field longer than 131072 characters; is this a manifest\?",
    ),
    "quote left open": (
        "tp.csv",
        (HEADER + '"good,1,1,2.0,450,3.0,550\n' + ("y" * 1000 + "\n") * 200).encode(),
        r"tp\.csv line 2: field longer than 131072 characters, from line 2 to line 13\d "
        r"\(a quote left open\?\)",
    ),
}


@pytest.mark.parametrize("case", list(MANIFEST_FILES))
def test_a_manifest_that_is_not_utf8_csv_is_one_error_line(tmp_path, capsys, case):
    name, content, message = MANIFEST_FILES[case]
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    (tmp_path / name).write_bytes(content)
    assert features(tmp_path, audio, tp=name) == 2
    line = one_error_line(capsys)
    assert re.fullmatch(rf"precompute features: error: {message}.*", line), line
    assert not (tmp_path / "out" / FAILURES_FILE).exists()


def test_a_flac_given_as_the_manifest_is_one_error_line(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    write_tone(tmp_path / "rec.flac")
    assert features(tmp_path, audio, tp="rec.flac") == 2
    line = one_error_line(capsys)
    assert re.fullmatch(
        r"precompute features: error: rec\.flac line 1: not UTF-8 text \(byte 0x[89a-f][0-9a-f] at offset \d+\); "
        r"save the manifest as UTF-8",
        line,
    ), line


# -- 3. numbers that int() and float() accept but a manifest should not -------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("good,1_0,1,1.0,450,2.0,550", "species_id '1_0' is not an integer"),
        ("good,\uff11,1,1.0,450,2.0,550", "species_id '\uff11' is not an integer"),  # fullwidth 1
        ("good,1,1_0,1.0,450,2.0,550", "songtype_id '1_0' is not a number"),
        ("good,1,0x10,1.0,450,2.0,550", "songtype_id '0x10' is not a number"),
        ("good,1,1,1_0,450,20,550", "t_min '1_0' is not a number"),
        ("good,1,1,1.0,450,2.0,5_50.5", "f_max '5_50.5' is not a number"),
        ("good,1,1,1.0,450,\u0662.0,550", "t_max '\u0662.0' is not a number"),  # Arabic-Indic 2
    ],
)
def test_numbers_with_underscores_or_other_digits_are_row_failures(tmp_path, row, message):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    (tmp_path / "tp.csv").write_text(HEADER + GOOD + row + "\n", encoding="utf-8")
    assert features(tmp_path, audio) == 3
    assert [line for _, line, _ in examples(tmp_path)] == [2, 3]
    [failure] = failures(tmp_path)
    assert (failure["error"], failure["line"], failure["path"]) == ("ManifestError", 4, "tp.csv")
    assert failure["message"] == f"tp.csv line 4: {message}"


def test_plain_decimal_numbers_still_read(tmp_path):
    (tmp_path / "tp.csv").write_text(HEADER + "r,10,4,1e-1,+450,2.50,1E3\nr, 12 ,-1,0,0.5,.75,600\n")
    rows, rejected = read_manifest(tmp_path / "tp.csv", kind=EVENT_TP, n_classes=16)
    assert rejected == []
    assert [(r.species_id, r.songtype_id, r.t_min, r.f_min, r.t_max, r.f_max) for r in rows] == [
        (10, 4, 0.1, 450.0, 2.5, 1000.0),
        (12, -1, 0.0, 0.5, 0.75, 600.0),
    ]


# -- 4. one recording, rows naming different paths -----------------------------------------------


def test_rows_naming_different_paths_fail_their_recording_only(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("good", "a", "b"):
        write_tone(audio / f"{name}.flac")
    tp = (
        HEADER.strip()
        + ",path\n"
        + "good,1,1,2.0,450,3.0,550,good.flac\n"
        + "good,2,1,5.0,950,6.0,1050,good.flac\n"
        + "two,1,1,1.0,450,2.0,550,a.flac\n"
        + "two,2,1,5.0,950,6.0,1050,b.flac\n"
        + "two,3,1,3.0,450,4.0,550,a.flac\n"
    )
    (tmp_path / "tp.csv").write_text(tp)
    assert features(tmp_path, audio) == 3
    assert [(rid, line) for rid, line, _ in examples(tmp_path)] == [("good", 2), ("good", 3)]
    why = "recording two: rows name different paths a.flac (tp.csv line 4) and b.flac (tp.csv line 5)"
    assert failures(tmp_path) == [
        {
            "id": "two",
            "path": "tp.csv",
            "line": line,
            "error": "ManifestError",
            "message": f"tp.csv line {line}: {why}",
        }
        for line in (4, 5, 6)
    ]


def test_rows_with_and_without_a_path_are_different_paths(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    write_tone(audio / "x.flac")
    tp = HEADER.strip() + ",path\n" + "good,1,1,2.0,450,3.0,550,\n" + "good,2,1,5.0,950,6.0,1050,x.flac\n"
    (tmp_path / "tp.csv").write_text(tp)
    (tmp_path / "fp.csv").write_text(HEADER.strip() + ",path\n" + "other,1,1,2.0,450,3.0,550,x.flac\n")
    assert features(tmp_path, audio, "--fp", str(tmp_path / "fp.csv")) == 3
    assert [(rid, line) for rid, line, _ in examples(tmp_path)] == [("other", 2)]
    assert [f["message"] for f in failures(tmp_path)] == [
        f"tp.csv line {line}: recording good: rows name different paths (no path) (tp.csv line 2) "
        "and x.flac (tp.csv line 3)"
        for line in (2, 3)
    ]


def test_rows_naming_different_paths_stop_a_run_under_fail(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "a.flac")
    write_tone(audio / "b.flac")
    tp = HEADER.strip() + ",path\n" + "two,1,1,1.0,450,2.0,550,a.flac\n" + "two,2,1,5.0,950,6.0,1050,b.flac\n"
    (tmp_path / "tp.csv").write_text(tp)
    assert features(tmp_path, audio, "--on-error", "fail") == 2
    assert one_error_line(capsys) == (
        "precompute features: error: tp.csv line 2: recording two: rows name different paths "
        "a.flac (tp.csv line 2) and b.flac (tp.csv line 3)"
    )


# -- 5. what the audio directory holds: links out of it, two files for one id -------------------


def test_windows_refuses_a_link_out_of_the_audio_directory(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    (tmp_path / "private").mkdir()
    write_tone(tmp_path / "private" / "secret.flac", seed=9)
    (audio / "link.flac").symlink_to(tmp_path / "private" / "secret.flac")
    assert windows(tmp_path, audio) == 3
    assert {rid for rid, _, _ in examples(tmp_path)} == {"good"}
    [failure] = failures(tmp_path)
    assert (failure["id"], failure["error"], failure["path"], failure["slices"]) == (
        "link",
        "AudioError",
        None,
        1,
    )
    assert failure["message"] == f"{audio / 'link.flac'}: resolves outside the audio directory; refusing it"


def test_windows_reads_a_link_that_stays_inside(tmp_path):
    audio = tmp_path / "audio"
    (audio / "takes").mkdir(parents=True)
    write_tone(audio / "takes" / "t1.flac")
    (audio / "alias.flac").symlink_to(audio / "takes" / "t1.flac")
    assert windows(tmp_path, audio) == 0
    # The link is read, and so is its target: windows reads sub-folders too.
    assert [(rid, start) for rid, _, start in examples(tmp_path)] == [
        (rid, t) for rid in ("alias", "takes/t1") for t in STARTS
    ]


def test_windows_refuses_two_files_with_one_recording_id(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "a.flac")
    sf.write(audio / "a.wav", tone_recording(8.0, sr=SR, tones=[], seed=2), SR)
    write_tone(audio / "b.flac")
    assert windows(tmp_path, audio) == 2
    assert one_error_line(capsys, "windows") == (
        f"precompute windows: error: {audio}: recordings a.flac and a.wav share the id 'a'; rename or remove one"
    )
    assert not (tmp_path / "out").exists()


def test_features_refuses_a_recording_with_two_files(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    write_tone(audio / "a.flac")
    sf.write(audio / "a.wav", tone_recording(8.0, sr=SR, tones=[], seed=2), SR)
    (tmp_path / "tp.csv").write_text(HEADER + GOOD + "a,1,1,2.0,450,3.0,550\n")
    assert features(tmp_path, audio) == 3
    assert [(rid, line) for rid, line, _ in examples(tmp_path)] == [("good", 2), ("good", 3)]
    [failure] = failures(tmp_path)
    assert (failure["id"], failure["error"], failure["path"]) == ("a", "AudioError", None)
    assert failure["message"] == (
        f"{audio}: recording a is ambiguous: a.flac and a.wav share its id; rename or remove all but one"
    )


# -- recorders' spellings, links to nowhere, absurd steps -----------------------------------------


def test_features_finds_upper_case_extensions(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.WAV")  # what many field recorders write
    (tmp_path / "tp.csv").write_text(HEADER + GOOD)
    assert features(tmp_path, audio) == 0
    assert [(rid, line) for rid, line, _ in examples(tmp_path)] == [("good", 2), ("good", 3)]


def test_windows_records_a_link_to_nowhere(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    (audio / "gone.flac").symlink_to(tmp_path / "deleted.flac")
    assert windows(tmp_path, audio) == 3
    assert [(rid, start) for rid, _, start in examples(tmp_path)] == [("good", t) for t in STARTS]
    [failure] = failures(tmp_path)
    assert failure["message"] == f"{audio / 'gone.flac'}: broken symbolic link (its target does not exist)"


@pytest.mark.parametrize("step", ["0.001", "nan", "-1"])
def test_windows_refuses_a_step_below_one_hop(tmp_path, capsys, step):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "good.flac")
    assert windows(tmp_path, audio, step=step) == 2
    assert one_error_line(capsys, "windows") == (
        f"precompute windows: error: --step must be at least one STFT hop (0.0160 s), got {float(step)}"
    )
