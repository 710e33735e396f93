"""Planning: manifest rows as records, deduplication, shard packing, and planning at scale."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import HEADER, TINY
from melshards.errors import ConfigError
from melshards.names import EVENT_FP, EVENT_TP
from precompute.errors import ManifestError
from precompute.inputs.manifest import read_manifest
from precompute.inputs.row_table import ROW_DTYPE, Row, RowTable, drop_duplicates
from precompute.plan import plan_labelled, plan_manifests


def row(recording_id, t_min, *, species=1, kind=EVENT_TP, line=2, source="tp.csv", path=None):
    return Row(recording_id, species, 1, t_min, 100.0, t_min + 1.0, 900.0, kind, source, line, path)


def test_row_table_round_trips_rows_and_keeps_only_the_strings_it_uses():
    rows = [
        row("b", 2.5, line=2),
        row("a", 0.5, species=3, kind=EVENT_FP, line=7, source="fp.csv", path="sub/a.wav"),
        row("c", 1.0, line=3),
    ]
    table = RowTable.from_rows(iter(rows), chunk=2)
    assert table.data.dtype == ROW_DTYPE and table.data.itemsize == 57
    assert list(table) == rows
    assert (table.recording_ids, table.sources, table.paths) == (
        ("b", "a", "c"),
        ("tp.csv", "fp.csv"),
        (None, "sub/a.wav"),
    )
    part = table.take(np.array([2, 1]))
    assert list(part) == [rows[2], rows[1]]
    assert part.recording_ids == ("a", "c") and part.data["recording"].tolist() == [1, 0]
    assert part.keys() == [
        ["c", 1, 1, 1.0, 100.0, 2.0, 900.0, 1, "tp.csv", 3],
        ["a", 3, 1, 0.5, 100.0, 1.5, 900.0, 0, "fp.csv", 7],
    ]
    assert len(RowTable.from_rows([])) == 0


def test_duplicates_are_found_across_recordings_and_files_in_reading_order(tmp_path):
    (tmp_path / "tp.csv").write_text(
        HEADER + "r1,1,1,0.5,10,1.5,20\nr2,1,1,0.5,10,1.5,20\nr2,1,1,0.5,10,1.5,20\nr1,1,1,0.5,10,1.5,20\n"
    )
    (tmp_path / "fp.csv").write_text(HEADER + "r1,1,1,0.5,10,1.5,20\nr1,1,1,0.5,10,1.5,20\n")
    tp, _ = read_manifest(tmp_path / "tp.csv", kind=EVENT_TP, n_classes=4)
    fp, _ = read_manifest(tmp_path / "fp.csv", kind=EVENT_FP, n_classes=4)
    kept, dropped = drop_duplicates(RowTable.from_rows(tp + fp))
    # An FP row never duplicates a TP row: the kind is part of the content.
    assert [(r.source, r.line) for r in kept] == [("tp.csv", 2), ("tp.csv", 3), ("fp.csv", 2)]
    assert [f.to_record()["message"] for f in dropped] == [
        "tp.csv line 4: duplicate of tp.csv line 3",
        "tp.csv line 5: duplicate of tp.csv line 2",
        "fp.csv line 3: duplicate of fp.csv line 2",
    ]
    with pytest.raises(ManifestError, match="^tp.csv line 4: duplicate of tp.csv line 3$"):
        drop_duplicates(RowTable.from_rows(tp + fp), on_error="fail")


def test_a_recordings_rows_are_sorted_and_packed_whole(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.flac").touch()
    rows = [
        row("b", 3.0, line=2),
        row("a", 1.0, line=3),
        row("b", 1.0, line=4, species=2),
        row("b", 1.0, line=5, species=0, kind=EVENT_FP),
        row("b", 1.0, line=6, species=0),
        row("c", 0.0, line=7),
    ]
    jobs = plan_labelled(RowTable.from_rows(rows), audio_dir=tmp_path, config=TINY)  # shard_size 3
    assert [[t.recording_id for t in j.recordings] for j in jobs] == [["a", "b"], ["c"]]
    b = jobs[0].recordings[1]
    # by t_min, t_max, TP before FP, species
    assert [r.line for r in jobs[0].recording_rows(b)] == [6, 4, 5, 2]
    assert (b.n_windows, b.path, b.identity[0]) == (4, str(tmp_path / "b.flac"), 0)
    with pytest.raises(ConfigError, match=r"recording a: rows name different paths \['None', 'x.flac'\]"):
        plan_labelled(
            RowTable.from_rows([*rows, row("a", 5.0, path="x.flac")]), audio_dir=tmp_path, config=TINY
        )


def write_large_manifest(root, *, recordings, per_recording):
    """An RFCX-style manifest of ``recordings * per_recording`` rows and empty placeholder audio."""
    audio = root / "audio"
    audio.mkdir()
    lines = [HEADER]
    for r in range(recordings):
        name = f"{r:06d}"
        (audio / f"{name}.flac").touch()
        for k in range(per_recording):
            t_min = (k * 7919 % 5500) / 100
            lines.append(f"{name},{(r + k) % 4},1,{t_min},{500 + k},{t_min + 1.5},{2000 + k}\n")
    (root / "tp.csv").write_text("".join(lines))
    return audio


# Planning holds each row as a 54-byte record twice (as read, then sorted into the jobs) plus
# 8-byte index arrays: about 140 bytes per row measured, per-job objects included, plus a fixed
# part (a chunk of 16,384 rows in flight while reading). The design this replaced held a Python
# object per row and measured 510 bytes per row; with __slots__ such an object alone is over
# 200 bytes. The bound separates the two designs with room to spare on either side.
BYTES_PER_ROW, FIXED_BYTES = 200, 8e6


def test_planning_100k_rows_reads_no_audio_and_stays_within_seconds_and_bounded_memory(tmp_path, monkeypatch):
    # tracemalloc slows this allocation-heavy loop tenfold: 100,000 rows here, the 1,000,000-row
    # figures come from benchmarks/plan_bench.py.
    recordings, per_recording = 2000, 50
    n = recordings * per_recording
    audio = write_large_manifest(tmp_path, recordings=recordings, per_recording=per_recording)

    def no_audio(*args, **kwargs):
        raise AssertionError("planning opened an audio file")

    monkeypatch.setattr(sf, "SoundFile", no_audio)
    monkeypatch.setattr(sf, "info", no_audio)
    monkeypatch.setattr(sf, "read", no_audio)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        jobs, failures = plan_manifests(tmp_path / "tp.csv", None, audio_dir=audio, config=TINY)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert failures == []
    # 50 windows per recording reach TINY's shard_size of 3: one recording per shard.
    assert len(jobs) == recordings and sum(j.n_windows for j in jobs) == n
    assert [j.recordings[0].recording_id for j in jobs[:3]] == ["000000", "000001", "000002"]
    last = jobs[-1].recording_rows(jobs[-1].recordings[0])
    assert sorted(r.line for r in last) == list(range(n - per_recording + 2, n + 2))
    assert [r.t_min for r in last] == sorted(r.t_min for r in last)
    assert seconds < 60, seconds
    assert peak < FIXED_BYTES + BYTES_PER_ROW * n, f"{peak / n:.0f} bytes per row"
