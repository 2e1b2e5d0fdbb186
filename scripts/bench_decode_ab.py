"""A/B of decoding code in one process: this checkout's mt/model.py + mt/search.py against a
git revision's, interleaved on the same model weights, threads and sentences.

The revision's two files are loaded as the package ``mt_before`` (the rest of ``mt`` is
shared), both models get the run's weights, and each repeat times A then B on the first
``--limit`` sentences of test2016 with greedy and beam 5 (``decode.batch_tokens`` and length
penalty from the run's config). Prints median sentences/s, the ratio, and how many output
lines differ (token ids compared exactly), with the CPU, ISA and load.

    python scripts/bench_decode_ab.py RUN --before HEAD~1 [--limit 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from mt.data import read_lines
from mt.tokenizer import EOS
from mt.kernels import PackedLinear, pack_output_projection
from mt.translate import Translator


def load_revision(rev: str, where: Path):
    """mt/model.py and mt/search.py at ``rev`` as the package ``mt_before``."""
    package = where / "mt_before"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("model", "search"):
        text = subprocess.run(["git", "show", f"{rev}:mt/{name}.py"], check=True, capture_output=True,
                              text=True).stdout
        (package / f"{name}.py").write_text(text.replace("from mt.model import", "from mt_before.model import"))
    sys.path.insert(0, str(where))
    return importlib.import_module("mt_before.model"), importlib.import_module("mt_before.search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--before", default="HEAD", help="git revision of the A side")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    import mt.search as after_search

    translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads)
    after = translator.model
    before_model, before_search = load_revision(args.before, Path(tempfile.mkdtemp()))
    before = before_model.Transformer(after.cfg, after.src_embed.table.num_embeddings,
                                      after.output.out_features)
    before.load_state_dict(after.state_dict())
    before.eval()
    if isinstance(after.output, PackedLinear):  # as Translator loaded the B side: compare the searches only
        pack_output_projection(before)
    lines = read_lines(Path(args.data) / "multi30k" / "test2016.de")[:args.limit]
    sources = [ids + [EOS] for ids in translator.tokenizers.src.encode(lines)]
    d = translator.config.decode
    print(f"# A = {args.before}, B = working tree; {args.model}, test2016[:{len(sources)}], {args.threads} threads, "
          f"ISA {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"median of {args.repeats} interleaved; load before {os.getloadavg()}")
    print("| search | A sentences/s | B sentences/s | B / A | lines differing |")
    print("|---|---|---|---|---|")
    for beam in args.beams:
        runs = {}
        for name, module, model in (("A", before_search, before), ("B", after_search, after)):
            if beam == 1:
                search = partial(module.greedy_search, model, max_len_a=d.max_len_a, max_len_b=d.max_len_b)
            else:
                search = partial(module.beam_search, model, beam_size=beam, alpha=d.length_penalty,
                                 max_len_a=d.max_len_a, max_len_b=d.max_len_b)
            runs[name] = (module, search)
            module.decode_corpus(search, sources[:50], torch.device("cpu"), width=beam,
                                 batch_tokens=d.batch_tokens)  # warm-up
        times: dict = {"A": [], "B": []}
        outputs = {}
        for _ in range(args.repeats):
            for name, (module, search) in runs.items():
                start = time.perf_counter()
                outputs[name] = module.decode_corpus(search, sources, torch.device("cpu"), width=beam,
                                                     batch_tokens=d.batch_tokens)
                times[name].append(time.perf_counter() - start)
        a, b = (len(sources) / statistics.median(times[n]) for n in ("A", "B"))
        differ = sum(x != y for x, y in zip(outputs["A"], outputs["B"]))
        print(f"| {'greedy' if beam == 1 else f'beam {beam}'} | {a:.1f} | {b:.1f} | {b / a:.3f} | "
              f"{differ}/{len(sources)} |", flush=True)
    print(f"# load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
