import dataclasses
import json
import os
import re
import sys

import h5py
import numpy as np
import pytest

from audio_fixtures import TINY, read_arrays, run_tiny, write_dataset
from melshards.errors import ConfigError
from melshards.index import read_index
from melshards.names import INDEX_FILE
from precompute.audio import decode
from precompute.cli import main
from precompute.errors import AudioError
from precompute.mel import log_mel_of_power, mel_power, mel_power_frames
from precompute.run import run_windows
from precompute.windows import place_window


def test_features_end_to_end_with_two_jobs(tiny_run):
    out, paths, summary = tiny_run.out, tiny_run.paths, tiny_run.summary
    index = read_index(out)
    assert summary.failures == []
    # Every TP and FP row became exactly one example.
    assert index.n_examples == summary.examples == 9
    # shard_size 3: a shard takes whole recordings until it holds at least 3 windows
    assert [s.n for s in index.shards] == [3, 4, 2]
    data = read_arrays(out)
    anchors = sorted(
        zip(data["recording_id"].astype(str), data["anchor/line"], data["anchor/kind"], strict=True)
    )
    tp_lines = [
        (line.split(",")[0], i + 2) for i, line in enumerate(paths["tp"].read_text().splitlines()[1:])
    ]
    fp_lines = [
        (line.split(",")[0], i + 2) for i, line in enumerate(paths["fp"].read_text().splitlines()[1:])
    ]
    assert anchors == sorted([(r, n, 1) for r, n in tp_lines] + [(r, n, 0) for r, n in fp_lines])


