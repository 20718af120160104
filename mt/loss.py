"""The token loss: label-smoothed cross-entropy over real target tokens, for training and validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mt.batching import Batch
from mt.tokenizer import PAD_ID


def token_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy summed over the batch's real target tokens (padding ignored)."""
    logits = model(batch.src_ids, batch.trg_in)  # (batch, trg_len, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.trg_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")
