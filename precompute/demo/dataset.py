"""Writing the demo dataset: ``synthesize()`` checks its arguments, plans both splits, makes
the recordings (in parallel when asked) and writes the FLAC files, the CSVs and README.txt."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from melshards.checks import check_int
from melshards.errors import ConfigError
from precompute.demo.render import render_scene
from precompute.demo.scene import TICKS, Call, sample_scene
from precompute.demo.species import N_SPECIES, SPECIES
from precompute.demo.splits import SPLITS, STREAM_IDS, STREAM_LABELS, STREAM_RECORDING, Plan, plan_split

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")


@dataclass(frozen=True)
class _Task:
    """What a worker needs to make one recording: plain values, no handles."""

    split: str
    index: int
    recording_id: str
    plan: Plan
    seed: int
    sample_rate: int
    seconds: float
    path: str


def synthesize(
    out: str | Path,
    *,
    seed: int = 0,
    recordings: int = 96,
    test_recordings: int = 24,
    sample_rate: int = 48000,
    seconds: float = 60.0,
    label_fraction: float = 1.0,
    jobs: int = 1,
    progress: bool = True,
) -> dict:
    """Write a synthetic RFCX-style dataset into ``out``.

    Parameters
    ----------
    out : str or Path
        Output directory; created if missing. Files of an earlier run are overwritten.
    seed : int
        Everything written is a function of the seed and the other parameters (not of
        ``jobs``).
    recordings, test_recordings : int
        Number of train recordings (at least 1) and of test recordings (0 or more).
    sample_rate : int
        Samples per second, 32000..192000.
    seconds : float
        Length of every recording, 5..600 s; ``seconds * sample_rate`` must be whole.
    label_fraction : float in (0, 1]
        Share of the train recordings' species calls listed in ``train_tp.csv``
        (``sparse_labels``): below 1 the others stay in the audio unlabelled, as in RFCX,
        where most calls were never annotated. ``train_events.csv`` lists every call.
    jobs : int
        Worker processes (joblib); -1 for all cores.
    progress : bool
        Show one tqdm bar over all recordings.

    Returns
    -------
    summary : dict
        ``train_recordings``, ``test_recordings``, ``tp_rows``, ``fp_rows``, ``train_calls``
        (every species call in the train recordings, labelled or not),
        ``test_events``, ``tp_per_species`` and ``fp_per_species`` (lists of 24 counts),
        ``seconds`` (length of each recording), ``bytes`` (size of everything written) and
        ``elapsed_s``.

    Raises
    ------
    ConfigError
        An argument is out of range.
    """
    began = time.perf_counter()
    _check_arguments(
        seed=seed,
        recordings=recordings,
        test_recordings=test_recordings,
        sample_rate=sample_rate,
        seconds=seconds,
        label_fraction=label_fraction,
        jobs=jobs,
    )

    out = Path(out)
    ids = _recording_ids(seed=seed, count=recordings + test_recordings)
    split_ids = {"train": ids[:recordings], "test": ids[recordings:]}
    _refuse_foreign_recordings(out, split_ids)
    tasks = _tasks(out, split_ids, seed=seed, sample_rate=sample_rate, seconds=float(seconds))
    calls: dict[tuple[str, int], tuple[str, list[Call]]] = {}
    for task, made in _run(tasks, jobs=jobs, progress=progress):
        calls[(task.split, task.index)] = (task.recording_id, made)
    summary = {
        "train_recordings": recordings,
        "test_recordings": test_recordings,
        **_write_tables(out, calls, test_ids=split_ids["test"], label_fraction=label_fraction, seed=seed),
        "seconds": float(seconds),
    }
    _write_readme(out / "README.txt", seed=seed, sample_rate=sample_rate, summary=summary)
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["elapsed_s"] = time.perf_counter() - began
    return summary


def _write_tables(
    out: Path,
    calls: dict[tuple[str, int], tuple[str, list[Call]]],
    *,
    test_ids: list[str],
    label_fraction: float,
    seed: int,
) -> dict:
    """Write the CSV tables of both splits (``train_tp.csv`` keeping ``label_fraction`` of the
    calls); returns their counts, for ``synthesize``'s summary."""
    calls_tp, fp = _call_rows(calls, "train", "tp"), _call_rows(calls, "train", "fp")
    events = _call_rows(calls, "test", "tp")
    tp = sparse_labels(calls_tp, fraction=label_fraction, seed=seed)
    _write_csv(out / "train_tp.csv", COLUMNS, tp)
    _write_csv(out / "train_events.csv", COLUMNS, calls_tp)
    _write_csv(out / "train_fp.csv", COLUMNS, fp)
    present = {(row[0], row[1]) for row in events}
    truth = [(rid, *(int((rid, s) in present) for s in range(N_SPECIES))) for rid in sorted(test_ids)]
    _write_csv(out / "test_events.csv", COLUMNS, events)
    _write_csv(out / "test_ground_truth.csv", ("recording_id", *(f"s{s}" for s in range(N_SPECIES))), truth)
    return {
        "tp_rows": len(tp),
        "fp_rows": len(fp),
        "train_calls": len(calls_tp),
        "label_fraction": float(label_fraction),
        "test_events": len(events),
        "tp_per_species": [sum(1 for r in tp if r[1] == s) for s in range(N_SPECIES)],
        "fp_per_species": [sum(1 for r in fp if r[1] == s) for s in range(N_SPECIES)],
    }


