"""The demo data written again in every other annotation format, as runnable examples.

    python -m precompute.demo_formats data/demo

reads ``data/demo`` (``train/``, ``train_tp.csv``, ``train_fp.csv``: ``make features``
makes them) and writes ``data/demo/formats/``:

- ``events.csv``, ``events_fp.csv``: the same events under other column names (``file``,
  ``label``, ``start``, ``end``, ``low_hz``, ``high_hz``, ``call_type``), species as names
  (``SPECIES_NAMES``), and an ``observer`` column that precompute ignores;
- ``raven/<recording>.Table.1.selections.txt``: one Raven selection table per recording,
  every selection listed once per view (``Waveform 1``, ``Spectrogram 1``) as Raven does;
- ``clips/<class>/<recording>_<n>.flac``: short clips cut around labelled calls, one folder
  per class (the anchor call's species), and ``clips.csv``: each clip's file (relative to
  ``clips/``) and every species calling in it, separated by ``;``.

``docs/annotations.md`` runs each of them through ``precompute features``. Deterministic:
the same demo data gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from commandline.console import EXIT_OK, report_error, setup_logging
from melshards.errors import ConfigError, MelShardsError

# A name per demo species id; names with spaces, as field guides write them.
SPECIES_NAMES = (
    "screaming piha", "white wren", "ant tanager", "cocoa thrush", "rufous motmot", "barred antshrike",
    "tink frog", "pale owl", "red cicada", "whistling tinamou", "spotted wood-quail", "trill frog",
    "dusky toucan", "click beetle", "howler monkey", "grey hawk", "slaty antwren", "buff woodcreeper",
    "glass frog", "long-tailed hermit", "black guan", "buzz cicada", "green ibis", "tree cricket",
)  # fmt: skip
EVENT_HEADER = ("file", "label", "start", "end", "low_hz", "high_hz", "call_type", "observer")
RAVEN_HEADER = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Species",
)  # fmt: skip
RAVEN_VIEWS = ("Waveform 1", "Spectrogram 1")


def species_name(species_id: int) -> str:
    """The demo name of a species id (``species <id>`` beyond the named ones)."""
    return SPECIES_NAMES[species_id] if 0 <= species_id < len(SPECIES_NAMES) else f"species {species_id}"


def read_events(path: Path) -> list[dict]:
    """The rows of an RFCX manifest as dicts of typed values, in file order."""
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found (run `make features` to make the demo data)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    numbers = ("t_min", "t_max", "f_min", "f_max")
    try:
        return [
            {
                "recording_id": r["recording_id"],
                "species_id": int(r["species_id"]),
                "songtype_id": int(r["songtype_id"]),
                **{k: float(r[k]) for k in numbers},
            }
            for r in rows
        ]
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{path}: not an RFCX manifest ({err})") from None


def write_event_csv(path: Path, events: list[dict]) -> None:
    """``events`` under the other column names of ``EVENT_HEADER``, species named."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(EVENT_HEADER)
        for e in events:
            out.writerow(
                [
                    f"{e['recording_id']}.flac",
                    species_name(e["species_id"]),
                    f"{e['t_min']:.4f}",
                    f"{e['t_max']:.4f}",
                    f"{e['f_min']:.2f}",
                    f"{e['f_max']:.2f}",
                    e["songtype_id"],
                    "demo",
                ]
            )


def write_raven_tables(folder: Path, events: list[dict]) -> int:
    """One selection table per recording, each selection once per view; returns the table count."""
    folder.mkdir(parents=True, exist_ok=True)
    by_recording: dict[str, list[dict]] = {}
    for e in events:
        by_recording.setdefault(e["recording_id"], []).append(e)
    for recording_id, rows in sorted(by_recording.items()):
        lines = ["\t".join(RAVEN_HEADER)]
        for number, e in enumerate(sorted(rows, key=lambda r: r["t_min"]), start=1):
            for view in RAVEN_VIEWS:
                values = (number, view, 1, f"{e['t_min']:.4f}", f"{e['t_max']:.4f}")
                values += (f"{e['f_min']:.2f}", f"{e['f_max']:.2f}", species_name(e["species_id"]))
                lines.append("\t".join(str(v) for v in values))
        (folder / f"{recording_id}.Table.1.selections.txt").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
    return len(by_recording)


