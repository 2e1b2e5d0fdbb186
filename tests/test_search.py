import threading
from functools import partial

import pytest
import torch

from mt.config import ModelConfig
from mt.model import Transformer
from mt.search import beam_search, decode_corpus, greedy_search, length_batches, length_penalty, max_lengths
from mt.tokenizer import EOS, PAD

V = 40


def random_model(seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(encoder_layers=1, decoder_layers=2, d_model=32, heads=4, d_ff=64), V, V).eval()


def sources(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (6, 7), generator=g)
    src[:, -1] = EOS
    src[2, 4:] = PAD
    src[2, 3] = EOS
    return src


def test_beam_size_one_equals_greedy():
    for seed in range(3):
        m, src = random_model(seed), sources(seed)
        assert beam_search(m, src, beam_size=1, max_len_a=1.0, max_len_b=5) == \
            greedy_search(m, src, max_len_a=1.0, max_len_b=5)


def test_hypotheses_respect_the_length_limit():
    m, src = random_model(), sources()
    limits = max_lengths(src, 0.5, 2).tolist()
    for search in (lambda: greedy_search(m, src, 0.5, 2), lambda: beam_search(m, src, 4, 1.0, 0.5, 2)):
        for hyp, limit in zip(search(), limits):
            assert len(hyp) <= limit
            assert EOS not in hyp


def test_beam_finds_a_sequence_at_least_as_probable_as_greedy():
    m, src = random_model(), sources()

    def logprob(i, hyp):
        tgt = torch.tensor([[2] + hyp + [EOS]])
        logp = m(src[i:i + 1], tgt[:, :-1]).log_softmax(-1)
        return logp[0].gather(1, tgt[0, 1:, None]).sum().item()

    greedy = greedy_search(m, src, 1.0, 5)
    beam = beam_search(m, src, beam_size=5, alpha=0.0, max_len_a=1.0, max_len_b=5)
    for i in range(src.size(0)):
        assert logprob(i, beam[i]) >= logprob(i, greedy[i]) - 1e-4


def test_batched_decoding_equals_one_sentence_at_a_time_in_input_order():
    m = random_model()
    g = torch.Generator().manual_seed(3)
    srcs = [torch.randint(4, V, (n,), generator=g).tolist() + [EOS] for n in (5, 1, 8, 3, 6)]
    search = partial(beam_search, m, beam_size=3)
    together = decode_corpus(search, srcs, torch.device("cpu"), width=3, batch_tokens=10_000)
    alone = [decode_corpus(search, [s], torch.device("cpu"), width=3)[0] for s in srcs]
    assert together == alone


def test_length_batches_cover_every_sentence_once_within_the_token_budget():
    srcs = [[5] * n for n in (4, 1, 9, 3, 6, 2, 20)]
    batches = length_batches(srcs, width=2, batch_tokens=24)
    assert sorted(i for b in batches for i in b) == list(range(7))
    lengths = [len(srcs[i]) for b in batches for i in b]
    assert lengths == sorted(lengths)  # shortest first
    for b in batches:
        assert len(b) == 1 or len(b) * max(len(srcs[i]) for i in b) * 2 <= 24
    assert batches[-1] == [6]  # 20 tokens x beam 2 > 24: a batch of its own


def test_decoders_share_the_threads_and_give_the_same_results_in_input_order():
    m = random_model()
    g = torch.Generator().manual_seed(4)
    srcs = [torch.randint(4, V, (n,), generator=g).tolist() + [EOS] for n in (5, 1, 8, 3, 6, 2, 7, 4)]
    seen = []  # (thread name, torch threads) of each batch

    def search(src):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return beam_search(m, src, beam_size=3)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = decode_corpus(search, srcs, torch.device("cpu"), width=3, batch_tokens=30)
        assert {name for name, _ in seen} == {threading.current_thread().name}
        assert {n for _, n in seen} == {2}
        seen.clear()
        two = decode_corpus(search, srcs, torch.device("cpu"), width=3, batch_tokens=30, decoders=2)
        assert len(seen) == len(length_batches(srcs, 3, 30)) > 2
        assert all(name.startswith("mt-decode") for name, _ in seen)
        assert {n for _, n in seen} == {1}  # 2 threads shared by 2 decoders
        assert torch.get_num_threads() == 2  # restored
        assert two == one
        seen.clear()  # a single batch keeps every thread on it
        decode_corpus(search, srcs[:2], torch.device("cpu"), width=3, decoders=2)
        assert seen == [(threading.current_thread().name, 2)]
    finally:
        torch.set_num_threads(threads)


def test_gnmt_length_penalty():
    assert length_penalty(1, 1.0) == 1.0
    assert length_penalty(7, 0.5) == (12 / 6) ** 0.5
    assert length_penalty(9, 0.0) == 1.0


def test_min_len_delays_the_end():
    m, src = random_model(), sources()
    # without min_len, beam search ends sentence 1 at once (greedy: see test_translate)
    assert min(map(len, beam_search(m, src, 3, 1.0, max_len_a=2.0, max_len_b=10))) == 0
    for hyp in beam_search(m, src, 3, 1.0, max_len_a=2.0, max_len_b=10, min_len=8):
        assert len(hyp) >= 8