def _tasks(
    out: Path, split_ids: dict[str, list[str]], *, seed: int, sample_rate: int, seconds: float
) -> list[_Task]:
    """One task per recording of each split, its folder made."""
    tasks = []
    for split, names in split_ids.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        plans = plan_split(seed=seed, split=split, count=len(names)) if names else []
        for index, (recording_id, plan) in enumerate(zip(names, plans, strict=True)):
            path = str(out / split / f"{recording_id}.flac")
            tasks.append(_Task(split, index, recording_id, plan, seed, sample_rate, seconds, path))
    return tasks


def _call_rows(calls: dict[tuple[str, int], tuple[str, list[Call]]], split: str, kind: str) -> list[tuple]:
    """Manifest rows (``COLUMNS``) of the ``kind`` calls of ``split``'s recordings, sorted by
    recording, start and species."""
    found = []
    for (where, _), (recording_id, made) in calls.items():
        if where == split:
            found += [(recording_id, c) for c in made if c.kind == kind]
    found.sort(key=lambda item: (item[0], item[1].start, item[1].species_id))
    return [
        (
            rid,
            c.species_id,
            c.songtype,
            f"{c.start / TICKS:.4f}",
            f"{c.f_min:.2f}",
            f"{c.stop / TICKS:.4f}",
            f"{c.f_max:.2f}",
        )
        for rid, c in found
    ]


def _check_arguments(
    *, seed, recordings, test_recordings, sample_rate, seconds, label_fraction, jobs
) -> None:
    """``synthesize``'s arguments, each checked; ConfigError names the first bad one."""
    for name, value, low, high in (
        ("seed", seed, 0, None),
        ("recordings", recordings, 1, None),
        ("test_recordings", test_recordings, 0, None),
        ("sample_rate", sample_rate, 32000, 192000),
        ("jobs", jobs, -1, None),
    ):
        check_int(name, value, low=low, high=high)
    if jobs == 0:
        raise ConfigError("jobs 0: use a positive number of workers, or -1 for all cores")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigError(f"seconds {seconds!r} is not a number")
    if not 5.0 <= seconds <= 600.0:
        raise ConfigError(f"seconds {seconds} is outside 5..600")
    if abs(seconds * sample_rate - round(seconds * sample_rate)) > 1e-6:
        raise ConfigError(f"seconds {seconds} times sample_rate {sample_rate} is not a whole count")
    if isinstance(label_fraction, bool) or not isinstance(label_fraction, (int, float)):
        raise ConfigError(f"label_fraction {label_fraction!r} is not a number")
    if not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"label_fraction {label_fraction} is outside (0, 1]")


