"""The encoder-decoder Transformer, written out so it can be read top to bottom.

Masks, everywhere in this file: boolean, True = may attend (as `scaled_dot_product_attention`
reads it), broadcast to (batch, heads, query_len, key_len):
  - source padding: (batch, 1, 1, src_len), made once by `Transformer.encode`;
  - causal (decoder self-attention): not a tensor at all in training, `is_causal=True` lets
    SDPA use its fastest kernels; in incremental decoding every cached key is in the past.

Incremental decoding: the encoder runs once; `start_cache` computes every layer's
cross-attention keys/values from its output once; each `decode_step` appends one position's
self-attention keys/values to the cache. The cache is plain data (`LayerCache`), and beam
search reorders it with `reorder_cache`. Decoding a whole prefix at once (training) is the same
decoder on an empty self-attention cache.

Attention weights are computed only when asked for (`need_weights`, `forward_with_attention`),
on the readable path beside the fast one, and returned, never stored on a module.

This module takes numbers, never a config object or a path: train.py turns cfg.model into them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LayerCache:
    """One decoder layer's keys and values, each (batch, heads, len, head_dim)."""

    self_k: Tensor  # grows by one position per step
    self_v: Tensor
    cross_k: Tensor  # made once from the encoder output
    cross_v: Tensor


def reorder_cache(cache: list[LayerCache], index: Tensor, *, cross_index: Optional[Tensor]) -> list[LayerCache]:
    """The cache's rows after a search step: self-attention rows selected by `index`,
    cross-attention rows by `cross_index`. `cross_index=None` leaves the cross-attention rows
    as they are: beam search moving beams between the rows of one sentence, which share the
    encoder output, need not copy it."""
    def cross(t: Tensor) -> Tensor:
        return t if cross_index is None else t.index_select(0, cross_index)

    return [LayerCache(c.self_k.index_select(0, index), c.self_v.index_select(0, index), cross(c.cross_k),
                       cross(c.cross_v)) for c in cache]


def attention_backends():
    """SDPA kernels we allow: flash and memory-efficient, math as the fallback.

    cuDNN attention is left out on purpose: with a padding mask it builds a new graph for
    every new shape, which made training steps 14x slower on an H100 (735 ms vs 52 ms).
    """
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], causal: bool,
                       dropout: float) -> tuple[Tensor, Tensor]:
    """softmax(QK^T / sqrt(head_dim)) V with the weights kept: the readable path, used when
    attention weights are asked for (visualisation, alignments). Same result as SDPA.

    Returns (output (batch, heads, q_len, head_dim), weights (batch, heads, q_len, k_len))."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (batch, heads, q_len, k_len)
    if causal:
        q_len, k_len = scores.shape[-2:]
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(k_len - q_len + 1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(q.dtype)
    return F.dropout(weights, dropout) @ v, weights


@dataclass
class Attended:
    """What one attention call computes."""

    out: Tensor  # (batch, q_len, d_model)
    k: Tensor  # (batch, heads, k_len, head_dim): the keys and values a cache keeps
    v: Tensor
    weights: Optional[Tensor]  # (batch, heads, q_len, k_len) when asked for, else None


class MultiHeadAttention(nn.Module):
    """Multi-head attention. Self-attention projects Q, K, V with one fused matrix; cross
    attention projects Q from the decoder and K, V (fused) from the encoder output."""

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool):
        super().__init__()
        self.heads, self.head_dim, self.dropout, self.cross = heads, d_model // heads, dropout, cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)  # (batch, heads, len, head_dim)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output, computed once per sentence."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, causal: bool = False,
                kv: Optional[tuple[Tensor, Tensor]] = None, need_weights: bool = False) -> Attended:
        """x: (batch, q_len, d_model). Self-attention: kv=None uses x's keys/values, or
        kv=(past_k, past_v) from the cache, extended by x's. Cross-attention: kv is required."""
        batch, q_len, d_model = x.shape
        if self.cross:
            q = self.split_heads(self.q_proj(x))
            k, v = kv
        else:
            q, k, v = (self.split_heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if kv is not None and kv[0].size(2) > 0:  # incremental decoding: the past comes from the cache
                k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        causal = causal and q_len > 1  # one query at the end of the cache may see every key
        weights = None
        if need_weights:
            out, weights = explicit_attention(q, k, v, mask, causal, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=causal and mask is None)
        out = out.transpose(1, 2).reshape(batch, q_len, d_model)  # (batch, q_len, d_model)
        return Attended(self.out_proj(out), k, v, weights)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, activation: str, activation_dropout: float):
        super().__init__()
        self.up, self.down = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model)
        self.activation = F.gelu if activation == "gelu" else F.relu
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.activation_dropout(self.activation(self.up(x))))


