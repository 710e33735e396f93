"""The class list of a labelled run: names, order, and the class index of every label.

A label is what an annotation names: a species id (``3``) or a name (``"Turdus merula"``).
Numeric ids are named ``s<id>`` (RFCX's submission columns ``s0..s23``); other labels keep
their text. A label taken as written (``ClassCoder.code(..., verbatim=True)``, a class
folder's name) is a class name, never an id: ``3`` is class ``3``. With the
``species_songtype`` scheme a class is a (label, songtype) pair, named ``<label>_t<songtype>``
(``s3_t1``): RFCX's 26 classes.

Where the list comes from (``ClassSpec``):

- ``names`` given: that list, in that order; a label outside it rejects its row;
- ``count`` given (a config's ``n_classes``): numeric ids ``0..count-1``, names ``s0..``; a
  label that is not an integer, or lies outside, rejects its row;
- neither: from the data. Numeric ids only: ``s0..s<max id>`` (every id keeps its column,
  a gap becomes a class without examples); otherwise the names found, in natural order
  (``s2`` before ``s10``, then text by code point).

Labels are read as a stream: ``ClassCoder.code`` gives each a class index at once when the
list is known, and a provisional index otherwise; ``ClassCoder.finish`` returns the list and
the table that turns provisional indexes into final ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from melshards.errors import ConfigError
from melshards.index import class_name_problem

SCHEMES = ("species", "species_songtype")
# Class indexes are stored as int16 (``anchor/species_id``, ``events/species_id``).
MAX_CLASSES = 32767
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ClassSpec:
    """Where a run's class list comes from; the default takes it from the data.

    names : the class list, in order (None: not given)
    count : numeric class ids ``0..count-1`` (None: not given); ignored when ``names`` is given
    scheme : ``"species"`` (a class per label) or ``"species_songtype"`` (per label and songtype)
    """

    names: tuple[str, ...] | None = None
    count: int | None = None
    scheme: str = "species"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"classes scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
            check_names(self.names, source="classes")
        if self.count is not None and not (
            isinstance(self.count, int)
            and not isinstance(self.count, bool)
            and 1 <= self.count <= MAX_CLASSES
        ):
            raise ConfigError(f"n_classes must be an integer in [1, {MAX_CLASSES}], got {self.count!r}")

    def describe(self) -> str:
        """How the list is chosen, for the index's ``source`` and ``inspect``."""
        if self.names is not None:
            return "given list"
        if self.count is not None and self.scheme == "species":
            return f"n_classes {self.count}"
        return "from the data" + (", species x songtype" if self.scheme != "species" else "")


def check_names(names: tuple[str, ...], *, source: str) -> None:
    """ConfigError naming the first unusable or repeated class name of ``names``."""
    if not names:
        raise ConfigError(f"{source}: the class list is empty")
    if len(names) > MAX_CLASSES:
        raise ConfigError(f"{source}: {len(names)} classes, more than {MAX_CLASSES}")
    seen: set[str] = set()
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise ConfigError(f"{source}: {problem}")
        if name in seen:
            raise ConfigError(f"{source}: class {name!r} is listed twice")
        seen.add(name)


def parse_class_option(text: str) -> ClassSpec:
    """``--classes``: a scheme word (``species_songtype``) or comma-separated class names."""
    word = text.strip()
    if word in SCHEMES:
        return ClassSpec(scheme=word)
    names = tuple(part.strip() for part in word.split(","))
    try:
        return ClassSpec(names=names)
    except ConfigError as err:
        raise ConfigError(f"--classes {text!r}: {str(err).removeprefix('classes: ')}") from None


def label_name(label: str) -> str:
    """The class name of a label: ``s<id>`` for an integer id, the text itself otherwise."""
    return f"s{int(label)}" if _INTEGER.fullmatch(label) else label


