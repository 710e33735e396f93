"""Where a table keeps each field of a row: ``Layout``, and RFCX's own (``RFCX``).

A ``Layout`` says which column holds each field of a row (``FIELDS``): RFCX's own names by
default, a user's mapping (``--columns recording_id=file,species_id=label``), Raven's
(``Begin Time (s)``, ...; ``precompute.inputs.annotations`` builds those). Only
``recording_id``, ``species_id`` (the label), ``t_min`` and ``t_max`` need a column; without
one, ``songtype_id`` is 0, ``f_min`` 0 Hz and ``f_max`` the Nyquist frequency of the feature
config (the layout's ``nyquist``). Columns the layout does not use are ignored: they are listed
in ``ignored`` (the run prints them once and records them in the index) and never stop a run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
OPTIONAL_COLUMNS = ("path",)
FIELDS = (*COLUMNS, "path")
# The fields every layout must find a column for; the others have defaults.
REQUIRED = ("recording_id", "species_id", "t_min", "t_max")


@dataclass(frozen=True)
class Layout:
    """Where a table keeps each field of a row, and how its rows are read.

    name : what the table is, for messages (``RFCX manifest``, ``Raven table``)
    columns : field -> the column names that may hold it, the first one present wins
    mapped : the fields whose column the user named (a missing one is reported as such)
    delimiter : ``,`` for CSV, a tab for Raven tables
    file_names : recording references are audio file names relative to the audio
        directory (``site2/a.wav`` is recording ``site2/a``, read from that file)
    recording : the recording of every row without a recording column (a Raven table's)
    selection : a column numbering selections (Raven's ``Selection``). Raven lists a
        selection once per view (``Waveform 1``, ``Spectrogram 1``, the ``view`` column): a
        row whose number and fields equal those of a row of another view is read once. The
        number alone identifies nothing: tables of several files (``Begin File``) restart or
        repeat it, so rows of one number with other times, frequencies, file or label are
        other selections, and a row equal to one of the same view is a duplicate (reported)
    view : the column naming each row's view (Raven's ``View``)
    offset : a column of start offsets in the recording (Raven's ``File Offset (s)``): the
        event then starts there and lasts ``t_max - t_min``
    separator : several labels in one field (clip lists): one row per label
    clip_seconds : clip lists: ``f(recording_id, path)`` gives the clip's length; each label
        is then an event from 0 to that length
    nyquist : the default ``f_max`` (Hz); None makes an ``f_max`` column required
    label_names : labels are class names as written (class folders): ``3`` is class ``3``,
        never the id 3 (class ``s3``)
    review : a column of a reviewer's verdicts (Raven's ``Review``; ``precompute.inputs.reviews``).
        With ``reviewed`` it is required and each row is read by its verdict; without, a
        filled verdict refuses the whole table (a rejected selection is never read as a call)
    reviewed : rows are read by their verdicts (the ``reviews`` format)
    """

    name: str = "RFCX manifest"
    columns: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {f: (f,) for f in FIELDS}
    )
    mapped: frozenset[str] = frozenset()
    delimiter: str = ","
    file_names: bool = False
    recording: str | None = None
    selection: str | None = None
    view: str | None = None
    offset: str | None = None
    separator: str | None = None
    clip_seconds: Callable[[str, str | None], float] | None = None
    nyquist: float | None = None
    label_names: bool = False
    review: str | None = None
    reviewed: bool = False

    def required(self) -> tuple[str, ...]:
        fields = [f for f in REQUIRED if not (f == "recording_id" and self.recording is not None)]
        if self.clip_seconds is not None:
            fields = [f for f in fields if f not in ("t_min", "t_max")]
        if self.reviewed:
            fields.append("review")
        return (*fields, "f_max") if self.nyquist is None else tuple(fields)

    def defaults(self) -> dict[str, str]:
        """Text of the fields without a column."""
        values = {"songtype_id": "0", "f_min": "0", "path": ""}
        if self.nyquist is not None:
            values["f_max"] = repr(float(self.nyquist))
        if self.recording is not None:
            values["recording_id"] = self.recording
        if self.clip_seconds is not None:
            values.update(t_min="0", t_max="0")
        return values


RFCX = Layout()
