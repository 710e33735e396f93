"""A run that cannot be tricked: finite values only, every byte checksummed, no laundering on
resume, no writing through planted links, storage errors as one line, files that follow the umask."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from test_cli import TINY_SET, features_argv

from audio_fixtures import read_arrays, run_tiny, tone_recording
from loader import ShardSequence
from loader.feature_set import FeatureSet
from melshards import names
from melshards.errors import FormatError, IntegrityError
from melshards.files import atomic_write_text
from melshards.index import read_index
from melshards.shard_read import read_anchors
from melshards.verify import verify
from precompute.cli import main


def one_error_line(err: str, command: str = "features") -> str:
    """The single stderr line of a user error, without its prefix."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"precompute {command}: error: "), err
    return lines[0].removeprefix(f"precompute {command}: error: ")


def all_finite(root: Path) -> bool:
    arrays = read_arrays(root)
    index = read_index(root)
    values = [*index.stats.mean, *index.stats.std]
    return (
        all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
        and np.isfinite(values).all()
    )


# -- finite or failed ----------------------------------------------------------------------------


def test_huge_samples_are_a_recorded_failure_and_nothing_non_finite_is_written(
    tone_dataset, tmp_path, capsys
):
    paths = {**tone_dataset, "audio": tmp_path / "audio"}
    shutil.copytree(tone_dataset["audio"], paths["audio"])
    # Finite float samples, but so large that their power overflows float32.
    loud = tone_recording(8.0, sr=16000, tones=[(1.0, 2.0, 500.0)]) * np.float32(1e20)
    (paths["audio"] / "rec0.flac").unlink()
    sf.write(paths["audio"] / "rec0.wav", loud, 16000, subtype="FLOAT")
    out = tmp_path / "f"
    assert main(features_argv(paths, out, "-q")) == 3
    failures = [json.loads(line) for line in (out / names.FAILURES_FILE).read_text().splitlines()]
    assert [(f["id"], f["slices"]) for f in failures] == [("rec0", 3)]
    assert re.fullmatch(
        r".*rec0\.wav: the log-mel of the window at \d+\.\d{3} s is not finite \(sample peak 3\.\d+e\+19; "
        r"audio is expected within \[-1, 1\]\)",
        failures[0]["message"],
    )
    index = read_index(out)
    assert index.n_examples == 6  # the 9 rows less rec0's 3
    assert all_finite(out)
    assert verify(out) == []
    capsys.readouterr()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("top_db=nan", "config top_db must be finite, got nan"),
        ("power=nan", "config power must be finite, got nan"),
        ("duration=nan", "config duration must be finite, got nan"),
        ("duration=inf", "config duration must be finite, got inf"),
        ("context=nan", "config context must be finite, got nan"),
        ("shard_size=1e20", "--set shard_size=1e20: shard_size must be an integer (examples)"),
        ("shard_size=100000000000000000000", "config shard_size must be in [1, 1e+06]"),
        ("n_mels=100000", "config n_mels must be in [1, 1024], got 100000"),
        ("hop_length=1", "config gives examples of 32 x 4808001 values, more than 67108864"),
    ],
)
def test_config_values_are_checked_before_anything_runs(tone_dataset, tmp_path, capsys, setting, message):
    out = tmp_path / "f"
    argv = features_argv(tone_dataset, out, "-q", f"--set={setting}")
    if setting.startswith("hop_length"):
        argv += ["--set=duration=300", "--set=n_fft=16"]
    assert main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_the_loader_refuses_non_finite_statistics(tiny_run, tmp_path):
    root = tmp_path / "feat"
    shutil.copytree(tiny_run.out, root)
    data = json.loads((root / names.INDEX_FILE).read_text())
    data["stats"]["mean"][5] = float("nan")
    (root / names.INDEX_FILE).write_text(json.dumps(data))  # json writes the bare token NaN
    with pytest.raises(FormatError, match=r"index\.json stats mean: value 5 is nan, not a finite number"):
        ShardSequence(root, split="all")
    assert any("value 5 is nan" in p for p in verify(root))


# -- every byte covered, nothing laundered -------------------------------------------------------


