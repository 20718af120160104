"""What the model looked at for one translation: every attention weight, and word alignments.

`teacher_forced_attention` runs the model once on a source and a chosen output (teacher
forcing) and returns all three kinds of attention, the layout of `mt attention --json`:

  encoder   (layers, heads, source pieces, source pieces)
  decoder   (layers, heads, output pieces, decoder inputs): row i produced output piece i
            and looks at the inputs <s> + output pieces 0..i-1
  cross     (layers, heads, output pieces, source pieces)

Pieces include the EOS (`</s>`) of source and output. Search itself can record cross-attention
as it goes (`record_attention`); the weights are the same, up to rounding.

Word alignments: which source word each output word looked at most. SentencePiece pieces are
grouped into words (a piece starting with '▁' starts a word); a word's attention is the sum
over its source pieces, averaged over its target pieces; each target word is aligned to the
source word with the most attention. The source EOS and the output EOS are left out. Pairs are `i-j`: source word i, target word j, both from 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from mt.model import Transformer
from mt.search import Hypothesis
from mt.tokenizer import BOS_ID, Tokenizer

WORD_START = "\u2581"  # SentencePiece's '▁'


@torch.inference_mode()
def teacher_forced_attention(model: Transformer, src_ids: Sequence[int], out_ids: Sequence[int],
                             device: torch.device) -> dict[str, Tensor]:
    """Every attention weight for one source (piece ids, EOS included, e.g. `Translation.src_ids`)
    and one output (ids without BOS/EOS, e.g. `Hypothesis.tokens`): "encoder", "decoder" and
    "cross" -> (layers, heads, queries, keys), float32 on the CPU (see the module docstring)."""
    src = torch.tensor([list(src_ids)], device=device)  # (1, src_len)
    # decoder position i reads trg_in[i] and predicts out_ids[i]; the last position predicts EOS
    trg_in = torch.tensor([[BOS_ID, *out_ids]], device=device)  # (1, trg_len)
    _, weights = model.forward_with_attention(src, trg_in)
    stack = lambda per_layer: torch.stack([w[0] for w in per_layer]).float().cpu()  # noqa: E731
    return {"encoder": stack(weights.encoder), "decoder": stack(weights.decoder_self), "cross": stack(weights.cross)}


def word_ids(pieces: Sequence[str]) -> list[int]:
    """The word index of every piece."""
    ids, word = [], -1
    for k, piece in enumerate(pieces):
        if k == 0 or piece.startswith(WORD_START):
            word += 1
        ids.append(word)
    return ids


def pick(attention: Tensor, layer: Optional[int] = None, head: Optional[int] = None) -> Tensor:
    """(layers, heads, trg, src) -> (trg, src): one layer (default: all, averaged) and one head
    (default: all, averaged)."""
    attention = attention.float()
    attention = attention.mean(dim=0) if layer is None else attention[layer]
    return attention.mean(dim=0) if head is None else attention[head]


def word_attention(tokenizer: Tokenizer, src_ids: Sequence[int], hyp: Hypothesis,
                   layer: Optional[int] = None, head: Optional[int] = None) -> Tensor:
    """(target words, source words) attention, EOS rows and columns dropped."""
    src_words = torch.tensor(word_ids(tokenizer.src_pieces(list(src_ids)[:-1])))
    trg_words = torch.tensor(word_ids(tokenizer.trg_pieces(hyp.tokens)))
    pieces = pick(hyp.attention, layer, head)[: len(trg_words), : len(src_words)]
    n_src, n_trg = int(src_words.max()) + 1, int(trg_words.max()) + 1
    summed = torch.zeros(len(trg_words), n_src).index_add_(1, src_words, pieces)
    per_word = torch.zeros(n_trg, n_src).index_add_(0, trg_words, summed)
    return per_word / torch.bincount(trg_words, minlength=n_trg)[:, None]


def word_alignment(tokenizer: Tokenizer, src_ids: Sequence[int], hyp: Hypothesis,
                   layer: Optional[int] = None, head: Optional[int] = None) -> list[tuple[int, int]]:
    """Hard alignment: (source word, target word) for every target word."""
    if not hyp.tokens or len(src_ids) <= 1 or hyp.attention is None:
        return []
    best = word_attention(tokenizer, src_ids, hyp, layer, head).argmax(dim=1)
    return [(int(i), j) for j, i in enumerate(best.tolist())]
