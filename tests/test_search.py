import torch

from mt.config import ModelConfig
from mt.model import Transformer
from mt.search import beam_search, decode_corpus, greedy_search, length_penalty, max_lengths
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
    together = decode_corpus(m, srcs, torch.device("cpu"), beam_size=3, batch_tokens=10_000)
    alone = [decode_corpus(m, [s], torch.device("cpu"), beam_size=3)[0] for s in srcs]
    assert together == alone


def test_gnmt_length_penalty():
    assert length_penalty(1, 1.0) == 1.0
    assert length_penalty(7, 0.5) == (12 / 6) ** 0.5
    assert length_penalty(9, 0.0) == 1.0
