"""Planning at scale: a 1,000,000-row RFCX-style manifest planned without reading audio.

- the manifest: ``recordings`` x ``per_recording`` TP rows, every recording an empty
  placeholder file (planning locates and stats each recording, it never opens one);
- planning is ``precompute.plan.plan_manifests`` (read, validate, deduplicate, group, locate,
  stat, fingerprint every shard job) with the default preset, run in a fresh process;
- figures: wall seconds and rows/s; the process's peak resident memory and its growth over the
  memory after imports, per row; with ``traced=True`` also tracemalloc's peak (which slows
  planning about tenfold, so it is a separate run).

``python -m benchmarks.plan_bench [--rows N] [--traced]`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"


def write_manifest(root: Path, *, recordings: int, per_recording: int, n_classes: int = 24) -> Path:
    """``root/tp.csv`` and ``root/audio/<id>.flac`` placeholders (0 bytes); returns the audio dir."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    with open(root / "tp.csv", "w") as fh:
        fh.write(HEADER)
        for r in range(recordings):
            name = f"{r:08x}"
            (audio / f"{name}.flac").touch()
            fh.writelines(
                f"{name},{(r + k) % n_classes},1,{(k * 7919 % 5500) / 100},{500 + k},"
                f"{(k * 7919 % 5500) / 100 + 1.5},{2000 + k}\n"
                for k in range(per_recording)
            )
    return audio


def _memory(field: str) -> int:
    """Bytes of ``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries it across ``execve``, so a child of a big process (the
    ``make bench`` driver) would report its parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _child(root: Path, *, traced: bool) -> dict:
    """Plan ``root``'s manifest in this (fresh) process and measure it."""
    import tracemalloc

    from precompute.config_files import preset
    from precompute.plan import plan_manifests

    config = preset("default")
    before = _memory("VmRSS")
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    plan, failures = plan_manifests(root / "tp.csv", None, audio_dir=root / "audio", config=config)
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
    peak = _memory("VmHWM")
    return {
        "jobs": len(plan),
        "windows": sum(job.n_windows for job in plan),
        "failures": len(failures),
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "rss_after_imports_bytes": before,
        "traced_peak_bytes": traced_peak,
    }


def run(
    work: Path | None = None, *, recordings: int = 20_000, per_recording: int = 50, traced: bool = False
) -> dict:
    """Write the manifest under ``work`` (a temporary directory by default), plan it, return figures."""
    own = work is None
    root = Path(tempfile.mkdtemp(prefix="plan-bench-")) if own else Path(work) / "plan-bench"
    try:
        started = time.perf_counter()
        write_manifest(root, recordings=recordings, per_recording=per_recording)
        written = time.perf_counter() - started
        cmd = [sys.executable, "-m", "benchmarks.plan_bench", "--child", str(root)]
        out = subprocess.run(
            cmd + (["--traced"] if traced else []), check=True, capture_output=True, text=True
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = recordings * per_recording
    grown = child["peak_rss_bytes"] - child["rss_after_imports_bytes"]
    figures = {
        "rows": rows,
        "recordings": recordings,
        "jobs": child["jobs"],
        "windows": child["windows"],
        "failures": child["failures"],
        "write_manifest_s": round(written, 2),
        "plan_s": round(child["seconds"], 2),
        "rows_per_s": round(rows / child["seconds"]),
        "peak_rss_mb": round(child["peak_rss_bytes"] / 1e6, 1),
        "rss_growth_mb": round(grown / 1e6, 1),
        "rss_growth_bytes_per_row": round(grown / rows, 1),
    }
    if child["traced_peak_bytes"] is not None:
        figures["traced_peak_mb"] = round(child["traced_peak_bytes"] / 1e6, 1)
        figures["traced_peak_bytes_per_row"] = round(child["traced_peak_bytes"] / rows, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="manifest rows (50 per recording)")
    parser.add_argument("--traced", action="store_true", help="also measure tracemalloc's peak (slow)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, traced=args.traced)))
        return 0
    print(json.dumps(run(recordings=max(1, args.rows // 50), traced=args.traced), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