def sparse_labels(rows: list[tuple], *, fraction: float, seed: int) -> list[tuple]:
    """``round(fraction * len(rows))`` of the manifest ``rows``, in their order, chosen by ``seed``.

    Every recording keeps at least one of its rows while the count allows (in RFCX every train
    recording has a label); the rest are drawn uniformly from the remaining rows.
    """
    keep_count = round(fraction * len(rows))
    if keep_count >= len(rows):
        return list(rows)
    rng = np.random.default_rng([seed, STREAM_LABELS])
    order = rng.permutation(len(rows))
    first_of: dict[str, int] = {}
    for i in order.tolist():
        first_of.setdefault(rows[i][0], i)
    chosen = list(first_of.values())[:keep_count]
    taken = set(chosen)
    chosen += [i for i in order.tolist() if i not in taken][: keep_count - len(chosen)]
    return [rows[i] for i in sorted(chosen)]


def _refuse_foreign_recordings(out: Path, split_ids: dict[str, list[str]]) -> None:
    """Refuse an output directory holding recordings this run would not write: left next to
    the new ones they would be taken for part of the dataset."""
    for split, names in split_ids.items():
        folder = out / split
        if not folder.is_dir():
            continue
        wanted = set(names)
        foreign = sorted(p.name for p in folder.glob("*.flac") if p.stem not in wanted)
        if foreign:
            raise ConfigError(
                f"{folder} holds {len(foreign)} recording(s) of another run (first: {foreign[0]}); "
                "write to an empty directory or remove it"
            )


def _run(tasks: list[_Task], *, jobs: int, progress: bool):
    """Yield ``(task, calls)`` as recordings finish, in any order, with one progress bar."""
    if jobs == 1:
        results = map(_make_recording, tasks)
    else:
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_make_recording)(task) for task in tasks
        )
    with tqdm(total=len(tasks), desc="demo-data", unit="rec", disable=not progress) as bar:
        for result in results:
            bar.update(1)
            yield result


def _recording_ids(*, seed: int, count: int) -> list[str]:
    """Distinct 9-digit hex ids (the RFCX form), train ids first."""
    rng = np.random.default_rng([seed, STREAM_IDS])
    values = rng.choice(16**9, size=count, replace=False)
    return [f"{int(v):09x}" for v in values]


def _make_recording(task: _Task) -> tuple[_Task, list[Call]]:
    """Sample, render and write one recording; returns its labelled calls (TP and FP)."""
    rng = np.random.default_rng([task.seed, STREAM_RECORDING, SPLITS[task.split], task.index])
    n_samples = round(task.seconds * task.sample_rate)
    scene = sample_scene(task.plan, rng=rng, sample_rate=task.sample_rate, n_samples=n_samples)
    audio = render_scene(scene, sample_rate=task.sample_rate, n_samples=n_samples)
    path = Path(task.path)
    partial = path.with_name(f".{path.name}.partial")
    sf.write(partial, audio, task.sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(partial, path)
    return task, [c for c in scene.calls if c.kind != "distractor"]


# -- writing ----------------------------------------------------------------------------------


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(partial, path)


def _write_readme(path: Path, *, seed: int, sample_rate: int, summary: dict) -> None:
    lines = [
        "Synthetic stand-in for the Rainforest Connection species audio detection data,",
        "written by `precompute demo-data` (precompute/demo/). Same layout as RFCX:",
        "",
        "  train/<recording_id>.flac   train recordings",
        "  train_tp.csv                labelled species calls (true positives)",
        "  train_events.csv            every species call in the train recordings, labelled or not",
        "  train_fp.csv                confusable look-alikes, labelled with the species they mimic",
        "  test/<recording_id>.flac    test recordings",
        "  test_ground_truth.csv       1 where a species calls in a test recording",
        "  test_events.csv             every species call in the test recordings",
        "",
        f"seed {seed}, {sample_rate} Hz mono 16-bit FLAC, {summary['seconds']:g} s per recording",
        f"train recordings {summary['train_recordings']}, TP rows {summary['tp_rows']}, "
        f"FP rows {summary['fp_rows']} ({summary['tp_rows']} of {summary['train_calls']} calls labelled)",
        f"test recordings {summary['test_recordings']}, test events {summary['test_events']}",
        "",
        "species (id: name, shape, band Hz, duration s, songtype):",
    ]
    lines += [
        f"  {i}: {s.name}, {s.shape}, {s.band[0]:g}-{s.band[1]:g}, "
        f"{s.duration[0]:g}-{s.duration[1]:g}, {s.songtype}"
        for i, s in enumerate(SPECIES)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
