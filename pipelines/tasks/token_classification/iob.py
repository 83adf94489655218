"""IOB2 tag sequences: consistency checks, repair, and entity spans. Pure Python (used by the runtime too)."""

from __future__ import annotations

from dataclasses import dataclass

OUTSIDE = "O"


def split_tag(tag: str) -> tuple[str, str]:
    """('B'|'I'|'O'|'', type): 'B-PER' -> ('B', 'PER'), 'O' -> ('O', ''), 'PER' -> ('', 'PER') (not IOB2)."""
    if tag == OUTSIDE:
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "", tag


@dataclass(frozen=True)
class Violation:
    """One IOB2 problem: the word index, its tag, and what precedes it ('O', 'B-LOC', 'start', or 'malformed')."""

    index: int
    tag: str
    after: str

    def describe(self) -> str:
        if self.after == "malformed":
            return f"tag {self.tag!r} is not O, B-<type> or I-<type> (task.scheme=IOB2)"
        return f"{self.tag} after {self.after}"


def iob_violations(tags: list[str]) -> list[Violation]:
    """Every I-X that does not continue a B-X/I-X of the same type, and every tag that is not IOB2 at all."""
    found = []
    previous = "start"
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == "":
            found.append(Violation(i, tag, "malformed"))
        elif prefix == "I":
            p_prefix, p_kind = split_tag(previous) if previous != "start" else ("O", "")
            if p_prefix not in ("B", "I") or p_kind != kind:
                found.append(Violation(i, tag, previous))
        previous = tag
    return found


def repair_iob(tags: list[str]) -> tuple[list[str], int]:
    """I-X after O / start / B-Y / I-Y becomes B-X; returns the repaired tags and how many were changed."""
    out = list(tags)
    changed = 0
    for i, tag in enumerate(out):
        prefix, kind = split_tag(tag)
        if prefix != "I":
            continue
        p_prefix, p_kind = split_tag(out[i - 1]) if i else ("O", "")
        if p_prefix not in ("B", "I") or p_kind != kind:
            out[i] = "B-" + kind
            changed += 1
    return out, changed


def continuation_tag(tag: str) -> str:
    """The tag of a word's continuation sub-tokens under label_all_tokens: B-X -> I-X, others unchanged."""
    prefix, kind = split_tag(tag)
    return "I-" + kind if prefix == "B" else tag


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of every entity, decoded leniently for display: B-X starts an entity, I-X
    continues one of the same type or starts a new one (a model can emit a stray I-X); O and malformed tags end it."""
    spans: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, t = split_tag(tag)
        if prefix == "I" and kind == t:
            continue
        if kind is not None:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I"):
            kind, start = t, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans
