"""``egocvr-swap`` and ``egocvr-swap2``: WebVid-CoVR-style composed benchmarks built from EgoCVR's narrations.

WebVid-CoVR was mined from caption pairs that differ in exactly one word, the edit text written from the
two words, the gallery being the distinct targets. Its test split is held out; this builds the same kind
of data from the 8,031 distinct (cleaned) EgoCVR narrations, so that a setting can be checked, before it
ships, on data where recall is strong because the target is a near-copy of the source (the opposite of
EgoCVR's own queries, where many clips share a narration and recall cannot separate them).

The edit texts are templates over the two words (WebVid-CoVR's are an LLM's from the same two words), so
this is dev data for choosing settings, never a stand-in for the human edits of a test split. Deterministic
for a seed.

``egocvr-swap2`` pairs texts that differ in exactly two words, the edit naming both swaps: a second
strong-recall set of another make (two changes to carry, fewer near-copies in the gallery), so that a
setting chosen for strong recall is not chosen on one construction alone.

``egocvr-swap-sparse`` is the one-word swap with a sparse gallery: a pair is taken only when no text of
the gallery so far is one word away from its source or its target, so a query's only near-copy is its own
target, as in WebVid-CoVR's test gallery (pairs drawn from millions of captions, rarely two alike). Recall
is strong there, as on a held-out set of web captions; EgoCVR's narrations (many clips sharing a phrase)
make the other two sets harder.

``egocvr-swap-redraw`` draws the one-word swaps again in another order, leaving out every text of
``egocvr-swap``'s reported queries (its first 300). A swap set's first queries are its hardest (a target is
taken once, and texts with many near-copies are drawn first), so a dev range of ``egocvr-swap`` is easier
than its reported split; the redraw's first queries are as hard as those, and all of it is dev data.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from pathlib import Path

from r3tasks.datasets.common import Benchmark, _check_limit, _read_csv
from r3tasks.datasets.egocvr import clean_narration
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.inputs.sources import GalleryItem

EDIT_TEMPLATES: tuple[str, ...] = (
    "{new} instead of {old}",
    "Change {old} to {new}",
    "Replace {old} with {new}",
    "Make it {new}",
    "{new} instead",
)


# (source text, target text, the words swapped out, the words swapped in)
Pair = tuple[str, str, tuple[str, ...], tuple[str, ...]]

# egocvr-swap's reported split: its first queries (docs/evaluation.md), left out of the redraw.
REPORTED_QUERIES = 300


def _words(text: str) -> list[str]:
    return text.lower().rstrip(".").split()


def _text_id(text: str) -> str:
    return "n-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# Two swaps in one edit, each written as one of the one-word templates' first three forms.
TWO_WORD_TEMPLATES: tuple[str, ...] = (
    "{new} instead of {old} and {new2} instead of {old2}",
    "Change {old} to {new} and {old2} to {new2}",
    "Replace {old} with {new} and {old2} with {new2}",
)


def word_swaps(texts: list[str], n_words: int = 1) -> list[Pair]:
    """Every ordered pair of distinct texts that differ in exactly `n_words` (1 or 2) words, at the same
    positions: (source, target, old words, new words)."""
    from itertools import combinations

    slots: dict[tuple, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for text in texts:
        words = _words(text)
        for positions in combinations(range(len(words)), n_words):
            rest = tuple(w if i not in positions else None for i, w in enumerate(words))
            slots[(len(words), positions, rest)].append((text, tuple(words[i] for i in positions)))
    pairs = []
    for group in slots.values():
        for source, old in group:
            for target, new in group:
                if all(o != n for o, n in zip(old, new)):
                    pairs.append((source, target, old, new))
    return sorted(set(pairs))


def _one_word_keys(text: str) -> set[tuple]:
    """The text with each word in turn left out: two texts share a key when they differ in that one word."""
    words = _words(text)
    return {(i, tuple(words[:i]), tuple(words[i + 1 :])) for i in range(len(words))}


def load_egocvr_swap(
    folder: Path,
    n_queries: int = 2000,
    seed: int = 0,
    limit: int | None = None,
    n_words: int = 1,
    sparse: bool = False,
    redraw: bool = False,
    reported: int = REPORTED_QUERIES,
) -> Benchmark:
    """`n_queries` one-word-swap (`n_words` 2: two-word-swap) queries over EgoCVR's narrations
    (``egocvr_data.csv`` in `folder`).

    Each target text appears in one query only, so every query has exactly one relevant item. The gallery
    is the distinct targets (as WebVid-CoVR evaluates) and the distinct sources: a composed query names its
    source by gallery id, and a source left out of the gallery would fail its query (it did for 23% of
    them); retrieval leaves a query's own source out of its ranking, so for the others a source is one
    more distractor. Query ids ``swap-00000``... (``swap2-00000``...) in a seeded random order, so
    `--skip`/`--limit` splits are random subsets. `sparse` (one-word swaps only): a pair is taken only when
    neither of its texts is one word away from a text already in the gallery (ids ``swaps-00000``...).
    `redraw` (one-word swaps only): `seed` + 1's order, no text of the first `reported` queries of `seed`'s
    one-word set in it, every query dev data (ids ``swapr-00000``...).
    """
    if n_words not in (1, 2):
        raise ValueError(f"egocvr swaps are of 1 or 2 words, not {n_words}")
    if (sparse or redraw) and n_words != 1:
        raise ValueError("a sparse or redrawn egocvr swap set is built for one-word swaps only")
    if sparse and redraw:
        raise ValueError("an egocvr swap set is either sparse or redrawn, not both")
    _check_limit(limit)
    texts = sorted(
        {clean_narration(row["narration_text"]) for _, row in _read_csv(Path(folder) / "egocvr_data.csv", ())} - {""}
    )
    pairs = word_swaps(texts, n_words)
    held_out: set[str] = set()
    if redraw:
        held_out = {text for pair in _choose_pairs(pairs, seed, min(reported, n_queries)) for text in pair[:2]}
        seed += 1
    chosen = _choose_pairs(pairs, seed, n_queries, sparse, held_out)
    used_targets = {target for _, target, _, _ in chosen}
    items = [GalleryItem(_text_id(t), None, t) for t in sorted(used_targets | {c[0] for c in chosen})]
    queries: list[ComposedQuery | TextQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    if sparse:
        name, prefix = "egocvr-swap-sparse", "swaps"
    elif redraw:
        name, prefix = "egocvr-swap-redraw", "swapr"
    else:
        name, prefix = ("egocvr-swap", "swap") if n_words == 1 else (f"egocvr-swap{n_words}", f"swap{n_words}")
    templates = EDIT_TEMPLATES if n_words == 1 else TWO_WORD_TEMPLATES
    for n, (source, target, old, new) in enumerate(chosen):
        template = templates[int(hashlib.sha256(f"{source}|{target}".encode()).hexdigest(), 16) % len(templates)]
        edit = template.format(old=old[0], new=new[0], old2=old[-1], new2=new[-1])
        qid = f"{prefix}-{n:05d}"
        queries.append(
            ComposedQuery(id=qid, source=_text_id(source), edit=edit[:1].upper() + edit[1:], source_text=source)
        )
        qrels[qid] = {_text_id(target): 1}
    stats = {"narrations": len(texts), "swap_pairs": len(pairs), "items": len(items), "queries": len(queries)}
    if limit is not None:
        queries = queries[:limit]
        qrels = {q.id: qrels[q.id] for q in queries}
    return Benchmark(name, items, queries, qrels, "global", stats, dev_only=redraw)


def _choose_pairs(
    pairs: list[Pair], seed: int, n_queries: int, sparse: bool = False, held_out: set[str] | None = None
) -> list[Pair]:
    """The first `n_queries` pairs of `seed`'s order whose target is not taken yet and that use no `held_out`
    text (`sparse`: nor any text one word from a text already taken)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    held_out = held_out or set()
    chosen: list[Pair] = []
    used_targets: set[str] = set()
    near: set[tuple] = set()  # sparse: the one-word keys of every text taken so far
    for source, target, old, new in order:
        if target in used_targets or source in held_out or target in held_out:
            continue
        if sparse:
            keys = _one_word_keys(source) | _one_word_keys(target)
            if keys & near:
                continue
            near |= keys
        used_targets.add(target)
        chosen.append((source, target, old, new))
        if len(chosen) == n_queries:
            break
    return chosen