class Residual(nn.Module):
    """x + dropout(sublayer(norm(x))) when pre-norm; norm(x + dropout(sublayer(x))) when post-norm."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model), nn.Dropout(dropout), pre_norm

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_out)
        return x if self.pre_norm else self.norm(x)


@dataclass(frozen=True)
class LayerSizes:
    """What every encoder and decoder layer is built from."""

    d_model: int
    heads: int
    ff_dim: int
    dropout: float  # on each sublayer's output, before the residual sum
    attention_dropout: float  # on the attention weights
    activation: str  # "relu" or "gelu"
    activation_dropout: float  # inside the feed-forward block
    pre_norm: bool  # LayerNorm before each sublayer (True) or after the residual sum (False)


class EncoderLayer(nn.Module):
    def __init__(self, s: LayerSizes):
        super().__init__()
        self.self_attn = MultiHeadAttention(s.d_model, s.heads, s.attention_dropout, cross=False)
        self.ff = FeedForward(s.d_model, s.ff_dim, s.activation, s.activation_dropout)
        self.attn_res, self.ff_res = (Residual(s.d_model, s.dropout, s.pre_norm) for _ in range(2))

    def forward(self, x: Tensor, src_mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """x (batch, src_len, d_model) -> the layer's output, and its self-attention weights
        (batch, heads, src_len, src_len) when asked for."""
        attended = self.self_attn(self.attn_res.before(x), mask=src_mask, need_weights=need_weights)
        x = self.attn_res.after(x, attended.out)
        x = self.ff_res.after(x, self.ff(self.ff_res.before(x)))
        return x, attended.weights


@dataclass
class DecoderLayerOutput:
    x: Tensor  # (batch, positions, d_model)
    cache: LayerCache  # the layer's cache, extended by these positions
    self_weights: Optional[Tensor]  # (batch, heads, positions, past + positions) when asked for
    cross_weights: Optional[Tensor]  # (batch, heads, positions, src_len) when asked for


class DecoderLayer(nn.Module):
    def __init__(self, s: LayerSizes):
        super().__init__()
        self.self_attn = MultiHeadAttention(s.d_model, s.heads, s.attention_dropout, cross=False)
        self.cross_attn = MultiHeadAttention(s.d_model, s.heads, s.attention_dropout, cross=True)
        self.ff = FeedForward(s.d_model, s.ff_dim, s.activation, s.activation_dropout)
        self.self_res, self.cross_res, self.ff_res = (Residual(s.d_model, s.dropout, s.pre_norm) for _ in range(3))

    def forward(self, x: Tensor, src_mask: Tensor, cache: LayerCache, need_weights: bool = False
                ) -> DecoderLayerOutput:
        """x: the new positions (batch, positions, d_model); `cache` holds the past positions'
        self-attention keys/values (none for a whole prefix at once) and the encoder's."""
        own = self.self_attn(self.self_res.before(x), causal=True, kv=(cache.self_k, cache.self_v),
                             need_weights=need_weights)
        x = self.self_res.after(x, own.out)
        cross = self.cross_attn(self.cross_res.before(x), mask=src_mask, kv=(cache.cross_k, cache.cross_v),
                                need_weights=need_weights)
        x = self.cross_res.after(x, cross.out)
        x = self.ff_res.after(x, self.ff(self.ff_res.before(x)))
        return DecoderLayerOutput(x, LayerCache(own.k, own.v, cache.cross_k, cache.cross_v), own.weights,
                                  cross.weights)


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """The fixed sin/cos table of Vaswani et al., (max_len, d_model)."""
    position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class Embedding(nn.Module):
    """Token embeddings scaled by sqrt(d_model) plus positions, then dropout."""

    def __init__(self, tokens: nn.Embedding, d_model: int, max_len: int, positions: str, dropout: float):
        super().__init__()
        self.tokens, self.scale, self.max_len = tokens, math.sqrt(d_model), max_len
        self.learned = positions == "learned"
        if self.learned:
            self.positions = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.positions.weight, std=d_model ** -0.5)
        else:
            self.register_buffer("positions_table", sinusoidal_positions(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        length = ids.size(1)
        if self.learned:
            pos = self.positions(torch.arange(start, start + length, device=ids.device))
        else:
            pos = self.positions_table[start:start + length]
        x = self.tokens(ids) * self.scale  # bring embeddings to the scale of the positional signal
        return self.dropout(x + pos)


@dataclass
class AttentionWeights:
    """Every attention weight of a forward pass: one (batch, heads, query_len, key_len) tensor per layer."""

    encoder: list[Tensor]  # queries and keys: source positions
    decoder_self: list[Tensor]  # queries: target positions; keys: decoder inputs up to each query
    cross: list[Tensor]  # queries: target positions; keys: source positions


@dataclass
class DecoderStep:
    """What one incremental decoding step computes for every row of the batch."""

    log_probs: Tensor  # (batch, vocab), float32: log-softmax of the next token's logits
    cache: list[LayerCache]  # the cache with this position added
    self_weights: Optional[Tensor]  # (batch, layers, heads, positions so far) when asked for
    cross_weights: Optional[Tensor]  # (batch, layers, heads, src_len) when asked for


class Transformer(nn.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017), pre-norm by default.

    Source ids (batch, src_len) and target inputs (BOS + ids, batch, trg_len) in; logits over
    the target vocabulary (batch, trg_len, vocab) out. `pad_id` marks padding in both.

      forward(src_ids, trg_in)                -> logits: training and scoring
      forward_with_attention(src_ids, trg_in) -> logits and every layer's attention weights
      encode, start_cache, decode_step        -> search: the encoder once, then one target
                                                 position per step on a cache (log-probabilities)
    """

    def __init__(self, src_vocab: int, trg_vocab: int, *, d_model: int = 512, heads: int = 8,
                 encoder_layers: int = 6, decoder_layers: int = 6, ff_dim: int = 2048,
                 dropout: float = 0.1, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                 activation: str = "relu", norm: str = "pre", positions: str = "sinusoidal",
                 max_len: int = 256, share_embeddings: bool = False, tie_output: bool = True,
                 pad_id: int = 0):
        super().__init__()
        if share_embeddings and src_vocab != trg_vocab:
            raise ValueError("shared embeddings need one vocabulary")
        self.pad_id, self.max_len, self.pre_norm = pad_id, max_len, norm == "pre"
        trg_tokens = nn.Embedding(trg_vocab, d_model, padding_idx=pad_id)
        src_tokens = trg_tokens if share_embeddings else nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
        for table in {id(t): t for t in (src_tokens, trg_tokens)}.values():
            nn.init.normal_(table.weight, std=d_model ** -0.5)
            nn.init.zeros_(table.weight[pad_id])
        self.src_embed = Embedding(src_tokens, d_model, max_len, positions, dropout)
        self.trg_embed = Embedding(trg_tokens, d_model, max_len, positions, dropout)
        sizes = LayerSizes(d_model, heads, ff_dim, dropout, attention_dropout, activation, activation_dropout,
                           self.pre_norm)
        self.encoder_layers = nn.ModuleList(EncoderLayer(sizes) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(sizes) for _ in range(decoder_layers))
        # pre-norm leaves the last residual stream un-normalised; one final norm per stack fixes that
        self.encoder_norm = nn.LayerNorm(d_model) if self.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if self.pre_norm else nn.Identity()
        self.output = nn.Linear(d_model, trg_vocab, bias=False)
        self._init_linear_weights()
        if tie_output:
            self.output.weight = trg_tokens.weight

    def _init_linear_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, src_ids: Tensor, trg_in: Tensor) -> Tensor:
        """Logits (batch, trg_len, vocab) for every target position at once."""
        encoder_out, src_mask = self.encode(src_ids)
        return self.decode(trg_in, encoder_out, src_mask)

    def forward_with_attention(self, src_ids: Tensor, trg_in: Tensor) -> tuple[Tensor, AttentionWeights]:
        """`forward` on the readable attention path: logits, and every layer's weights."""
        encoder_out, src_mask, encoder_weights = self._encode(src_ids, need_weights=True)
        x, layers = self._decode(trg_in, src_mask, self.start_cache(encoder_out), need_weights=True)
        weights = AttentionWeights(encoder_weights, [out.self_weights for out in layers],
                                   [out.cross_weights for out in layers])
        return self.output(self.decoder_norm(x)), weights

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (batch, src_len) -> encoder_out (batch, src_len, d_model), src_mask (batch, 1, 1, src_len)."""
        encoder_out, src_mask, _ = self._encode(src_ids, need_weights=False)
        return encoder_out, src_mask

    def _encode(self, src_ids: Tensor, need_weights: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        """`encode`, and each layer's self-attention weights when asked for (else an empty list)."""
        src_mask = (src_ids != self.pad_id)[:, None, None, :]
        x, weights = self.src_embed(src_ids), []
        for layer in self.encoder_layers:
            x, w = layer(x, src_mask, need_weights)
            if need_weights:
                weights.append(w)
        return self.encoder_norm(x), src_mask, weights

    def decode(self, trg_in: Tensor, encoder_out: Tensor, src_mask: Tensor) -> Tensor:
        """The whole target prefix at once (training, scoring): logits (batch, trg_len, vocab)."""
        x, _ = self._decode(trg_in, src_mask, self.start_cache(encoder_out), need_weights=False)
        return self.output(self.decoder_norm(x))

    def start_cache(self, encoder_out: Tensor) -> list[LayerCache]:
        """Every layer's cross-attention keys/values, computed once; empty self-attention caches."""
        batch, heads = encoder_out.size(0), self.decoder_layers[0].self_attn.heads
        head_dim = self.decoder_layers[0].self_attn.head_dim
        empty = encoder_out.new_zeros(batch, heads, 0, head_dim)
        return [LayerCache(empty, empty, *layer.cross_attn.project_kv(encoder_out)) for layer in self.decoder_layers]

    def decode_step(self, last_ids: Tensor, src_mask: Tensor, cache: list[LayerCache],
                    need_weights: bool = False) -> DecoderStep:
        """One target position: last_ids (batch,) -> the next token's log-probabilities, the
        cache with this position added and, when asked for, this position's attention weights.

        Only the new position runs through the decoder; the past comes from the cache.
        """
        x, layers = self._decode(last_ids[:, None], src_mask, cache, need_weights)
        logits = self.output(self.decoder_norm(x[:, 0]))  # (batch, vocab)
        self_weights = cross_weights = None
        if need_weights:  # (batch, heads, 1, keys) per layer -> (batch, layers, heads, keys)
            self_weights = torch.stack([out.self_weights[:, :, 0] for out in layers], dim=1)
            cross_weights = torch.stack([out.cross_weights[:, :, 0] for out in layers], dim=1)
        return DecoderStep(logits.float().log_softmax(dim=-1), [out.cache for out in layers], self_weights,
                           cross_weights)

    def _decode(self, trg_ids: Tensor, src_mask: Tensor, cache: list[LayerCache], need_weights: bool
                ) -> tuple[Tensor, list[DecoderLayerOutput]]:
        """New target positions (batch, positions) after the cached ones, through every decoder
        layer: the last layer's output (batch, positions, d_model), before the final norm, and
        what each layer computed (its extended cache, its weights when asked for)."""
        x = self.trg_embed(trg_ids, start=cache[0].self_k.size(2))  # (batch, positions, d_model)
        layers = []
        for layer, layer_cache in zip(self.decoder_layers, cache):
            layers.append(layer(x, src_mask, layer_cache, need_weights))
            x = layers[-1].x
        return x, layers
