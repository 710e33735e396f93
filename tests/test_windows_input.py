"""What ``precompute windows`` reads: every audio file under --audio-dir, sub-folders included
(a recording's id is its relative path without the extension), or the files a --files list
names; and how its shards stay put when recordings are added."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import soundfile as sf
from test_cli import TINY_SET

from audio_fixtures import TINY, read_arrays, tone_recording
from melshards.errors import ConfigError
from melshards.index import read_index
from precompute import resume, run
from precompute.cli import main
from precompute.inputs.audio_files import list_audio

SR = 16000
# Four recordings: two of one name in different folders, one two folders deep, one a WAV.
FILES = ("a.flac", "site1/a.flac", "site1/deep/b.wav", "site2/c.flac")
IDS = ("a", "site1/a", "site1/deep/b", "site2/c")
STEP = 2.0  # over 3 s with TINY's 2.5 s window: starts 0 and 0.5 s


def write_tree(audio: Path, files=FILES) -> None:
    for seed, name in enumerate(files):
        path = audio / name
        path.parent.mkdir(parents=True, exist_ok=True)
        y = tone_recording(3.0, sr=SR, tones=[(0.5, 1.5, 500.0 * (seed + 1))], seed=seed)
        sf.write(path, y, SR, subtype="PCM_16")


def windows_cli(audio: Path, out: Path, *extra: str) -> int:
    argv = ["windows", "--audio-dir", str(audio), "--out", str(out), "--step", str(STEP), "--jobs", "1"]
    return main([*argv, "--quiet", *TINY_SET, *extra])


def stored(out: Path) -> list[tuple[str, float]]:
    arrays = read_arrays(out)
    return list(zip(arrays["recording_id"].astype(str).tolist(), arrays["start"].tolist(), strict=True))


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0].removeprefix("precompute windows: error: ")


def test_windows_reads_sub_folders_with_the_relative_path_as_id(tmp_path):
    audio, out = tmp_path / "audio", tmp_path / "out"
    write_tree(audio)
    (audio / "notes.txt").write_text("not audio")
    assert windows_cli(audio, out) == 0
    starts = [0.0, 31 * 256 / SR]  # 0.5 s, on the hop grid
    assert stored(out) == [(rid, t) for rid in IDS for t in starts]
    # Two recordings per shard (2 windows each, shard_size 3), listed in the index.
    assert [(e.file, e.recordings) for e in read_index(out).shards] == [
        ("shard-00000.h5", ("a", "site1/a")),
        ("shard-00001.h5", ("site1/deep/b", "site2/c")),
    ]


def test_list_audio_sorts_by_relative_path_and_refuses_two_files_of_one_id(tmp_path):
    audio = tmp_path / "audio"
    write_tree(audio)
    assert list_audio(audio) == [(rid, audio / name) for rid, name in zip(IDS, FILES, strict=True)]
    sf.write(audio / "site1" / "a.wav", tone_recording(3.0, sr=SR, tones=[]), SR)
    with pytest.raises(ConfigError) as caught:
        list_audio(audio)
    assert str(caught.value) == (
        f"{audio}: recordings site1/a.flac and site1/a.wav share the id 'site1/a'; rename or remove one"
    )


def test_a_linked_folder_is_not_walked(tmp_path):
    audio, elsewhere = tmp_path / "audio", tmp_path / "elsewhere"
    write_tree(audio, files=("a.flac",))
    write_tree(elsewhere, files=("x.flac",))
    (audio / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert [rid for rid, _ in list_audio(audio)] == ["a"]


def test_a_file_list_reads_only_what_it_names(tmp_path, capsys):
    audio, out = tmp_path / "audio", tmp_path / "out"
    write_tree(audio)
    listing = tmp_path / "test-files.txt"
    listing.write_text(
        "# the recordings of site 1\n\n./site1/a.flac\n  site1/deep/b.wav  \n\n# and one more\na.flac\n"
    )
    assert windows_cli(audio, out, "--files", str(listing)) == 0
    assert sorted({rid for rid, _ in stored(out)}) == ["a", "site1/a", "site1/deep/b"]
    assert read_index(out).source["files"] == str(listing)


@pytest.mark.parametrize(
    ("listed", "problem"),
    [
        ("site1/a.flac\n# a comment\n\nsite1/x.flac\n", " line 4: {audio}/site1/x.flac: no such file"),
        ("site1\n", " line 1: 'site1' is not an audio file (.flac, .wav, .ogg, .mp3, .aiff, .aif)"),
        ("site1/a.flac\n\nsite1/a.flac\n", " line 3: site1/a.flac is listed twice (first on line 1)"),
        (
            "../audio/a.flac\n",
            " line 1: '../audio/a.flac' leaves the audio directory; list paths relative to it",
        ),
        ("/etc/a.flac\n", " line 1: '/etc/a.flac' leaves the audio directory; list paths relative to it"),
        ("site1/a.flac\nsite1/a.wav\n", " line 2: {audio}/site1/a.wav: no such file"),
        ("# nothing\n\n", ": no audio files (.flac, .wav, .ogg, .mp3, .aiff, .aif)"),
    ],
)
def test_a_bad_file_list_is_one_line_naming_its_line(tmp_path, capsys, listed, problem):
    audio, out = tmp_path / "audio", tmp_path / "out"
    write_tree(audio)
    listing = tmp_path / "files.txt"
    listing.write_text(listed)
    assert windows_cli(audio, out, "--files", str(listing)) == 2
    assert one_error(capsys) == f"{listing}" + problem.format(audio=audio)
    assert not out.exists()


def test_a_missing_file_list_is_one_line(tmp_path, capsys):
    audio = tmp_path / "audio"
    write_tree(audio)
    assert windows_cli(audio, tmp_path / "out", "--files", str(tmp_path / "nope.txt")) == 2
    assert one_error(capsys) == f"{tmp_path / 'nope.txt'}: file list not found"


def test_a_new_recording_in_a_sub_folder_adds_a_shard_and_leaves_the_others(tmp_path):
    audio, out = tmp_path / "audio", tmp_path / "out"
    write_tree(audio)

    def windows() -> run.Summary:
        return run.run_windows(audio_dir=audio, out=out, config=TINY, step=STEP, jobs=1, progress=False)

    windows()
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.h5")}
    write_tree(audio, files=("site1/aa.flac",))  # sorts between site1/a and site1/deep/b
    summary = windows()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.h5")}
    assert {name: after[name] for name in before} == before
    assert sorted(after) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert summary.rebuilt == [resume.Rebuilt("shard-00002.h5", resume.NEW, ("site1/aa",))]
    assert read_index(out).shards[2].recordings == ("site1/aa",)
    # A new step is a new setup: every shard is planned and built afresh.
    os.remove(audio / "site1" / "aa.flac")
    again = run.run_windows(audio_dir=audio, out=out, config=TINY, step=0.25, jobs=1, progress=False)
    assert {r.why for r in again.rebuilt} == {resume.SETUP}
    assert [e.recordings for e in read_index(out).shards] == [
        ("a",),
        ("site1/a",),
        ("site1/deep/b",),
        ("site2/c",),
    ]
