"""Corpus scores with sacreBLEU (BLEU, chrF, TER), printed exactly as the ``sacrebleu`` command prints them.

We never re-implement a metric: the numbers and the signature are sacreBLEU's own, so
they are comparable with every paper that reports sacreBLEU.
"""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.utils import print_single_results

from mt.data import read_lines
from mt.errors import MTError

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}


def read_pair(hyp_path: str | Path, ref_path: str | Path) -> tuple[list[str], list[str]]:
    """Hypotheses and references, stripped of trailing whitespace as sacreBLEU does."""
    hyps = [line.rstrip() for line in read_lines(hyp_path, "hypothesis file")]
    refs = [line.rstrip() for line in read_lines(ref_path, "reference file")]
    if len(hyps) != len(refs):
        raise MTError(f"hypothesis file '{hyp_path}' has {len(hyps)} lines but reference file "
                      f"'{ref_path}' has {len(refs)}")
    if not hyps:  # sacreBLEU fails on an empty corpus with an IndexError
        raise MTError(f"hypothesis file '{hyp_path}' is empty: nothing to score")
    return hyps, refs


def bleu(hyps: list[str], refs: list[str]) -> float:
    return BLEU().corpus_score(hyps, [refs]).score


def score(hyps: list[str], refs: list[str], metrics: list[str] = ("bleu", "chrf", "ter"),
          lowercase: bool = False, tokenize: str | None = None) -> dict:
    """{metric: (score object, signature object)}, metrics in sacreBLEU's (sorted) order.

    ``lowercase`` and ``tokenize`` are sacreBLEU's ``-lc`` and ``-tok`` (papers on Multi30k
    report lower-cased BLEU on Moses-tokenised text: docs/results.md says how to match them).
    """
    options = {"bleu": dict(lowercase=lowercase, tokenize=tokenize), "chrf": {}, "ter": {}}
    out = {}
    for name in sorted(metrics, key=str.upper):
        metric = METRICS[name](**options[name])
        out[name] = (metric.corpus_score(hyps, [refs]), metric.get_signature())
    return out


def format_scores(scores: dict, as_json: bool = False) -> None:
    """Print like ``sacrebleu REF -i HYP -m bleu chrf ter`` (JSON) or with ``-f text``."""
    results = [s.format(width=1, score_only=False, signature=sig.format(short=False), is_json=as_json)
               for s, sig in scores.values()]
    print_single_results(results, Namespace(format="json" if as_json else "text"))