def test_shard_round_trip_with_plain_h5py_equals_direct_computation(tiny_run):
    out, paths = tiny_run.out, tiny_run.paths
    with h5py.File(out / "shard-00000.h5", "r", locking=False) as h5:
        assert h5["mel"].dtype == np.float16 and h5["mel"].chunks == (1, 32, TINY.n_frames)
        assert h5["mel"].fletcher32
        assert h5.attrs["fingerprint"] == read_index(out).shards[0].fingerprint
        assert json.loads(h5.attrs["config"])["n_mels"] == 32
        rid = h5["recording_id"][0].decode()
        start = h5["start"][0]
        t_min, t_max = h5["anchor/t_min"][0], h5["anchor/t_max"][0]
        stored = h5["mel"][0]
        labels = h5["labels"][:]
        ex_of_event = h5["events/example"][:]
        ev_species = h5["events/species_id"][:]
    y = decode(paths["audio"] / f"{rid}.flac", sample_rate=16000)
    # share_frames (the default): the window starts on the hop grid, nearest to where the event
    # places it, and its values are those of its own samples computed alone: the recording's
    # shared frames inside, its own zero-padded frames at its edges.
    hop = TINY.hop_length
    placed = place_window(t_min, t_max, length=TINY.window_seconds, recording_seconds=8.0)
    frame = int(round(placed * 16000 / hop))
    assert start == frame * hop / 16000 and abs(start - placed) <= hop / 2 / 16000
    first = frame * hop
    alone = mel_power(y[first : first + int(TINY.window_seconds * 16000)], config=TINY)
    np.testing.assert_allclose(
        stored.astype(np.float32), log_mel_of_power(alone, config=TINY), rtol=0, atol=2.0**-11
    )
    shared = mel_power_frames(y, frame, TINY.n_frames, config=TINY)
    inner = slice(TINY.n_fft // (2 * hop), TINY.n_frames - TINY.n_fft // (2 * hop))
    np.testing.assert_allclose(shared[:, inner], alone[:, inner], rtol=1e-6)
    assert not np.allclose(shared[:, 0], alone[:, 0], rtol=1e-3)  # a shared edge frame sees real audio
    # rec0: TP sp0 [1,2], FP sp2 [1.2,1.8], TP sp1 [5,6.5]. Windows sorted by event time:
    # sp0 -> window [0, 2.5]: sp0 positive, sp2 confirmed negative, sp1 absent.
    np.testing.assert_array_equal(labels[0], [1, -1, 0, -1])
    assert sorted(ev_species[ex_of_event == 0].tolist()) == [0, 2]


def test_index_totals_and_stats(tiny_run):
    index = read_index(tiny_run.out)
    data = read_arrays(tiny_run.out)
    assert index.n_examples == len(data["mel"]) == tiny_run.summary.examples
    mel = data["mel"].astype(np.float64)
    np.testing.assert_allclose(index.stats.mean, mel.mean(axis=(0, 2)), atol=1e-5)
    np.testing.assert_allclose(index.stats.std, mel.std(axis=(0, 2)), atol=1e-4)


def test_rerun_reuses_every_shard_and_touching_a_file_rebuilds_only_its_shard(tmp_path):
    paths = write_dataset(tmp_path / "data")  # a dataset of its own: this test touches its audio
    out = tmp_path / "feat"
    first = run_tiny(paths, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5")}
    again = run_tiny(paths, out)
    assert (again.shards_built, again.shards_reused, again.slices_built) == (0, 3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5")} == before
    # rec3 lives in shard 2; a new mtime changes its identity.
    st = os.stat(paths["audio"] / "rec3.flac")
    os.utime(paths["audio"] / "rec3.flac", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = run_tiny(paths, out)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5")}
    assert (touched.shards_built, touched.shards_reused) == (1, 2)
    assert [name for name in sorted(after) if after[name] != before[name]] == ["shard-00002.h5"]
    assert read_index(out).n_examples == first.examples


def test_sliding_windows_feature_set(tone_dataset, tmp_path):
    paths = tone_dataset
    summary = run_windows(
        audio_dir=paths["audio"], out=tmp_path / "win", config=TINY, step=2.0, jobs=1, progress=False
    )
    index = read_index(tmp_path / "win")
    assert index.kind == "windows"
    # 8 s recordings, 2.5 s windows every 2 s: starts 0, 2, 4, 5.5 -> 4 per recording. On the
    # hop grid (16 ms) the last one starts at frame 343, the last whose window fits: 5.488 s.
    assert summary.examples == index.n_examples == 16
    data = read_arrays(tmp_path / "win")
    np.testing.assert_allclose(data["start"][:4], [0.0, 2.0, 4.0, 343 * 256 / 16000])
    alone = run_windows(
        audio_dir=paths["audio"],
        out=tmp_path / "win-alone",
        config=dataclasses.replace(TINY, share_frames=False),
        step=2.0,
        jobs=1,
        progress=False,
    )
    assert alone.examples == 16
    np.testing.assert_allclose(read_arrays(tmp_path / "win-alone")["start"][:4], [0.0, 2.0, 4.0, 5.5])
    assert (data["labels"] == -1).all() and (data["anchor/kind"] == -1).all()


def test_cli_exit_status_and_summary(tone_dataset, tmp_path, capsys):
    paths = tone_dataset
    config = tmp_path / "tiny.toml"
    config.write_text(
        'preset = "default"\nsample_rate = 16000\nn_fft = 512\nhop_length = 256\nn_mels = 32\n'
        "fmin = 50.0\nfmax = 8000.0\nduration = 2.0\ncontext = 0.25\nmin_overlap = 0.2\nn_classes = 4\n"
    )
    tp = tmp_path / "tp.csv"
    tp.write_text(paths["tp"].read_text() + "rec1,9,1,1,1,2,2\nmissing,1,1,1,1,2,2\n")
    args = [
        "features",
        "--audio-dir",
        str(paths["audio"]),
        "--tp",
        str(tp),
        "--out",
        str(tmp_path / "f"),
        "--config",
        str(config),
        "--jobs",
        "1",
        "--quiet",
    ]
    assert main(args) == 3
    captured = capsys.readouterr()
    # stdout: the one-line summary; stderr: the failures, as warnings (--quiet keeps them).
    assert captured.out.startswith("wrote 7 examples in 1 shards (")
    assert captured.out.endswith(f"2 failure(s) recorded in {tmp_path / 'f' / 'failures.jsonl'}\n")
    assert len(captured.out.splitlines()) == 1
    assert (
        captured.err.splitlines()[0] == "  failed: tp.csv line 9: species_id 9 is outside the class list 0..3"
    )
    failures = [json.loads(line) for line in (tmp_path / "f" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["rec1", "missing"]
    assert main([*args, "--on-error", "fail"]) == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == "precompute features: error: tp.csv line 9: species_id 9 is outside the class list 0..3\n"
    )
    assert (tmp_path / "f" / INDEX_FILE).is_file()  # the earlier good feature set is untouched


# -- cluster backends --------------------------------------------------------------------------


def assert_same_feature_set(ours, reference):
    """Every array of every shard, the index and failures.jsonl are equal."""
    got, expected = read_arrays(ours), read_arrays(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    a, b = read_index(ours), read_index(reference)
    assert (a.fingerprint, a.n_examples, a.shards, a.stats) == (
        b.fingerprint,
        b.n_examples,
        b.shards,
        b.stats,
    )
    assert (ours / "failures.jsonl").read_text() == (reference / "failures.jsonl").read_text()


def test_shard_bytes_do_not_depend_on_when_dataset_handles_close(tiny_run, tmp_path, monkeypatch):
    """Dask workers keep task frames (and their h5py handles) alive a while: same bytes anyway."""
    import h5py

    loky_out, paths = tiny_run.out, tiny_run.paths
    create, held = h5py.Group.create_dataset, []

    def create_and_hold(self, *args, **kwargs):
        dataset = create(self, *args, **kwargs)
        held.append(dataset)
        return dataset

    monkeypatch.setattr(h5py.Group, "create_dataset", create_and_hold)
    run_tiny(paths, tmp_path / "held")
    assert len(held) == 3 * 18  # every dataset of every shard stayed open until here
    assert read_index(tmp_path / "held").shards == read_index(loky_out).shards  # sha256 included


@pytest.fixture(scope="module")
def dask_cluster():
    """Two single-threaded worker processes; the tests join it by address like a remote cluster."""
    distributed = pytest.importorskip("distributed")
    environ = dict(os.environ)  # nannies leave their workers' variables in this process
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address
    os.environ.clear()
    os.environ.update(environ)


def test_dask_cluster_writes_the_loky_feature_set_and_resumes_it(tiny_run, tmp_path, dask_cluster):
    loky_out, paths, loky = tiny_run.out, tiny_run.paths, tiny_run.summary
    summary = run_tiny(paths, tmp_path / "dask", backend="dask", scheduler=dask_cluster)
    assert (summary.shards_built, summary.slices_built, summary.examples) == (3, 9, loky.examples)
    assert_same_feature_set(tmp_path / "dask", loky_out)
    # The shards are the same bytes, so loky resumes a Dask run and Dask resumes a loky run.
    again = run_tiny(paths, tmp_path / "dask", backend="dask", scheduler=dask_cluster)
    assert (again.shards_built, again.shards_reused, again.slices_built) == (0, 3, 0)
    assert run_tiny(paths, tmp_path / "dask", jobs=2).shards_built == 0


def test_dask_cluster_applies_the_fault_policy_like_loky(tmp_path, dask_cluster):
    paths = write_dataset(tmp_path / "data")
    (paths["audio"] / "rec1.flac").write_bytes(b"<html>not audio</html>" * 50)
    loky = run_tiny(paths, tmp_path / "loky", jobs=2)
    dask = run_tiny(paths, tmp_path / "dask", backend="dask", scheduler=dask_cluster)
    # rec1 holds two TP rows: both slices are recorded, every other slice is written.
    assert [(f["id"], f["error"], f["slices"]) for f in dask.failures] == [("rec1", "AudioError", 2)]
    assert "rec1.flac: not readable audio" in dask.failures[0]["message"]
    assert dask.failures == loky.failures and dask.examples == loky.examples == 7
    assert_same_feature_set(tmp_path / "dask", tmp_path / "loky")
    with pytest.raises(AudioError, match=r"rec1\.flac: not readable audio"):
        run_tiny(paths, tmp_path / "strict", backend="dask", scheduler=dask_cluster, on_error="fail")
    assert not (tmp_path / "strict" / INDEX_FILE).exists()


def test_dask_without_an_address_starts_and_stops_a_local_cluster(tiny_run, tmp_path):
    pytest.importorskip("distributed")
    loky_out, paths = tiny_run.out, tiny_run.paths
    environ = dict(os.environ)
    summary = run_tiny(paths, tmp_path / "dask", jobs=2, backend="dask")
    assert summary.shards_built == 3
    assert_same_feature_set(tmp_path / "dask", loky_out)
    assert dict(os.environ) == environ  # e.g. no MALLOC_TRIM_THRESHOLD_ left for later processes
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()


def test_ray_writes_the_loky_feature_set(tiny_run, tmp_path):
    ray = pytest.importorskip("ray")
    loky_out, paths = tiny_run.out, tiny_run.paths
    # Started here (not by the run) to keep Ray's start-up to two CPUs and to check that the run
    # leaves a Ray it did not start running.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_tiny(paths, tmp_path / "ray", jobs=2, backend="ray")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert (summary.shards_built, summary.slices_built) == (3, 9)
    assert_same_feature_set(tmp_path / "ray", loky_out)


@pytest.mark.parametrize(
    ("backend", "module", "package"),
    [("dask", "dask.distributed", "dask[distributed]"), ("ray", "ray.util.joblib", "ray")],
)
def test_a_missing_cluster_package_is_one_line_saying_what_to_install(
    tone_dataset, tmp_path, monkeypatch, capsys, backend, module, package
):
    paths = tone_dataset
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    message = (
        f"backend '{backend}' needs {package}, which is not installed here: "
        f"pip install '{package}'  (the project's [{backend}] extra)"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_tiny(paths, tmp_path / "x", backend=backend)
    args = [
        "features",
        "--audio-dir",
        str(paths["audio"]),
        "--tp",
        str(paths["tp"]),
        "--out",
        str(tmp_path / "f"),
    ]
    assert main([*args, "--backend", backend, "--quiet"]) == 2  # a user error: exit status 2
    assert capsys.readouterr().err.splitlines() == [f"precompute features: error: {message}"]
    assert not (tmp_path / "f").exists()  # refused before planning or writing anything


def test_scheduler_and_address_are_one_option_for_cluster_backends_only(tone_dataset, tmp_path):
    paths = tone_dataset
    from precompute.cli import build_parser

    args = ["features", "--audio-dir", "a", "--tp", "t.csv", "--out", "o", "--backend", "dask"]
    for flag in ("--address", "--scheduler"):
        parsed = build_parser().parse_args([*args, flag, "tcp://h:8786"])
        assert getattr(parsed, "run.scheduler") == "tcp://h:8786"
    with pytest.raises(
        ConfigError, match=r"--scheduler/--address 'tcp://h:8786' needs --backend dask or ray"
    ):
        run_tiny(paths, tmp_path / "x", scheduler="tcp://h:8786")
