"""``precompute preview``: two pictures of a feature set, from the command line.

    python -m experiments.preview features/demo --out features/demo-preview.png

``precompute preview ARGS`` runs this with the same arguments: the pictures show what the loader
feeds a model, so they (and matplotlib) live with the experiments (``experiments.pictures``),
and the precompute side imports none of it. Writes OUT, a grid of example spectrograms, and,
unless ``--no-augment``, the augmentation picture (``OUT-augment.png`` or ``--augment-out``);
prints one line on stdout. Exit status as for every command (``commandline.console``): 0; 2
with one line on stderr, ``precompute preview: error: ...``; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, plural, report_error, setup_logging
from commandline.flags import add_flag, build, groups
from commandline.parser import CommandParser
from melshards.errors import ConfigError, MelShardsError

PROG = "precompute preview"


@dataclasses.dataclass(frozen=True)
class PreviewOptions:
    """What to draw: each field is set by the flag of its name (``dest="preview.FIELD"``) and
    is the keyword of ``experiments.pictures.preview`` of the same name."""

    features: str
    out: Path
    per_class: int = 3
    classes: str | None = None
    augment_out: Path | None = None
    no_augment: bool = False
    seed: int = 0
    dpi: int = 100
    cache_dir: str | None = None


def build_parser() -> argparse.ArgumentParser:
    """``precompute preview``'s arguments, flags, defaults and help, in its order."""
    p = CommandParser(
        prog=PROG,
        description="Write two PNG pictures of a feature set: OUT, a grid of example spectrograms "
        "(one row per class, --per-class examples each, on true axes: seconds and Hz; dashed lines "
        "mark the crop the model sees, a box the labelled call), and OUT-augment.png (or "
        "--augment-out), the same few examples before and after the loader's default augmentation "
        "(loader.Augment(): time shift, gain, SpecAugment masks).",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or log lines (errors still print)"
    )
    add_flag(
        p,
        "--cache-dir",
        field="preview.cache_dir",
        help="for a feature set at a URL: where its shards are cached (default $MELSHARDS_CACHE "
        "or ~/.cache/melshards)",
    )
    p.add_argument(
        "preview.features", metavar="features", help="feature set directory or URL (s3://, gs://, https://)"
    )
    add_flag(
        p, "--out", field="preview.out", type=Path, required=True, help="PNG file to write, e.g. preview.png"
    )
    add_flag(
        p,
        "--per-class",
        field="preview.per_class",
        type=int,
        default=3,
        help="examples per class (default 3)",
    )
    add_flag(p, "--classes", field="preview.classes", help="classes to show, e.g. 0-5,9 (default: all)")
    add_flag(
        p,
        "--augment-out",
        field="preview.augment_out",
        type=Path,
        help="where to write the augmentation picture (default: OUT's name + -augment.png)",
    )
    add_flag(
        p,
        "--no-augment",
        field="preview.no_augment",
        action="store_true",
        help="skip the augmentation picture",
    )
    add_flag(
        p,
        "--seed",
        field="preview.seed",
        type=int,
        default=0,
        help="seed of the augmentation draws (default 0)",
    )
    add_flag(p, "--dpi", field="preview.dpi", type=int, default=100, help="pixels per inch (default 100)")
    return p


def draw(options: PreviewOptions) -> int:
    """Write the pictures ``options`` ask for and print what was written."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("precompute preview draws with matplotlib: pip install 'melshards[plots]'")
    from experiments.pictures import preview

    started = time.perf_counter()
    log.info(f"drawing examples of {options.features}")
    written = preview(
        options.features,
        out=options.out,
        per_class=options.per_class,
        classes=options.classes,
        augment_out=False if options.no_augment else options.augment_out,
        seed=options.seed,
        dpi=options.dpi,
        cache_dir=options.cache_dir,
    )
    width, height = written["size"]
    line = (
        f"wrote {written['out']} ({width}x{height} px, {plural(written['rows'], 'row')} of up to "
        f"{plural(options.per_class, 'example')})"
    )
    if "augment_out" in written:
        line += f" and {written['augment_out']} (augmentation)"
    print(f"{line} in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    values = groups(build_parser().parse_args(argv))
    setup_logging(quiet=values[""]["quiet"])
    try:
        return draw(build(PreviewOptions, values["preview"]))
    except BrokenPipeError:
        # The reader went away: not an error; silence the flush at exit that would complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (MelShardsError, OSError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        # The words of every precompute command's interruption.
        print(f"{PROG}: interrupted; no picture written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
