"""The words on the tour's figures in each language, and the font that draws Chinese ones.

The drawing code writes every label in English; ``labeller(lang)`` looks it up here. The
Chinese labels use the terms of docs/transformer.zh.md; the sentence's pieces (tokens),
formulas and code names stay as they are.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable

from mt.errors import MTError

ZH = {
    # attention maps
    "cross-attention": "交叉注意力",
    "source piece (keys, values: the encoder output)": "源语言子词（键和值：编码器的输出）",
    "target piece being produced (queries)": "正在生成的目标语言子词（查询）",
    "encoder self-attention": "编码器自注意力",
    "source piece (keys)": "源语言子词（键）",
    "source piece (queries)": "源语言子词（查询）",
    "decoder masked self-attention": "解码器带掩码的自注意力",
    "decoder input (keys; later pieces are masked)": "解码器输入（键；后面的子词被屏蔽）",
    "decoder input (queries; position t predicts piece t+1)": "解码器输入（查询；位置 t 预测第 t+1 个子词）",
    "layer {layer}, head {head}": "第 {layer} 层，第 {head} 个头",
    "{name}, {layer}, {head}": "{name}，{layer}，{head}",
    "layer {layer}": "第 {layer} 层",
    "head {head}": "第 {head} 个头",
    "layer mean": "各层平均",
    "head mean": "各头平均",
    # positional encoding
    "positions 0-99, d_model={d_model} ({kind})": "位置 0-99，d_model={d_model}（{kind}）",
    "sinusoidal, sin/cos interleaved": "正弦，sin/cos 交错排列",
    "learned": "可学习",
    "dimension (even: sin, odd: cos; slow pairs show as sin 0 / cos 1 stripes)":
        "维度（偶数维 sin，奇数维 cos；转得慢的一对显示为 sin 0 / cos 1 的竖条纹）",
    "position": "位置",
    "dim {dim} ({fn})": "第 {dim} 维（{fn}）",
    "one lane per dimension; higher ones turn slower": "每一维单独占一道；维度越高，转得越慢",
    # masks
    "source position": "源语言位置",
    "sentence in the batch": "批次中的句子",
    "padding mask of a batch (B={B}, S={S})": "一个批次的填充掩码（B={B}，S={S}）",
    "{i}: {n} real": "{i}：真实长度 {n}",
    "encoder self-attention, shortest sentence:\npadded keys hidden, no look-ahead mask":
        "编码器自注意力，最短的句子：\n填充的键被隐藏，没有前瞻掩码",
    "decoder self-attention: causal mask\n(query t sees keys <= t)": "解码器自注意力：因果掩码\n（查询 t 只看到 <= t 的键）",
    "key": "键",
    "query": "查询",
    "green: True, may attend; white: False, masked (score set to -inf, weight exactly 0)":
        "绿色：True，可以关注；白色：False，被屏蔽（分数设为 -inf，权重恰好为 0）",
    # score variance
    "variance of the score (measured)": "分数的方差（实测）",
    "random q, k with unit-variance components": "随机的 q、k，各分量的方差为 1",
    "d_k={d} (this model): {u:.1f}": "d_k={d}（本模型）：{u:.1f}",
    "mean largest weight over 10 keys": "10 个键上最大权重的平均值",
    "unscaled scores saturate the softmax (one weight -> 1)": "不缩放的分数使 softmax 饱和（一个权重趋近 1）",
    # learning-rate schedules
    "step": "步数",
    "learning rate": "学习率",
    "the paper: d_model^-0.5 min(step^-0.5, step warmup^-1.5)\n(d_model 512, warmup 4000)":
        "论文：d_model^-0.5 min(step^-0.5, step warmup^-1.5)\n（d_model 512，预热 4000 步）",
    "inverse_sqrt (mt's default): peak {lr:g} at step {warmup}": "inverse_sqrt（mt 的默认）：第 {warmup} 步达到峰值 {lr:g}",
    "budget: the same warmup, then linear to 0 at step {last}": "budget：同样的预热，之后线性下降，第 {last} 步降到 0",
    "this run's settings: lr {lr:g}, warmup {warmup}, {last} steps\n(the run itself used {schedule})":
        "这次运行的设置：lr {lr:g}，预热 {warmup} 步，共 {last} 步\n（这次运行实际用的是 {schedule}）",
    # label smoothing
    "one-hot target": "one-hot 目标",
    "label-smoothed target (eps={eps:g})": "标签平滑后的目标（eps={eps:g}）",
    "the model's softmax": "模型的 softmax",
    "probability (log scale)": "概率（对数坐标）",
    "one target position; every one of the {vocab} vocabulary entries gets eps/V = {share:.2g}, "
    "the right one 1 - eps + eps/V":
        "一个目标位置：词表的 {vocab} 个子词每个得到 eps/V = {share:.2g}，正确的那个得到 1 - eps + eps/V",
    "{piece} (target)": "{piece}（目标）",
    # learning curves
    "training loss: label-smoothed, dropout on, one batch at a time": "训练损失：标签平滑，开启 dropout，逐批次",
    "validation loss: plain NLL (cross-entropy vs one-hot), no dropout, whole set":
        "验证损失：普通 NLL（对 one-hot 的交叉熵），无 dropout，整个验证集",
    "lowest label-smoothed loss possible: entropy of the smoothed target = {floor:.2f}":
        "标签平滑损失的下限：平滑目标的熵 = {floor:.2f}",
    "loss per target token (nats)": "每个目标词元的损失（nats）",
    "{run}: {steps} steps": "{run}：{steps} 步",
    # beam search
    "step (target pieces so far); each box: the new piece and the prefix's log-probability":
        "步数（已生成的目标子词数）；每个方框：新的子词和前缀的对数概率",
    "kept in the beam (the {k} best non-EOS)": "留在束中（最好的 {k} 个非 EOS 候选）",
    "ended with </s>: a finished hypothesis": "以 </s> 结束：完成的假设",
    "pruned (the other {k} of the 2k={k2} best; the rest of k x V never shown)":
        "被剪掉（2k={k2} 个最好候选中的另外 {k} 个；k x V 中其余的不画出）",
    "beam search, k={k}, length penalty alpha={alpha:g}: \"{sentence}\" -> \"{best}\"":
        "束搜索，k={k}，长度惩罚 alpha={alpha:g}：“{sentence}” -> “{best}”",
}
LABELS = {"en": None, "zh": ZH}  # language -> English label -> its translation (None: the English itself)
LANGUAGES = list(LABELS)

CJK_FONT = "WenQuanYi Zen Hei"  # Debian's fonts-wqy-zenhei: draws the Chinese labels
CJK_PACKAGE = "fonts-wqy-zenhei"


def labeller(lang: str) -> Callable[..., str]:
    """``label(english, **fields)`` -> that label in ``lang``, its ``{fields}`` filled in."""
    table = LABELS[lang]

    def label(text: str, **fields) -> str:
        if table is None:
            return text.format(**fields)
        if text not in table:
            raise KeyError(f"no {lang} label for {text!r}: add it to mt/plot_labels.py")
        return table[text].format(**fields)
    return label


def cjk_font() -> str:
    """The family of the font drawing Chinese labels, found by matplotlib's font manager."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if not any(f.name == CJK_FONT for f in manager.ttflist):
        # installed after matplotlib cached its font list: read the system's fonts it has not seen
        seen = {f.fname for f in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in seen:
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):  # not a font FreeType reads: matplotlib skips it too
                    pass
    if not any(f.name == CJK_FONT for f in manager.ttflist):
        raise MTError(f"the Chinese figures need the font {CJK_FONT}, which matplotlib does not find: install "
                      f"it (Debian/Ubuntu: sudo apt-get install {CJK_PACKAGE}) and run again")
    return CJK_FONT


def _not_weight_notice(record: logging.LogRecord) -> bool:
    return "Failed to find font weight" not in record.getMessage()


@contextmanager
def fonts(lang: str):
    """Draw and save the figures of ``lang`` inside this: Chinese needs a CJK font.

    Latin letters, digits and pieces keep matplotlib's DejaVu Sans (as in the English
    figures); the characters it lacks come from the CJK font.
    """
    if lang == "en":
        yield
        return
    from matplotlib import rc_context

    family = cjk_font()
    log = logging.getLogger("matplotlib.font_manager")
    log.addFilter(_not_weight_notice)  # the font has one weight, 500: matplotlib would log each lookup of 400
    try:
        with rc_context({"font.family": ["DejaVu Sans", family]}):
            yield
    finally:
        log.removeFilter(_not_weight_notice)