def flip_byte(path: Path, dataset: str) -> None:
    """Invert the first stored byte of ``dataset``'s first chunk, in place (size unchanged)."""
    with h5py.File(path, "r", locking=False) as h5:
        info = h5[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        byte = fh.read(1)
        fh.seek(info.byte_offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("dataset", names.SHARD_DATASETS)
def test_a_flipped_byte_in_any_dataset_is_caught_and_a_rerun_rebuilds_the_shard(
    tiny_run, tmp_path, dataset, caplog
):
    root = tmp_path / "feat"
    shutil.copytree(tiny_run.out, root)
    flip_byte(root / "shard-00001.h5", dataset)

    if dataset == names.MEL:  # read on demand, checked by the loader on first read
        seq = ShardSequence(root, split="all", batch_size=3, shuffle=False, augment=None)
        with seq, pytest.raises(IntegrityError, match=r"shard-00001\.h5"):
            for i in range(len(seq)):
                seq[i]
    elif dataset.startswith(f"{names.ANCHOR}/"):  # read by pictures and reports, not by training
        h5 = h5py.File(root / "shard-00001.h5", "r", locking=False)
        with h5, pytest.raises(IntegrityError, match=rf"dataset '{dataset}' fails its checksum"):
            read_anchors(h5)
    else:  # read when the feature set opens, through HDF5's checksum
        with pytest.raises(IntegrityError, match=rf"shard-00001\.h5: dataset '{dataset}' fails its checksum"):
            FeatureSet(root)
    assert any("shard-00001.h5" in p for p in verify(root))

    summary = run_tiny(tiny_run.paths, root)
    assert (summary.shards_built, summary.shards_reused) == (1, 2)
    assert "shard-00001.h5: its bytes disagree with the sha256 recorded when it was built; rebuilding it" in (
        caplog.text
    )
    assert verify(root) == []
    expected, got = read_arrays(tiny_run.out), read_arrays(root)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert read_index(root).shards == read_index(tiny_run.out).shards


def test_a_truncated_shard_is_rebuilt_not_rehashed(tiny_run, tmp_path):
    root = tmp_path / "feat"
    shutil.copytree(tiny_run.out, root)
    path = root / "shard-00002.h5"
    path.write_bytes(path.read_bytes()[:-100])
    summary = run_tiny(tiny_run.paths, root)
    assert (summary.shards_built, summary.shards_reused) == (1, 2)
    assert read_index(root).shards == read_index(tiny_run.out).shards


def test_a_shard_whose_recordings_all_failed_is_listed_and_verifies(tone_dataset, tmp_path):
    paths = {**tone_dataset, "audio": tmp_path / "audio"}
    shutil.copytree(tone_dataset["audio"], paths["audio"])
    (paths["audio"] / "rec0.flac").unlink()  # shard 0 holds rec0 alone
    out = tmp_path / "f"
    first = run_tiny(paths, out)
    assert [(e.file, e.n) for e in read_index(out).shards] == [
        ("shard-00000.h5", 0),
        ("shard-00001.h5", 4),
        ("shard-00002.h5", 2),
    ]
    assert len(first.failures) == 1
    assert verify(out) == []
    again = run_tiny(paths, out)
    assert (again.shards_built, again.shards_reused, len(again.failures)) == (0, 3, 1)
    with ShardSequence(out, split="all", batch_size=2, shuffle=False, augment=None) as seq:
        assert seq.features.n_examples == 6
        assert sum(seq[i][0].shape[0] for i in range(len(seq))) == 6


# -- hostile paths -------------------------------------------------------------------------------


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tone_dataset, tmp_path, capsys):
    out = tmp_path / "f"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / names.LOCK_FILE).symlink_to(victim)
    assert main(features_argv(tone_dataset, out, "-q")) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"{out / names.LOCK_FILE}: is a symbolic link; refusing to write through it (remove it)"
    )
    assert victim.read_text() == "precious\n"
    assert not (out / names.INDEX_FILE).exists()


def test_a_lock_file_that_is_a_fifo_is_refused(tone_dataset, tmp_path, capsys):
    out = tmp_path / "f"
    out.mkdir()
    os.mkfifo(out / names.LOCK_FILE)
    assert main(features_argv(tone_dataset, out, "-q")) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"{out / names.LOCK_FILE}: is not a regular file; refusing to use it as the lock (remove it)"
    )


