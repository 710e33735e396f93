"""The comparison of ``experiments.review_loop``'s strategies, round by round, as tables.

``compare`` makes one row per round and strategy from the runs' records (``round.json``: test
LWLRAP, answers, seconds), ``write_comparison`` writes them as ``loop.md`` and ``loop.csv``,
with the cost of a round against a fresh run of the same size (``cost_line``) when measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from melshards.files import atomic_write_text

STRATEGIES = ("uncertainty", "top", "random")  # experiments.review's, the control last
CONTROL = "random"
ANSWERS = ("yes", "no", "relabelled", "repeat")  # a round's answers (experiments.review_sim)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def compare(records: Sequence[Mapping[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """One row per round and strategy: test LWLRAP over seeds, the windows reviewed up to that
    round and the answers of the round (means over seeds), the round's seconds; and per round,
    beside each strategy, its paired difference with the control (strategy - random, seed by
    seed)."""
    rows = [_row("start (round 0)", 0, [x for x in records if x["round"] == 0], reviewed=0)]
    for r in range(1, rounds + 1):
        by = {s: _runs(records, r, s) for s in STRATEGIES}
        for strategy in (s for s in STRATEGIES if by[s]):  # a strategy not run has no row
            so_far = [
                x["reviewed"] for x in records if x.get("strategy") == strategy and 1 <= x["round"] <= r
            ]
            row = _row(strategy, r, by[strategy], reviewed=sum(so_far) / len(by[strategy]))
            if strategy != CONTROL and [x["seed"] for x in by[strategy]] == [x["seed"] for x in by[CONTROL]]:
                pairs = zip(by[strategy], by[CONTROL], strict=True)
                row["paired_gain"] = mean_std([a["test_lwlrap"] - b["test_lwlrap"] for a, b in pairs])
            rows.append(row)
    return rows


def _runs(records: Sequence[Mapping[str, Any]], r: int, strategy: str) -> list[Mapping[str, Any]]:
    """The records of round ``r`` of ``strategy``, by seed."""
    return sorted(
        (x for x in records if x["round"] == r and x.get("strategy") == strategy), key=lambda x: x["seed"]
    )


def _row(name: str, r: int, runs: Sequence[Mapping[str, Any]], *, reviewed: float) -> dict[str, Any]:
    values = [x["test_lwlrap"] for x in runs]
    row = {"round": r, "strategy": name, "seeds": len(runs), "values": values, "lwlrap": mean_std(values)}
    for key in ANSWERS + ("examples", "precompute_s", "train_s"):
        present = [x[key] for x in runs if key in x]
        row[key] = sum(present) / len(present) if present else None
    row["reviewed"] = reviewed
    return row


def write_comparison(rows: Sequence[Mapping[str, Any]], out: Path, *, cost: Mapping[str, Any] | None) -> Path:
    """``loop.md`` (and ``loop.csv``): the comparison as tables."""
    head = "| round | strategy | test LWLRAP (mean ± std) | per seed | minus random (paired) | reviewed | yes / no / relabelled / repeat | examples | precompute s | training s |"
    lines = [head, "|" + "---|" * 10]
    csv_lines = [
        "round,strategy,seeds,test_lwlrap_mean,test_lwlrap_std,reviewed,yes,no,relabelled,repeat,examples,precompute_s,train_s"
    ]
    for row in rows:
        mean, std = row["lwlrap"]
        gain = row.get("paired_gain")
        answers = " / ".join(_num(row[k], 1) for k in ANSWERS)
        lines.append(
            f"| {row['round']} | {row['strategy']} | {mean:.3f} ± {std:.3f} | {', '.join(f'{v:.3f}' for v in row['values'])} "
            f"| {f'{gain[0]:+.3f} ± {gain[1]:.3f}' if gain else ''} | {row['reviewed']:.0f} | {answers} "
            f"| {_num(row['examples'], 0)} | {_num(row['precompute_s'], 1)} | {_num(row['train_s'], 0)} |"
        )
        csv_lines.append(
            ",".join(
                str(v)
                for v in (
                    row["round"],
                    row["strategy"],
                    row["seeds"],
                    f"{mean:.6f}",
                    f"{std:.6f}",
                    f"{row['reviewed']:g}",
                )
            )
            + ","
            + ",".join(_num(row[k], 3) for k in ANSWERS + ("examples", "precompute_s", "train_s"))
        )
    if cost:
        lines += ["", cost_line(cost)]
    atomic_write_text(out / "loop.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(out / "loop.md", "\n".join(lines) + "\n")
    return out / "loop.md"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cost_line(cost: Mapping[str, Any]) -> str:
    round_s = cost["round_precompute_s"] + cost["round_train_s"]
    fresh_s = cost["fresh_precompute_s"] + cost["fresh_train_s"]
    return (
        f"A round ({cost['examples']} examples): precompute {cost['round_precompute_s']:.1f} s + training "
        f"{cost['round_train_s']:.0f} s = {round_s:.0f} s; a fresh run of the same size: precompute "
        f"{cost['fresh_precompute_s']:.1f} s + training {cost['fresh_train_s']:.0f} s = {fresh_s:.0f} s; "
        f"ratio {round_s / fresh_s:.2f}"
    )