def test_no_repeat_ngram_blocks_repeats():
    m, src = random_model(), sources()

    def bigrams(h):
        return [tuple(h[i:i + 2]) for i in range(len(h) - 1)]

    plain = greedy_search(m, src, 2.0, 10)
    assert any(len(set(bigrams(h))) < len(bigrams(h)) for h in plain)  # an untrained model repeats itself
    for search in (lambda: greedy_search(m, src, 2.0, 10, no_repeat_ngram=2),
                   lambda: beam_search(m, src, 3, 1.0, 2.0, 10, no_repeat_ngram=2)):
        for h in search():
            assert len(set(bigrams(h))) == len(bigrams(h))


def test_nbest_is_sorted_and_starts_with_the_beam_result():
    from mt.search import beam_nbest

    m, src = random_model(), sources()
    nbest = beam_nbest(m, src, beam_size=4, max_len_a=1.0, max_len_b=5)
    best = beam_search(m, src, beam_size=4, max_len_a=1.0, max_len_b=5)
    for hyps, top in zip(nbest, best):
        assert len(hyps) == 4
        assert [s for s, _ in hyps] == sorted((s for s, _ in hyps), reverse=True)
        assert hyps[0][1] == top


@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_1_is_greedy():
    from mt.search import Sampler

    m, src = random_model(), sources()
    draw = lambda seed, **kw: greedy_search(m, src, 1.0, 5, sampler=Sampler(generator=torch.Generator().manual_seed(seed), **kw))  # noqa: E731
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(3, top_k=1) == greedy_search(m, src, 1.0, 5)
    assert draw(4, top_p=1e-6) == greedy_search(m, src, 1.0, 5)


def exact_score(m, src, hyp, alpha):
    """The length-normalised log-probability of ``hyp`` + EOS given one source row, by a full forward pass."""
    tgt = torch.tensor([[2] + hyp + [EOS]])
    logp = m(src, tgt[:, :-1]).float().log_softmax(-1)
    return logp[0].gather(1, tgt[0, 1:, None]).sum().item() / length_penalty(len(hyp) + 1, 1.0 if alpha is None else alpha)


def test_beam_with_room_for_every_hypothesis_equals_brute_force_search():
    """A 6-token vocabulary and at most 3 target tokens: 1 + 5 + 25 + 125 possible hypotheses.
    A beam as wide as all of them must return every one with its exact score, including the
    hypotheses that reach the length limit, whose EOS costs the model's log p(EOS) like any other."""
    import itertools

    from mt.search import beam_nbest

    small_v = 6
    torch.manual_seed(5)
    m = Transformer(ModelConfig(encoder_layers=1, decoder_layers=1, d_model=16, heads=2, d_ff=32),
                    small_v, small_v).eval()
    src = torch.tensor([[4, 5, EOS]])
    words = [t for t in range(small_v) if t != EOS]
    brute = sorted(((exact_score(m, src, list(h), 1.0), list(h))
                    for n in range(4) for h in itertools.product(words, repeat=n)), key=lambda x: -x[0])
    found = beam_nbest(m, src, beam_size=len(brute), alpha=1.0, max_len_a=0.0, max_len_b=3)[0]
    assert len(found) == len(brute) == 156
    assert found[0][1] == brute[0][1]
    by_hyp = {tuple(h): s for s, h in brute}
    for score, hyp in found:
        assert score == pytest.approx(by_hyp[tuple(hyp)], abs=1e-4), hyp
    assert [s for s, _ in found] == pytest.approx([s for s, _ in brute], abs=1e-4)


def test_nbest_scores_are_the_exact_length_normalised_log_probabilities():
    from mt.search import beam_nbest

    m, src = random_model(), sources()
    nbest = beam_nbest(m, src, beam_size=4, alpha=0.7, max_len_a=0.0, max_len_b=3)
    limited = 0
    for i, hyps in enumerate(nbest):
        for score, hyp in hyps:
            limited += len(hyp) == 3
            assert score == pytest.approx(exact_score(m, src[i:i + 1], hyp, 0.7), abs=1e-4), (i, hyp)
    assert limited > 0  # hypotheses that reached the limit are among them


def test_beam_wider_than_the_vocabulary():
    from mt.search import beam_nbest

    torch.manual_seed(0)
    m = Transformer(ModelConfig(encoder_layers=1, decoder_layers=1, d_model=16, heads=2, d_ff=32), 6, 6).eval()
    src = torch.tensor([[4, 5, EOS], [5, EOS, PAD]])
    hyps = beam_nbest(m, src, beam_size=10, max_len_a=0.0, max_len_b=2)
    assert [len(h) for h in hyps] == [10, 10]
    assert beam_search(m, src, beam_size=10, max_len_a=0.0, max_len_b=2) == [h[0][1] for h in hyps]
