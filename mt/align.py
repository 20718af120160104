"""Word alignments from cross-attention: which source word each output word looked at most.

SentencePiece pieces are grouped into words (a piece starting with '▁' starts a word); a
word's attention is the sum over its source pieces, averaged over its target pieces; each
target word is aligned to the source word with the most attention. The source EOS and the
output EOS are left out. Pairs are `i-j`: source word i, target word j, both from 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from mt.search import Hypothesis
from mt.tokenizer import Tokenizer

WORD_START = "\u2581"  # SentencePiece's '▁'


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
