"""Export a trained model for serving with CTranslate2, the C++ Transformer inference engine.

The export fills a ``ctranslate2.specs.TransformerSpec`` the way CTranslate2's own
converters (OpenNMT-py, fairseq) do, mapping each of our modules to its counterpart.
Our SentencePiece vocabularies already use CTranslate2's special tokens:
id 0 ``<pad>``, 1 ``<unk>``, 2 ``<s>`` (decoder start), 3 ``</s>``.

The exported model takes SentencePiece pieces; like ``mt``, it expects the source to end
with ``</s>``, which the export records as ``add_source_eos`` so callers pass plain pieces.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mt.config import ModelConfig
from mt.errors import MTError
from mt.model import MultiHeadAttention, Residual, SinusoidalPositions, Transformer
from mt.pretrained import load_model

SPECIAL_PIECES = {0: "<pad>", 1: "<unk>", 2: "<s>", 3: "</s>"}


def export_ctranslate2(run: str | Path, output_dir: str | Path, quantization: str | None = None,
                       force: bool = False) -> Path:
    """Write the run's (best) model as a CTranslate2 model directory; returns it.

    ``quantization`` (e.g. "int8") is applied at export; CTranslate2 can also quantize
    at load time with ``compute_type``.
    """
    try:
        import ctranslate2.specs  # noqa: F401  (before the model loads: a missing package answers at once)
    except ImportError:
        raise MTError("exporting to CTranslate2 needs the ctranslate2 package: "
                      "pip install 'mt[ctranslate2]'") from None
    model, tokenizers, config, _ = load_model(Path(run))
    vocabularies = [_vocabulary(tokenizer) for tokenizer in (tokenizers.src, tokenizers.tgt)]
    spec = _transformer_spec(model.eval(), config.model)
    spec.register_source_vocabulary(vocabularies[0])
    spec.register_target_vocabulary(vocabularies[1])
    spec.validate()
    if quantization:
        spec.optimize(quantization=quantization)
    output_dir = Path(output_dir)
    if output_dir.exists():
        if not force:
            raise MTError(f"output directory '{output_dir}' exists; pass --force to replace it")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    spec.save(str(output_dir))
    for tokenizer in {id(t): t for t in (tokenizers.src, tokenizers.tgt)}.values():
        shutil.copy(tokenizer.path, output_dir / tokenizer.path.name)  # so the directory is all a server needs
    return output_dir


def _vocabulary(tokenizer) -> list[str]:
    """The tokenizer's pieces in id order, checked to start with CTranslate2's special tokens."""
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    if any(pieces[i] != piece for i, piece in SPECIAL_PIECES.items()):
        raise MTError(f"tokenizer '{tokenizer.path}': special pieces {pieces[:4]} are not "
                      f"{list(SPECIAL_PIECES.values())}")
    return pieces


def _transformer_spec(model: Transformer, cfg: ModelConfig):
    """A ``TransformerSpec`` holding the model's weights, module by module."""
    from ctranslate2.specs import common_spec, transformer_spec

    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=cfg.norm == "pre",
        activation=common_spec.Activation.RELU if cfg.activation == "relu" else common_spec.Activation.GELU)
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = model.encoder_layers[0].attn_block.norm.eps

    positions = _position_table(model, cfg.max_positions)
    _set_stack_inputs(spec.encoder, model.src_embed.table.weight, positions)
    _set_stack_inputs(spec.decoder, model.tgt_embed.table.weight, positions)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block)
        _set_feed_forward(layer_spec.ffn, layer)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_block)
        _set_attention(layer_spec.attention, layer.cross_attn, layer.cross_block)
        _set_feed_forward(layer_spec.ffn, layer)
    if cfg.norm == "pre":  # post-norm stacks have no final LayerNorm, and neither does the spec
        _set_layer_norm(spec.encoder.layer_norm, model.encoder_norm)
        _set_layer_norm(spec.decoder.layer_norm, model.decoder_norm)
    spec.decoder.projection.weight = _array(model.output.weight)  # no bias
    return spec


def _array(t: torch.Tensor):
    return t.detach().float().cpu().numpy()


def _position_table(model: Transformer, max_positions: int) -> torch.Tensor:
    """The position encodings, row i for position i (CTranslate2 starts at 0, as we do)."""
    if isinstance(model.positions, SinusoidalPositions):
        return model.positions(max(max_positions, 1024))
    return model.positions.table.weight


def _set_stack_inputs(stack_spec, embedding: torch.Tensor, positions: torch.Tensor) -> None:
    embeddings = stack_spec.embeddings[0] if isinstance(stack_spec.embeddings, list) else stack_spec.embeddings
    embeddings.weight = _array(embedding)
    stack_spec.scale_embeddings = True  # x sqrt(d_model), section 3.4
    stack_spec.position_encodings.encodings = _array(positions)


def _set_linear(spec, linear: torch.nn.Linear) -> None:
    spec.weight = _array(linear.weight)
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def _set_layer_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _set_attention(spec, attn: MultiHeadAttention, block: Residual) -> None:
    """CTranslate2 also fuses Q,K,V (self-attention) and K,V (cross-attention), in our order."""
    if attn.cross:
        _set_linear(spec.linear[0], attn.q_proj)
        _set_linear(spec.linear[1], attn.kv_proj)
    else:
        _set_linear(spec.linear[0], attn.qkv_proj)
    _set_linear(spec.linear[-1], attn.out_proj)
    _set_layer_norm(spec.layer_norm, block.norm)


def _set_feed_forward(spec, layer) -> None:
    _set_linear(spec.linear_0, layer.feed_forward.w_1)
    _set_linear(spec.linear_1, layer.feed_forward.w_2)
    _set_layer_norm(spec.layer_norm, layer.ff_block.norm)