def natural_key(name: str) -> tuple:
    """Sort key putting ``s2`` before ``s10`` and ``s3_t1`` before ``s3_t4``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


class ClassCoder:
    """Class indexes for the labels of a stream of rows (see the module docstring).

    ``code`` raises ValueError with a one-line reason for a label that cannot be a class;
    the caller rejects that row.
    """

    def __init__(self, spec: ClassSpec | None = None, *, field: str = "species_id") -> None:
        self.spec = spec or ClassSpec()
        self.field = field
        self._given = {name: k for k, name in enumerate(self.spec.names)} if self.spec.names else None
        self._found: dict[str, int] = {}  # class name -> provisional index, in order of first use
        self._numeric = True  # every label found so far is an integer id
        self._known: dict[tuple[str, int], int] = {}  # (label, songtype) -> index, for repeats

    @property
    def songtypes(self) -> bool:
        return self.spec.scheme == "species_songtype"

    @property
    def direct(self) -> bool:
        """Whether ``code`` gives final indexes (the list is known before reading)."""
        return self._given is not None or (self.spec.count is not None and not self.songtypes)

    def code(self, label: str, songtype: int, *, field: str | None = None, verbatim: bool = False) -> int:
        """The class index of one row's label (final or provisional; see ``direct``).

        verbatim : the label is a class name as written (a class folder's): ``3`` is class
            ``3``, not the id 3; with a ``count``, it must be one of ``s0..s<count-1>``
        """
        known = self._known.get((label, songtype, verbatim))
        if known is not None:
            return known
        code = self._code(label, songtype, field=field or self.field, verbatim=verbatim)
        self._known[(label, songtype, verbatim)] = code
        return code

    def _code(self, label: str, songtype: int, *, field: str, verbatim: bool) -> int:
        if not label:
            raise ValueError(f"{field} is empty")
        numeric = not verbatim and _INTEGER.fullmatch(label) is not None
        if self.spec.count is not None and self._given is None and not self.songtypes:
            if verbatim:
                return _listed_id(label, self.spec.count)
            if not numeric:
                raise ValueError(f"{field} {label!r} is not an integer")
            if not 0 <= int(label) < self.spec.count:
                raise ValueError(f"{field} {int(label)} is outside the class list 0..{self.spec.count - 1}")
            return int(label)
        if numeric and int(label) < 0:
            raise ValueError(f"{field} {int(label)} is negative; class ids start at 0")
        name = label if verbatim else label_name(label)
        if self.songtypes:
            name = f"{name}_t{songtype}"
        if self._given is not None:
            if name not in self._given:
                raise ValueError(f"class {name!r} is not in the class list ({_listing(self.spec.names)})")
            return self._given[name]
        problem = class_name_problem(name)
        if problem:
            raise ValueError(f"{field}: {problem}")
        code = self._found.get(name)
        if code is None:
            if len(self._found) >= MAX_CLASSES:
                raise ValueError(f"{field} {label!r} would be class {MAX_CLASSES + 1}; at most {MAX_CLASSES}")
            code = self._found[name] = len(self._found)
            self._numeric = self._numeric and numeric
        return code

    def finish(self) -> tuple[tuple[str, ...], np.ndarray | None]:
        """The class list, and the final index of each provisional one (None: already final).

        Raises ConfigError when a given ``count`` disagrees with the classes found, or when no
        label was read at all (the list cannot be taken from no data).
        """
        if self._given is not None:
            return self.spec.names, None
        if self.direct:
            return tuple(f"s{k}" for k in range(self.spec.count)), None
        found = list(self._found)
        if not found:
            return (), None
        if self._numeric and not self.songtypes:
            top = max(int(name[1:]) for name in found)
            if top >= MAX_CLASSES:
                raise ConfigError(f"class id {top} is beyond the {MAX_CLASSES} classes a feature set holds")
            names = tuple(f"s{k}" for k in range(top + 1))
        else:
            names = tuple(sorted(found, key=natural_key))
        if self.spec.count is not None and len(names) != self.spec.count:
            raise ConfigError(
                f"n_classes is {self.spec.count}, but the annotations hold {len(names)} classes "
                f"({_listing(names)}); drop n_classes, or give the class list (--classes)"
            )
        final = {name: k for k, name in enumerate(names)}
        remap = np.array([final[name] for name in found], dtype=np.int16)
        return names, remap


def _listed_id(name: str, count: int) -> int:
    """The index of class ``name`` in the list ``s0..s<count-1>``; ValueError if it is not one."""
    match = re.fullmatch(r"s(0|[1-9][0-9]*)", name)
    if match is None or int(match[1]) >= count:
        raise ValueError(f"class {name!r} is not in the class list s0..s{count - 1} (n_classes {count})")
    return int(match[1])


def _listing(names: tuple[str, ...], *, most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")