def test_a_shard_that_is_a_symlink_is_refused(tiny_run, tmp_path):
    root = tmp_path / "feat"
    shutil.copytree(tiny_run.out, root)
    outside = tmp_path / "elsewhere.h5"
    (root / "shard-00001.h5").rename(outside)
    (root / "shard-00001.h5").symlink_to(outside)
    with pytest.raises(FormatError, match=r"shard-00001\.h5: shard is a symbolic link; refusing it"):
        ShardSequence(root, split="all")
    assert [p for p in verify(root) if "shard-00001" in p] == [
        f"{root / 'shard-00001.h5'}: shard is a symbolic link; refusing it (copy the file into the feature "
        "directory)"
    ]


def test_a_temp_name_planted_as_a_link_is_replaced_not_followed(tone_dataset, tmp_path):
    from melshards.files import temp_name

    out = tmp_path / "f"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    temp_name(out / "shard-00000.h5").symlink_to(victim)  # the name this process would write
    run_tiny(tone_dataset, out)
    assert victim.read_text() == "precious\n"
    assert verify(out) == []


def test_windows_over_a_labelled_set_needs_overwrite(tiny_run, tone_dataset, tmp_path, capsys):
    root = tmp_path / "feat"
    shutil.copytree(tiny_run.out, root)
    before = read_index(root)
    argv = ["windows", "--audio-dir", str(tone_dataset["audio"]), "--out", str(root), "--jobs", "1", "-q"]
    argv += [*TINY_SET, "--step", "4"]
    assert main(argv) == 2
    assert one_error_line(capsys.readouterr().err, "windows") == (
        f"{root}: holds a labelled feature set; writing windows features there would replace it "
        "(pass --overwrite, or choose another --out)"
    )
    assert read_index(root) == before
    assert main([*argv, "--overwrite"]) == 0
    assert read_index(root).kind == names.SET_WINDOWS


# -- storage errors ------------------------------------------------------------------------------

RUN_FEATURES = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from precompute.cli import main
from test_cli import features_argv
paths = {{k: Path(v) for k, v in {paths!r}.items()}}
sys.exit(main(features_argv(paths, Path({out!r}), "-q")))
"""


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 192 KiB tmpfs (room for about two TINY shards), unmounted after the test."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def run_cli(paths: dict, out: Path) -> subprocess.CompletedProcess:
    """``precompute features`` on ``paths`` with the TINY options, in a process of its own."""
    script = RUN_FEATURES.format(
        tests=str(Path(__file__).parent), paths={k: str(v) for k, v in paths.items()}, out=str(out)
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_disk_full_is_one_line_and_resume_gives_identical_bytes(tone_dataset, small_tmpfs, tmp_path):
    out = small_tmpfs / "feat"
    proc = run_cli(tone_dataset, out)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert re.fullmatch(
        rf"{re.escape(str(out))}/\S+: cannot write: No space left on device; finished shards are kept, "
        "free space and run again to resume",
        line,
    ), line
    assert not (out / names.INDEX_FILE).exists()
    kept = sorted(p.name for p in out.glob("shard-*.h5"))
    assert kept and not list(out.glob(".*.tmp"))

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    proc = run_cli(tone_dataset, out)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(kept)} reused" in proc.stdout, proc.stdout
    reference = tmp_path / "reference"
    assert run_cli(tone_dataset, reference).returncode == 0
    assert read_index(out).shards == read_index(reference).shards
    assert verify(out) == []


# -- files a run writes --------------------------------------------------------------------------


def test_files_follow_the_umask(tone_dataset, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "f"
        run_tiny(tone_dataset, out)
        atomic_write_text(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(previous)
    written = [p for p in out.iterdir() if p.name != names.LOCK_FILE] + [tmp_path / "metrics.json"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes == dict.fromkeys(modes, 0o644)
    assert {names.INDEX_FILE, names.FAILURES_FILE, names.BUILT_FILE, "shard-00000.h5"} <= set(modes)

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "submission.csv", "a\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "submission.csv").stat().st_mode) == 0o640