def choose_clips(events: list[dict], *, per_class: int) -> list[dict]:
    """The first ``per_class`` calls of each species (in file order): the clips' anchors."""
    chosen, counts = [], {}
    for e in events:
        if counts.get(e["species_id"], 0) < per_class:
            counts[e["species_id"]] = counts.get(e["species_id"], 0) + 1
            chosen.append(e)
    return chosen


def write_clips(folder: Path, events: list[dict], *, audio_dir: Path, per_class: int, seconds: float) -> list:
    """Cut a ``seconds``-long clip around each chosen call into ``folder/<class>/``.

    Returns ``(relative file, labels)`` per clip: labels are the species of every call at least
    half inside the clip, anchor first, in name order after it.
    """
    clips = []
    for k, anchor in enumerate(choose_clips(events, per_class=per_class)):
        path = audio_dir / f"{anchor['recording_id']}.flac"
        info = sf.info(str(path))
        length = min(seconds, info.frames / info.samplerate)
        centre = 0.5 * (anchor["t_min"] + anchor["t_max"])
        start = min(max(centre - length / 2, 0.0), info.frames / info.samplerate - length)
        first, count = int(round(start * info.samplerate)), int(round(length * info.samplerate))
        samples, rate = sf.read(str(path), start=first, frames=count, dtype="float32")
        name = species_name(anchor["species_id"])
        relative = f"{name}/{anchor['recording_id']}_{k:03d}.flac"
        (folder / name).mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / relative), samples, rate, subtype="PCM_16")
        inside = [
            e["species_id"]
            for e in events
            if e["recording_id"] == anchor["recording_id"] and _inside_share(e, start, start + length) >= 0.5
        ]
        others = sorted({species_name(s) for s in inside} - {name})
        clips.append((relative, [name, *others]))
    return clips


def _inside_share(event: dict, start: float, end: float) -> float:
    overlap = min(event["t_max"], end) - max(event["t_min"], start)
    return max(overlap, 0.0) / max(event["t_max"] - event["t_min"], 1e-9)


def convert(
    demo: Path,
    *,
    out: Path | None = None,
    audio_dir: Path | None = None,
    tp: Path | None = None,
    fp: Path | None = None,
    per_class: int = 4,
    clip_seconds: float = 3.0,
) -> dict:
    """Write ``demo``'s annotations in every other format into ``out`` (default ``demo/formats``).

    Returns counts: ``events``, ``fp_events``, ``raven_tables``, ``clips``, and ``out``.
    """
    if per_class < 1 or not clip_seconds > 0:
        raise ConfigError(f"per_class must be >= 1 and clip_seconds > 0, got {per_class}, {clip_seconds}")
    out = out or demo / "formats"
    audio_dir = audio_dir or demo / "train"
    tp_events = read_events(tp or demo / "train_tp.csv")
    fp_path = fp or demo / "train_fp.csv"
    fp_events = read_events(fp_path) if fp_path.is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    write_event_csv(out / "events.csv", tp_events)
    write_event_csv(out / "events_fp.csv", fp_events)
    tables = write_raven_tables(out / "raven", tp_events)
    clips = write_clips(
        out / "clips", tp_events, audio_dir=audio_dir, per_class=per_class, seconds=clip_seconds
    )
    with open(out / "clips.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("file", "labels"))
        writer.writerows((relative, ";".join(labels)) for relative, labels in clips)
    multi = int(np.sum([len(labels) > 1 for _, labels in clips]))
    return {
        "out": out,
        "events": len(tp_events),
        "fp_events": len(fp_events),
        "raven_tables": tables,
        "clips": len(clips),
        "multi_label_clips": multi,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m precompute.demo_formats",
        description="Write the demo data's annotations as an event CSV, Raven tables and clip labels.",
    )
    p.add_argument("demo", type=Path, help="demo data folder (train/, train_tp.csv, train_fp.csv)")
    p.add_argument("--out", type=Path, help="where to write (default DEMO/formats)")
    p.add_argument("--per-class", type=int, default=4, help="clips cut per species (default 4)")
    p.add_argument("--clip-seconds", type=float, default=3.0, help="length of each clip (default 3)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        result = convert(args.demo, out=args.out, per_class=args.per_class, clip_seconds=args.clip_seconds)
    except (MelShardsError, OSError) as err:
        return report_error("precompute.demo_formats", err)
    print(
        f"wrote {result['events']} events (+{result['fp_events']} FP) to events.csv, "
        f"{result['raven_tables']} Raven tables, {result['clips']} clips "
        f"({result['multi_label_clips']} with several labels) to {result['out']}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
