"""Write tiny_train.conll: ~200 synthetic sentences with a learnable NER pattern (run from anywhere).

- a capitalised name after "Mr" / "Mrs" / "Dr" is PER (B-PER, and I-PER for a following surname);
- the word after "in" / "to" / "from" is LOC (B-LOC, I-LOC for a two-word place);
- a word before "Corp" / "Ltd" plus that word is ORG (B-ORG I-ORG);
- every other word is O. Deterministic (seeded): rerunning gives the same bytes.

    python tests/data/conll/make_tiny.py [OUT] [N]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

FIRST = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Thomas", "Walker", "White", "Green", "Hall", "Wood"]
SURNAME = ["Lee", "King", "Scott", "Young", "Hill", "Moore"]
PLACES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Dublin", "Lisbon", "Prague"]
TWO_WORD = [("New", "York"), ("San", "Diego"), ("Hong", "Kong"), ("Los", "Angeles")]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"]
VERBS = ["met", "visited", "called", "saw", "thanked", "joined"]
FILLER = ["today", "again", "yesterday", "briefly", "at", "noon", "with", "friends", "the", "team"]


def person(rng: random.Random) -> list[tuple[str, str]]:
    words = [(rng.choice(["Mr", "Mrs", "Dr"]), "O"), (rng.choice(FIRST), "B-PER")]
    if rng.random() < 0.3:
        words.append((rng.choice(SURNAME), "I-PER"))
    return words


def place(rng: random.Random) -> list[tuple[str, str]]:
    words = [(rng.choice(["in", "to", "from"]), "O")]
    if rng.random() < 0.25:
        a, b = rng.choice(TWO_WORD)
        return [*words, (a, "B-LOC"), (b, "I-LOC")]
    return [*words, (rng.choice(PLACES), "B-LOC")]


def company(rng: random.Random) -> list[tuple[str, str]]:
    return [(rng.choice(COMPANIES), "B-ORG"), (rng.choice(["Corp", "Ltd"]), "I-ORG")]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    words = [*person(rng), (rng.choice(VERBS), "O")]
    words += company(rng) if rng.random() < 0.4 else [(rng.choice(["someone", "everyone", "nobody"]), "O")]
    words += place(rng)
    words += [(w, "O") for w in rng.sample(FILLER, rng.randint(0, 3))]
    return [*words, (".", "O")]


def write(out: Path, n: int = 200, seed: int = 13) -> Path:
    rng = random.Random(seed)
    seen: set[str] = set()
    lines = ["-DOCSTART- -X- -X- O", ""]
    while len(seen) < n:
        words = sentence(rng)
        key = " ".join(w for w, _ in words)
        if key in seen:
            continue
        seen.add(key)
        lines += [f"{w} {t}" for w, t in words] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("tiny_train.conll")
    print(write(target, int(sys.argv[2]) if len(sys.argv) > 2 else 200))
