"""SentencePiece training, loading, encode/decode and special ids, on the 600 toy pairs."""

from __future__ import annotations

import json
import re

import pytest

from mt.config import TokenizerConfig
from mt.errors import MtError
from mt.tokenizer import (BOS_ID, EOS_ID, JOINT_MODEL, PAD_ID, SRC_MODEL, TRG_MODEL, UNK_ID, Tokenizer,
                          save_models, train_models)

VOCAB = 60  # the toy pairs allow at most about 85 pieces (unigram, joint)


def sides(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [src for src, _ in pairs], [trg for _, trg in pairs]


@pytest.fixture(scope="module")
def joint_models(toy_pairs) -> dict[str, bytes]:
    return train_models(TokenizerConfig(vocab_size=VOCAB, joint=True), *sides(toy_pairs))


@pytest.fixture(scope="module")
def separate_models(toy_pairs) -> dict[str, bytes]:
    return train_models(TokenizerConfig(vocab_size=40, joint=False), *sides(toy_pairs))


def test_special_ids_are_pad_0_unk_1_bos_2_eos_3(joint_models, separate_models):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    for models in (joint_models, separate_models):
        tokenizer = Tokenizer(models)
        assert tokenizer.src_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
        assert tokenizer.trg_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]


def test_encoded_text_holds_no_pad_bos_or_eos(joint_models, toy_pairs):
    tokenizer = Tokenizer(joint_models)
    src, trg = sides(toy_pairs)
    for ids in tokenizer.encode_src(src) + tokenizer.encode_trg(trg):
        assert ids and not {PAD_ID, BOS_ID, EOS_ID, UNK_ID} & set(ids)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
@pytest.mark.parametrize("joint", [True, False], ids=["joint", "separate"])
def test_encode_decode_round_trips_text(toy_pairs, kind, joint):
    tokenizer = Tokenizer(train_models(TokenizerConfig(type=kind, vocab_size=40, joint=joint), *sides(toy_pairs)))
    unseen = ["The boat sees the girl.", "A flower carries a dog on the beach."]  # known characters, new sentences
    targets = sides(toy_pairs)[1][:50] + unseen + [""]
    assert tokenizer.decode_trg(tokenizer.encode_trg(targets)) == targets


def test_decode_drops_pad_bos_eos_but_keeps_unknown(joint_models):
    tokenizer = Tokenizer(joint_models)
    [ids] = tokenizer.encode_trg(["The dog sees a ball."])
    assert tokenizer.decode_trg([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["The dog sees a ball."]
    [with_unknown] = tokenizer.encode_trg(["The dog sees a ball!"])  # '!' never occurs in the data
    assert UNK_ID in with_unknown
    assert "⁇" in tokenizer.decode_trg([with_unknown])[0]


def test_joint_writes_one_model_shared_by_both_sides(joint_models, tmp_path):
    save_models(joint_models, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOINT_MODEL]
    tokenizer = Tokenizer.load(tmp_path)
    assert tokenizer.joint and tokenizer.src_vocab_size == tokenizer.trg_vocab_size == VOCAB
    assert tokenizer.encode_src(["Der Hund"]) == tokenizer.encode_trg(["Der Hund"])


def test_separate_models_each_know_only_their_own_side(separate_models, tmp_path):
    save_models(separate_models, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SRC_MODEL, TRG_MODEL]
    tokenizer = Tokenizer.load(tmp_path)
    assert not tokenizer.joint
    assert UNK_ID not in tokenizer.encode_src(["Das Mädchen trägt"])[0]
    assert UNK_ID in tokenizer.encode_trg(["Das Mädchen trägt"])[0]  # no 'ä' in English
    assert UNK_ID not in tokenizer.encode_trg(["The girl carries"])[0]


def test_switching_joint_to_separate_leaves_no_stale_model(joint_models, separate_models, tmp_path):
    save_models(joint_models, tmp_path)
    save_models(separate_models, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SRC_MODEL, TRG_MODEL]
    assert not Tokenizer.load(tmp_path).joint
    save_models(joint_models, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOINT_MODEL]


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
@pytest.mark.parametrize("joint", [True, False], ids=["joint", "separate"])
def test_vocab_size_too_large_says_to_lower_it(toy_pairs, kind, joint):
    with pytest.raises(MtError) as caught:
        train_models(TokenizerConfig(type=kind, vocab_size=5000, joint=joint), *sides(toy_pairs))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert re.fullmatch(r"tokenizer\.vocab_size: 5000 is more than .* allows; lower it to at most \d+", message)
    assert ".cc" not in message and "\n" not in message  # no SentencePiece trace


def test_the_suggested_lower_vocab_size_trains(toy_pairs):
    with pytest.raises(MtError) as caught:
        train_models(TokenizerConfig(vocab_size=5000), *sides(toy_pairs))
    suggested = int(str(caught.value).rpartition(" ")[2])
    tokenizer = Tokenizer(train_models(TokenizerConfig(vocab_size=suggested), *sides(toy_pairs)))
    assert tokenizer.src_vocab_size == suggested


def test_vocab_size_too_small_says_to_raise_it(toy_pairs):
    with pytest.raises(MtError, match=r"^tokenizer\.vocab_size: 20 is less than .* raise it to at least \d+"):
        train_models(TokenizerConfig(vocab_size=20), *sides(toy_pairs))


def test_no_text_is_a_clear_error():
    with pytest.raises(MtError, match="no text to train on"):
        train_models(TokenizerConfig(vocab_size=VOCAB), ["", ""], ["", ""])


def test_identity_names_the_exact_models(joint_models, separate_models, toy_pairs):
    identity = Tokenizer(joint_models).identity()
    assert json.loads(json.dumps(identity)) == identity  # plain data, as checkpoints store it
    retrained = train_models(TokenizerConfig(vocab_size=VOCAB, joint=True), *sides(toy_pairs))
    assert Tokenizer(retrained).identity() == identity  # same data and settings: same models
    other_size = train_models(TokenizerConfig(vocab_size=VOCAB - 10, joint=True), *sides(toy_pairs))
    assert Tokenizer(other_size).identity() != identity
    other_data = train_models(TokenizerConfig(vocab_size=VOCAB, joint=True), *sides(toy_pairs[:300]))
    assert Tokenizer(other_data).identity()["models"] != identity["models"]
    assert Tokenizer(separate_models).identity() != identity


def test_loading_without_a_model_says_to_prepare(tmp_path):
    with pytest.raises(MtError, match=r"no tokenizer .*; run mt prepare$"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("blob", [b"", b"not a model at all", None], ids=["empty", "garbage", "truncated"])
def test_a_corrupt_model_file_is_a_clear_error(joint_models, tmp_path, blob):
    if blob is None:
        blob = joint_models[JOINT_MODEL][:1000]
    (tmp_path / JOINT_MODEL).write_bytes(blob)
    with pytest.raises(MtError, match=rf"{JOINT_MODEL}: not a SentencePiece model .*run mt prepare --force"):
        Tokenizer.load(tmp_path)
