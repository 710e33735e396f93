"""Which estimated events match which reference events: the pairs in time, then a matching.

The event-based metric of ``experiments.sed_metrics`` asks, within each recording and class,
which estimates lie close enough in time to which references (``time_pairs``, for all of them
at once), then matches each reference to at most one estimate and each estimate to at most one
reference. Pairs never cross groups, so one matching over all of them is the matching of each
group on its own:

- ``greedy_matching``: references in their given order, each taking the first (in the
  estimates' given order) estimate still free; ``sed_eval``'s ``event_matching_type='greedy'``,
  and the rule of its substitutions;
- ``maximum_matching``: as many pairs as possible (Hopcroft-Karp), visiting vertices in the
  order ``sed_eval``'s default ``'optimal'`` matching does, so that the same references are
  left over (they decide the substitutions, hence the error rate).
"""

from __future__ import annotations

import numpy as np

# How far outside a collar (relative to the key's size) an event is still looked at: the
# exact test on the difference decides; this only keeps rounding from hiding an event at a
# collar's edge.
_SLACK = 1e-9


def time_pairs(
    ref_onset: np.ndarray,
    ref_offset: np.ndarray,
    est_onset: np.ndarray,
    est_offset: np.ndarray,
    *,
    collar: float,
    offset_ratio: float,
    onset: bool = True,
    offset: bool = True,
    ref_group: np.ndarray | None = None,
    est_group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (reference, estimate) pair of one group whose times agree, sorted by reference
    then estimate.

    ref_onset, ref_offset : np.ndarray [shape=(n,)], float64 seconds
    est_onset, est_offset : np.ndarray [shape=(m,)], float64 seconds
    ref_group, est_group : np.ndarray [shape=(n,) and (m,)], int: only events of one group pair
        (a recording, or a recording and class); default one group

    A pair agrees when ``|ref_onset - est_onset| <= collar`` (if ``onset``) and
    ``|ref_offset - est_offset| <= max(collar, offset_ratio * (ref_offset - ref_onset))`` (if
    ``offset``). Candidates come from one sorted search of all groups laid end to end, so the
    cost is ``O((n + m) log m + candidates)``.

    Returns two np.ndarray [shape=(pairs,)], int64: reference and estimate positions.
    """
    n, m = len(ref_onset), len(est_onset)
    ref_group = np.zeros(n, np.int64) if ref_group is None else np.asarray(ref_group, np.int64)
    est_group = np.zeros(m, np.int64) if est_group is None else np.asarray(est_group, np.int64)
    if n == 0 or m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = np.maximum(collar, offset_ratio * (ref_offset - ref_onset))
    if onset:
        centre, half, keys = ref_onset, np.full(n, collar), est_onset
    else:
        centre, half, keys = ref_offset, width, est_offset
    # Groups end to end on one time line, each shifted past the last one's reach; the exact
    # tests below decide, the search only has to miss no candidate.
    low = min(keys.min(), centre.min())
    span = max(keys.max(), centre.max()) - low + 2.0 * half.max() + 1.0
    est_key = (keys - low) + est_group * span
    ref_key = (centre - low) + ref_group * span
    order = np.argsort(est_key, kind="stable")
    sorted_keys = est_key[order]
    slack = _SLACK * (1.0 + np.abs(ref_key) + half)
    lo = np.searchsorted(sorted_keys, ref_key - half - slack, side="left")
    hi = np.searchsorted(sorted_keys, ref_key + half + slack, side="right")
    counts = hi - lo
    ri = np.repeat(np.arange(n), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ei = order[np.repeat(lo, counts) + within]
    ok = ref_group[ri] == est_group[ei]
    if onset:
        ok &= np.abs(ref_onset[ri] - est_onset[ei]) <= collar
    if offset:
        ok &= np.abs(ref_offset[ri] - est_offset[ei]) <= width[ri]
    ri, ei = ri[ok], ei[ok]
    both = np.lexsort((ei, ri))
    return ri[both], ei[both]


def greedy_matching(ri: np.ndarray, ei: np.ndarray, n_est: int) -> np.ndarray:
    """Each reference, in order, takes the first free estimate it pairs with.

    ri, ei : np.ndarray [shape=(pairs,)], the pairs sorted by reference then estimate
    n_est : the number of estimates

    Returns np.ndarray [shape=(matches, 2)], int64: matched (reference, estimate) pairs.
    """
    taken = np.zeros(n_est, dtype=bool)
    matched = []
    last_ref = -1
    for r, e in zip(ri.tolist(), ei.tolist(), strict=True):
        if r != last_ref and not taken[e]:
            taken[e] = True
            matched.append((r, e))
            last_ref = r
    return np.array(matched, dtype=np.int64).reshape(-1, 2)


def maximum_matching(ri: np.ndarray, ei: np.ndarray) -> np.ndarray:
    """A maximum matching of the pairs (Hopcroft-Karp).

    The estimates are visited in the order each first pairs with a reference (references in
    order), each one's references in order: a greedy first pass, then rounds of shortest
    augmenting paths found breadth-first and taken depth-first.

    ri, ei : np.ndarray [shape=(pairs,)], the pairs sorted by reference then estimate

    Returns np.ndarray [shape=(matches, 2)], int64: matched (reference, estimate) pairs,
    sorted by reference.
    """
    neighbours: dict[int, list[int]] = {}
    for r, e in zip(ri.tolist(), ei.tolist(), strict=True):
        neighbours.setdefault(e, []).append(r)
    partner: dict[int, int] = {}  # reference -> its estimate
    for e, refs in neighbours.items():
        for r in refs:
            if r not in partner:
                partner[r] = e
                break
    while _augment_round(neighbours, partner):
        pass
    return np.array(sorted(partner.items()), dtype=np.int64).reshape(-1, 2)


_ROOT = -1  # the "previous reference" of a free estimate: where an augmenting path starts


def _augment_round(neighbours: dict[int, list[int]], partner: dict[int, int]) -> bool:
    """One Hopcroft-Karp round: layer by breadth from the free estimates up to the first free
    references, then augment along disjoint paths. False when no augmenting path is left."""
    matched = set(partner.values())
    came_from = {e: _ROOT for e in neighbours if e not in matched}  # estimate -> reference before it
    reached_by: dict[int, list[int]] = {}  # reference -> the estimates of the layer before
    layer, free_refs = list(came_from), []
    while layer and not free_refs:
        found: dict[int, list[int]] = {}
        for e in layer:
            for r in neighbours[e]:
                if r not in reached_by:
                    found.setdefault(r, []).append(e)
        layer = []
        for r, via in found.items():
            reached_by[r] = via
            if r in partner:
                layer.append(partner[r])
                came_from[partner[r]] = r
            else:
                free_refs.append(r)
    for r in free_refs:
        _augment_from(r, reached_by, came_from, partner)
    return bool(free_refs)


def _augment_from(
    start: int, reached_by: dict[int, list[int]], came_from: dict[int, int], partner: dict[int, int]
) -> bool:
    """Depth-first, from a free reference back through the layers to a free estimate; flips
    the path's pairs when it gets there. Each reference and estimate is used once a round."""
    if start not in reached_by:
        return False
    stack = [(start, iter(reached_by.pop(start)))]
    through: list[int] = []  # the estimate each stack frame went down through
    while stack:
        r, candidates = stack[-1]
        for e in candidates:
            if e not in came_from:
                continue
            before = came_from.pop(e)
            if before == _ROOT:
                partner[r] = e
                for (rr, _), ee in zip(stack[:-1], through, strict=True):
                    partner[rr] = ee
                return True
            if before in reached_by:
                through.append(e)
                stack.append((before, iter(reached_by.pop(before))))
                break
        else:
            stack.pop()
            if through:
                through.pop()
    return False
