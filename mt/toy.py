"""A synthetic task for the guided tour's toy model: reverse a sequence of words.

The tour (docs/transformer.md) runs its checks and draws its figures on any trained run;
the recommended one is the demo (about 10 minutes). A reversal task learns in about a
minute on 2 cores and makes attention easy to read: each output word looks at one input
word, so cross-attention is an anti-diagonal. ``python -m mt.toy DIR`` writes the corpus
that ``configs/toy_reverse.yaml`` trains on.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from mt.checkpoint import atomic_write_bytes

# the words of the tour's example sentences, so the toy can "translate" them (by reversing)
WORDS = ("Ein Hund rennt über die Wiese Zwei Männer spielen Fußball Eine Frau singt im Park "
         "Das Kind schläft am Strand Der Mann springt auf der Straße eine Katze läuft mit dem Ball").split()


def reverse_pair(rng: random.Random, shortest: int = 3, longest: int = 9) -> tuple[str, str]:
    """A random sentence of words from ``WORDS`` (the last one ends with a full stop) and its words reversed."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(shortest, longest))]
    words[-1] += "."
    return " ".join(words), " ".join(reversed(words))


def write_toy_data(folder: str | Path, train: int = 20_000, valid: int = 200, seed: int = 1) -> list[Path]:
    """Write ``train.src``/``train.tgt`` and ``valid.src``/``valid.tgt`` of the reversal task into ``folder``.

    The validation set starts with the tour's example sentence and shares no line with
    the training set.
    """
    rng = random.Random(seed)
    first = ("Ein Hund rennt über die Wiese.", "Wiese. die über rennt Hund Ein")
    valid_pairs, seen = [first], {first[0]}
    while len(valid_pairs) < valid:
        pair = reverse_pair(rng)
        if pair[0] not in seen:
            seen.add(pair[0])
            valid_pairs.append(pair)
    train_pairs = []
    while len(train_pairs) < train:
        pair = reverse_pair(rng)
        if pair[0] not in seen:
            train_pairs.append(pair)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pairs in (("train", train_pairs), ("valid", valid_pairs)):
        for side, column in (("src", 0), ("tgt", 1)):
            path = folder / f"{name}.{side}"
            atomic_write_bytes(path, "".join(p[column] + "\n" for p in pairs).encode("utf-8"))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mt.toy", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write train.src, train.tgt, valid.src, valid.tgt")
    parser.add_argument("--train", type=int, default=20_000, help="training pairs (default 20000)")
    parser.add_argument("--valid", type=int, default=200, help="validation pairs (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for path in write_toy_data(args.folder, args.train, args.valid, args.seed):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
