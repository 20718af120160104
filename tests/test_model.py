"""The Transformer's masks and cache: what a user would see as wrong translations if broken."""

import pytest
import torch

from mt.model import Transformer

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(40, 40, d_model=32, heads=4, encoder_layers=2, decoder_layers=2, ff_dim=64,
                       dropout=0.0, share_embeddings=True, max_len=64, pad_id=PAD).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    src = torch.randint(4, 40, (3, 9))
    src[1, 6:] = PAD  # a shorter sentence in the batch
    trg = torch.randint(4, 40, (3, 7))
    return src, trg


def test_padding_the_source_does_not_change_outputs(model, batch):
    src, trg = batch
    padded = torch.cat([src, torch.full((3, 5), PAD)], dim=1)
    torch.testing.assert_close(model(padded, trg), model(src, trg), atol=1e-5, rtol=0)


def test_future_target_tokens_do_not_change_earlier_logits(model, batch):
    src, trg = batch
    changed = trg.clone()
    changed[:, 4:] = (changed[:, 4:] + 7) % 36 + 4
    before, after = model(src, trg), model(src, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-5, rtol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_cached_decoding_matches_full_forward(model, batch):
    src, trg = batch
    full = model(src, trg).log_softmax(-1)  # (batch, trg_len, vocab)
    encoder_out, src_mask = model.encode(src)
    cache, steps = model.start_cache(encoder_out), []
    for t in range(trg.size(1)):
        step = model.decode_step(trg[:, t], src_mask, cache)
        steps.append(step.log_probs)
        cache = step.cache
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)


def test_weights_recorded_step_by_step_match_the_whole_prefix_at_once(model, batch):
    """What search records (one position at a time, from the cache) is what teacher forcing shows."""
    src, trg = batch
    _, weights = model.forward_with_attention(src, trg)
    encoder_out, src_mask = model.encode(src)
    cache = model.start_cache(encoder_out)
    for t in range(trg.size(1)):
        step = model.decode_step(trg[:, t], src_mask, cache, need_weights=True)
        cache = step.cache
        for layer in range(2):  # (batch, layers, heads, keys) against row t of (batch, heads, trg_len, keys)
            torch.testing.assert_close(step.cross_weights[:, layer], weights.cross[layer][:, :, t], atol=1e-5, rtol=0)
            torch.testing.assert_close(step.self_weights[:, layer], weights.decoder_self[layer][:, :, t, : t + 1],
                                       atol=1e-5, rtol=0)


def test_explicit_weights_path_matches_fast_path_and_rows_sum_to_one(model, batch):
    src, trg = batch
    with_weights, weights = model.forward_with_attention(src, trg)
    torch.testing.assert_close(with_weights, model(src, trg), atol=1e-5, rtol=0)
    assert len(weights.cross) == 2 and weights.cross[0].shape == (3, 4, 7, 9)  # (batch, heads, trg_len, src_len)
    for w in weights.cross + weights.encoder + weights.decoder_self:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
    assert weights.cross[0][1, :, :, 6:].abs().max() == 0  # padded source positions get no weight
    assert weights.decoder_self[0][0, :, 0, 1:].abs().max() == 0  # no look at the future


@pytest.mark.parametrize("norm,positions", [("post", "learned"), ("pre", "sinusoidal")])
def test_options_build_and_cache_still_matches(norm, positions, batch):
    torch.manual_seed(0)
    m = Transformer(40, 50, d_model=32, heads=4, encoder_layers=1, decoder_layers=2, ff_dim=64,
                    activation="gelu", norm=norm, positions=positions, share_embeddings=False).eval()
    src, trg = batch
    full = m(src, trg).log_softmax(-1)
    encoder_out, src_mask = m.encode(src)
    cache = m.start_cache(encoder_out)
    first = m.decode_step(trg[:, 0], src_mask, cache)
    second = m.decode_step(trg[:, 1], src_mask, first.cache)
    torch.testing.assert_close(second.log_probs, full[:, 1], atol=1e-5, rtol=0)
    assert full.shape[-1] == 50


def test_tied_output_shares_the_embedding_matrix(model):
    assert model.output.weight is model.trg_embed.tokens.weight is model.src_embed.tokens.weight
