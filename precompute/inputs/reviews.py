"""Reviewed selection tables: what a reviewer's verdict on a selection makes of it.

A reviewed table is a Raven selection table (``precompute.inputs.annotations``, formats
``raven`` and ``reviews``) with a verdict column, ``Review`` by default (``REVIEW_COLUMN``),
filled per selection. Verdicts are read case-insensitively, spaces at either end dropped:

==========================================  =================================================
verdict                                     the selection becomes
==========================================  =================================================
``yes y true 1 accept accepted``            a call (``EVENT_TP``) of its class
``no n false 0 reject rejected``            a confirmed negative (``EVENT_FP``) of its class
any other text                              a class name, as written: a call of that class
                                            and a confirmed negative of its own class
empty                                       not reviewed: skipped, and counted
==========================================  =================================================

A selection relabelled as its own class is accepted: a call and a confirmed negative of one
class never come from one selection. ``precompute.inputs.manifest`` reads the rows.
"""

from __future__ import annotations

REVIEW_COLUMN = "Review"
ACCEPT_WORDS = frozenset({"yes", "y", "true", "1", "accept", "accepted"})
REJECT_WORDS = frozenset({"no", "n", "false", "0", "reject", "rejected"})

# What a verdict says (``verdict``).
ACCEPTED, REJECTED, RELABELLED, UNREVIEWED = "accepted", "rejected", "relabelled", "unreviewed"


def verdict(text: str) -> str:
    """``ACCEPTED``, ``REJECTED``, ``RELABELLED`` (the text names a class) or ``UNREVIEWED``."""
    word = text.strip().lower()
    if not word:
        return UNREVIEWED
    if word in ACCEPT_WORDS:
        return ACCEPTED
    if word in REJECT_WORDS:
        return REJECTED
    return RELABELLED


def reviewed_table_message(source: str, column: str = REVIEW_COLUMN) -> str:
    """Why a plain Raven read refuses ``source``: its verdict column is filled."""
    return (
        f"{source}: a reviewed table (its {column} column is filled); read it with --reviews, "
        "which turns rejected selections into confirmed negatives"
    )


def unreviewed_line(path: object, counts: dict[str, int]) -> str | None:
    """The log line of the selections without a verdict in ``path``'s tables (None: none)."""
    total = sum(counts.values())
    if not total:
        return None
    what = f"{total} selection{'s' if total > 1 else ''} not reviewed, skipped"
    tables = f"{len(counts)} tables" if len(counts) > 1 else next(iter(counts))
    return f"{path}: {what} (an empty verdict, in {tables})"
