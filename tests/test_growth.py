"""Shards stay put as a dataset grows: a run over a changed manifest rebuilds only the shards
whose recordings changed, leaves the others byte-identical, and says why it built each one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import HEADER, TINY, read_arrays, tone_recording
from melshards.errors import FormatError
from melshards.index import ShardEntry, read_index
from melshards.names import BUILT_FILE, INDEX_FILE
from precompute import resume, run
from precompute.plan import plan_manifests

SR = 16000
SECONDS = 3.0  # TINY's stored window is 2.5 s

# 30 recordings; every fourth has two rows, the others one. TINY's shard_size of 3 windows
# packs them into 12 shards.
IDS = [f"rec{k:02d}" for k in range(30)]
NEW_IDS = ["rec04b", "rec17b", "rec99"]  # 10% more, sorting between and after the others
LAST = "rec12"  # its rows are the last lines of the manifest


def rows_of(recording_id: str) -> list[str]:
    k = sum(recording_id.encode()) % 7
    species = k % 4
    lines = [f"{recording_id},{species},1,{0.2 + 0.1 * k},100,{0.9 + 0.1 * k},2000\n"]
    if recording_id in IDS and IDS.index(recording_id) % 4 == 0:
        lines.append(f"{recording_id},{(species + 1) % 4},1,1.5,100,2.4,2000\n")
    return lines


def write_audio(audio: Path, recording_id: str, seed: int) -> None:
    hz = 500.0 * (1 + sum(recording_id.encode()) % 4)
    y = tone_recording(SECONDS, sr=SR, tones=[(0.5, 1.5, hz)], seed=seed)
    sf.write(audio / f"{recording_id}.flac", y, SR, subtype="PCM_16")


def manifest_order() -> list[str]:
    """The recordings in manifest order: shuffled (by a fixed permutation), ``LAST`` at the end."""
    order = [IDS[(7 * k) % len(IDS)] for k in range(len(IDS))]
    order.remove(LAST)
    return [*order, LAST]


@pytest.fixture
def growth(tmp_path) -> dict[str, Path]:
    audio = tmp_path / "audio"
    audio.mkdir()
    for seed, recording_id in enumerate(IDS + NEW_IDS):
        write_audio(audio, recording_id, seed)
    tp = tmp_path / "train_tp.csv"
    tp.write_text(HEADER + "".join(line for rid in manifest_order() for line in rows_of(rid)))
    return {"audio": audio, "tp": tp, "out": tmp_path / "feat"}


def features(paths: dict[str, Path], out: Path | None = None, config=TINY) -> run.Summary:
    return run.run_features(
        audio_dir=paths["audio"],
        tp=paths["tp"],
        fp=None,
        out=out or paths["out"],
        config=config,
        jobs=1,
        progress=False,
    )


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.h5"))}


def layout(out: Path) -> list[tuple[str, tuple[str, ...]]]:
    return [(entry.file, entry.recordings) for entry in read_index(out).shards]


def examples_by_key(out: Path) -> dict[tuple, np.ndarray]:
    """Every stored example keyed by (recording, anchor line): the same set however it is sharded."""
    arrays = read_arrays(out)
    ids = [v.decode() if isinstance(v, bytes) else v for v in arrays["recording_id"]]
    return {
        (rid, int(line)): mel
        for rid, line, mel in zip(ids, arrays["anchor/line"], arrays["mel"], strict=True)
    }


def fresh_groups(sizes: list[int], shard_size: int) -> list[list[int]]:
    """The documented first-run rule: whole recordings in sorted order, a shard closed once it
    holds ``shard_size`` windows or more."""
    groups: list[list[int]] = [[]]
    count = 0
    for k, size in enumerate(sizes):
        if count >= shard_size:
            groups.append([])
            count = 0
        groups[-1].append(k)
        count += size
    return groups


def test_a_first_run_packs_sorted_recordings_and_the_index_lists_them(growth):
    summary = features(growth)
    windows = [len(rows_of(rid)) for rid in IDS]
    expected = [tuple(IDS[k] for k in group) for group in fresh_groups(windows, TINY.shard_size)]
    assert len(expected) == 12
    assert layout(growth["out"]) == [(f"shard-{k:05d}.h5", ids) for k, ids in enumerate(expected)]
    assert [e.n for e in read_index(growth["out"]).shards] == [
        sum(windows[IDS.index(r)] for r in ids) for ids in expected
    ]
    # A first run has nothing to compare with: its line reads as before.
    assert (summary.shards_built, summary.explained) == (12, False)
    assert "; 12 built) to " in summary.line()
    # The planner without an earlier plan gives the same jobs, fingerprints included.
    jobs, _ = plan_manifests(growth["tp"], None, audio_dir=growth["audio"], config=TINY)
    assert [(j.file, j.recording_ids) for j in jobs] == layout(growth["out"])
    assert [j.fingerprint for j in jobs] == [e.fingerprint for e in read_index(growth["out"]).shards]


def test_adding_ten_percent_new_recordings_rebuilds_one_shard_of_twelve(growth, tmp_path, caplog):
    features(growth)
    before = shard_hashes(growth["out"])
    with growth["tp"].open("a") as fh:  # new rows at the end: every old row keeps its line
        fh.write("".join(line for rid in NEW_IDS for line in rows_of(rid)))
    caplog.set_level("INFO", logger="melshards")
    summary = features(growth)
    after = shard_hashes(growth["out"])
    changed = sorted(name for name in after if before.get(name) != after[name])
    assert len(changed) <= 0.15 * len(after)
    assert changed == ["shard-00012.h5"]  # numbered after the highest shard
    assert {name: after[name] for name in before} == before  # every other shard byte for byte
    assert layout(growth["out"])[-1] == ("shard-00012.h5", tuple(NEW_IDS))
    assert (summary.shards_built, summary.shards_reused) == (1, 12)
    assert summary.rebuilt == [resume.Rebuilt("shard-00012.h5", resume.NEW, tuple(NEW_IDS))]
    assert "; 1 built: 1 for new recordings (rec04b rec17b rec99); 12 reused) to " in summary.line()
    assert "  shard-00012.h5: new recordings (rec04b rec17b rec99)" in caplog.text
    # The grown set holds exactly the examples a first run over the grown manifest computes.
    fresh = features(growth, out=tmp_path / "fresh")
    assert fresh.shards == 13 and fresh.explained is False
    grown, expected = examples_by_key(growth["out"]), examples_by_key(tmp_path / "fresh")
    assert grown.keys() == expected.keys()
    assert len(grown) == sum(len(rows_of(rid)) for rid in IDS + NEW_IDS) == 41
    for key, mel in expected.items():
        np.testing.assert_array_equal(grown[key], mel, err_msg=str(key))


def test_removing_a_recording_rebuilds_only_its_shard(growth):
    features(growth)
    before, shards = shard_hashes(growth["out"]), dict(layout(growth["out"]))
    [home] = [name for name, ids in shards.items() if LAST in ids]
    lines = growth["tp"].read_text().splitlines(keepends=True)
    growth["tp"].write_text("".join(line for line in lines if not line.startswith(f"{LAST},")))
    summary = features(growth)
    after = shard_hashes(growth["out"])
    assert sorted(name for name in after if before[name] != after[name]) == [home]
    assert dict(layout(growth["out"]))[home] == tuple(r for r in shards[home] if r != LAST)
    assert summary.rebuilt == [resume.Rebuilt(home, resume.REMOVED, (LAST,))]
    assert f"1 built: 1 for recordings removed ({LAST}); 11 reused" in summary.line()


def test_a_shard_whose_recordings_are_all_removed_is_dropped(growth):
    features(growth)
    last_shard, ids = layout(growth["out"])[-1]
    lines = growth["tp"].read_text().splitlines(keepends=True)
    # A blank line keeps the numbering of the lines below it.
    growth["tp"].write_text("".join("\n" if line.split(",")[0] in ids else line for line in lines))
    summary = features(growth)
    assert not (growth["out"] / last_shard).exists()
    assert [name for name, _ in layout(growth["out"])] == [f"shard-{k:05d}.h5" for k in range(11)]
    assert (summary.shards_built, summary.shards_reused, summary.shards) == (0, 11, 11)


def test_changed_rows_or_audio_rebuild_only_their_shards_and_are_named(growth):
    features(growth)
    before, shards = shard_hashes(growth["out"]), dict(layout(growth["out"]))
    # One row of rec07 changes in place (same line): its event now ends later.
    text = growth["tp"].read_text()
    old = rows_of("rec07")[0]
    assert text.count(old) == 1
    growth["tp"].write_text(text.replace(old, old.replace(",2000\n", ",2500\n")))
    # rec23's audio file gets a new modification time.
    st = os.stat(growth["audio"] / "rec23.flac")
    os.utime(growth["audio"] / "rec23.flac", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    summary = features(growth)
    home = {rid: name for name, ids in shards.items() for rid in ids}
    after = shard_hashes(growth["out"])
    assert sorted(name for name in after if before[name] != after[name]) == sorted(
        {home["rec07"], home["rec23"]}
    )
    assert sorted(summary.rebuilt, key=lambda r: r.file) == sorted(
        [
            resume.Rebuilt(home["rec07"], resume.ROWS, ("rec07",)),
            resume.Rebuilt(home["rec23"], resume.AUDIO, ("rec23",)),
        ],
        key=lambda r: r.file,
    )
    line = summary.line()
    assert "2 built: 1 for rows changed (rec07), 1 for audio file changed (rec23); 10 reused" in line


def test_a_new_config_plans_afresh(growth, tmp_path):
    features(growth)
    wider = dataclasses.replace(TINY, shard_size=5)
    summary = features(growth, config=wider)
    fresh = features(growth, out=tmp_path / "fresh", config=wider)
    assert layout(growth["out"]) == layout(tmp_path / "fresh")
    assert shard_hashes(growth["out"]) == shard_hashes(tmp_path / "fresh")
    assert summary.shards_built == fresh.shards_built == summary.shards
    assert {r.why for r in summary.rebuilt} == {resume.SETUP}
    assert f"{summary.shards} built: {summary.shards} for config/versions changed)" in summary.line()


def test_an_index_of_another_format_version_rebuilds_everything_and_says_why(growth):
    features(growth)
    index_path = growth["out"] / "index.json"
    data = json.loads(index_path.read_text())
    data["format"]["version"] -= 1
    index_path.write_text(json.dumps(data))
    (growth["out"] / BUILT_FILE).unlink()
    summary = features(growth)
    assert summary.shards_built == summary.shards
    assert {r.why for r in summary.rebuilt} == {resume.SETUP}


def test_the_index_alone_keeps_shards_in_place(growth):
    # A copy without hidden files (cp dir/*) has no .built.jsonl: the index's lists suffice.
    features(growth)
    (growth["out"] / BUILT_FILE).unlink()
    before = shard_hashes(growth["out"])
    with growth["tp"].open("a") as fh:
        fh.write("".join(rows_of("rec04b")))
    summary = features(growth)
    assert summary.rebuilt == [resume.Rebuilt("shard-00012.h5", resume.NEW, ("rec04b",))]
    assert {name: h for name, h in shard_hashes(growth["out"]).items() if name in before} == before


def test_a_resumed_run_plans_what_the_interrupted_one_planned(growth):
    features(growth)
    with growth["tp"].open("a") as fh:
        fh.write("".join(line for rid in NEW_IDS for line in rows_of(rid)))
    grown = features(growth, out=growth["out"])
    expected = layout(growth["out"])
    # As a run killed after planning leaves it: no index, the plan in .built.jsonl, the new
    # shard not yet written.
    (growth["out"] / INDEX_FILE).unlink()
    (growth["out"] / "shard-00012.h5").unlink()
    built = (growth["out"] / BUILT_FILE).read_text().splitlines()
    kept = [line for line in built if json.loads(line).get("file") != "shard-00012.h5"]
    (growth["out"] / BUILT_FILE).write_text("\n".join(kept) + "\n")
    prior = resume.read_prior(growth["out"])
    assert grown.rebuilt == [resume.Rebuilt("shard-00012.h5", resume.NEW, tuple(NEW_IDS))]
    assert prior.assignment(prior.setup) == {rid: int(name[6:11]) for name, ids in expected for rid in ids}
    resumed = features(growth)
    assert layout(growth["out"]) == expected
    assert resumed.rebuilt == [resume.Rebuilt("shard-00012.h5", resume.UNFINISHED)]
    assert "1 for left unfinished by an earlier run" in resumed.line()


def test_a_damaged_shard_is_named_as_such(growth):
    features(growth)
    path = growth["out"] / "shard-00003.h5"
    path.write_bytes(path.read_bytes()[:-10])
    summary = features(growth)
    assert summary.rebuilt == [resume.Rebuilt("shard-00003.h5", resume.DAMAGED)]


def test_a_recording_whose_audio_failed_is_listed_and_stays_in_its_shard(growth):
    (growth["audio"] / "rec05.flac").unlink()
    first = features(growth)
    assert [f["id"] for f in first.failures] == ["rec05"]
    shards = dict(layout(growth["out"]))
    [home] = [name for name, ids in shards.items() if "rec05" in ids]
    write_audio(growth["audio"], "rec05", seed=5)
    summary = features(growth)
    assert summary.rebuilt == [resume.Rebuilt(home, resume.AUDIO, ("rec05",))]
    assert dict(layout(growth["out"])) == shards and summary.failures == []


@pytest.mark.parametrize(
    ("recordings", "message"),
    [
        ("rec01", r"shards\[0\] recordings: expected a list of strings, got 'rec01'"),
        (["rec01", 2], r"shards\[0\] recordings: expected a list of strings, got \['rec01', 2\]"),
    ],
)
def test_shard_entry_recordings_are_validated(recordings, message):
    entry = {"file": "shard-00000.h5", "n": 1, "sha256": "0" * 64, "fingerprint": "f", "bytes": 10}
    assert ShardEntry.from_dict(entry, source="index.json shards[0]").recordings is None
    listed = ShardEntry.from_dict({**entry, "recordings": ["a", "b/c"]}, source="x")
    assert listed.recordings == ("a", "b/c") and listed.to_dict()["recordings"] == ["a", "b/c"]
    assert "recordings" not in ShardEntry.from_dict(entry, source="x").to_dict()
    with pytest.raises(FormatError, match=message):
        ShardEntry.from_dict({**entry, "recordings": recordings}, source="index.json shards[0]")


def test_an_index_nested_too_deep_is_rebuilt_not_a_traceback(growth):
    features(growth)
    index_path = growth["out"] / "index.json"
    index_path.write_text("[" * 200_000 + "]" * 200_000)
    (growth["out"] / BUILT_FILE).unlink()
    summary = features(growth)
    assert summary.shards_built == summary.shards
    assert {r.why for r in summary.rebuilt} == {resume.SETUP}
    assert json.loads(index_path.read_text())["n_examples"] == summary.examples
