"""SentencePiece subword models: training from in-memory text, loading, encode/decode, special ids.

A run's tokenizer folder holds either `joint.model` (one vocabulary for both sides) or
`src.model` and `trg.model`. Every model is trained with the same fixed special ids, so the
rest of mt can name them instead of writing bare numbers.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import sentencepiece as spm

from mt.config import TokenizerConfig
from mt.errors import REDO_PREPARE, ConfigError, MtError
from mt.files import atomic_write

PAD_ID = 0  # padding; never a real token, so masks can test `ids != PAD_ID`
UNK_ID = 1  # a character the model never saw (decodes as " ⁇ ")
BOS_ID = 2  # begins every decoder input
EOS_ID = 3  # ends every target; search stops when it is produced
SPECIAL_IDS = frozenset((PAD_ID, UNK_ID, BOS_ID, EOS_ID))
_STRIPPED_IDS = frozenset((PAD_ID, BOS_ID, EOS_ID))  # UNK stays: it marks a real gap in the text

JOINT_MODEL = "joint.model"
SRC_MODEL = "src.model"
TRG_MODEL = "trg.model"
MODEL_NAMES = (JOINT_MODEL, SRC_MODEL, TRG_MODEL)


def _threads() -> int:
    """CPUs this process may use (a container's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _verbose() -> bool:
    """--verbose: the CLI sets the `mt` loggers to DEBUG."""
    return logging.getLogger(__name__).isEnabledFor(logging.DEBUG)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_models(cfg: TokenizerConfig, src_lines: Sequence[str], trg_lines: Sequence[str]) -> dict[str, bytes]:
    """Train SentencePiece in memory on all of these sentences; return model file name -> model
    bytes. Writes nothing. A large corpus is sampled first (`mt prepare` draws at most
    `tokenizer.max_sentences`), so SentencePiece never holds more than the sample.

    Kept apart from saving so that `mt prepare` can check the data is trainable before it
    touches the run directory.
    """
    if cfg.joint:
        return {JOINT_MODEL: _train_one(cfg, itertools.chain(src_lines, trg_lines), "this data")}
    return {
        SRC_MODEL: _train_one(cfg, iter(src_lines), "the source side"),
        TRG_MODEL: _train_one(cfg, iter(trg_lines), "the target side"),
    }


def save_models(models: dict[str, bytes], out_dir: str | os.PathLike) -> None:
    """Write model files atomically and remove any other model left from an earlier setting
    (a stale joint.model beside new src/trg models would be loaded instead of them)."""
    out_dir = Path(out_dir)
    for name, blob in models.items():
        with atomic_write(out_dir / name, "wb") as f:
            f.write(blob)
    for name in MODEL_NAMES:
        if name not in models:
            (out_dir / name).unlink(missing_ok=True)


def train_tokenizers(cfg: TokenizerConfig, src_lines: Sequence[str], trg_lines: Sequence[str],
                     out_dir: str | os.PathLike) -> None:
    """Train the run's SentencePiece model(s) on these sentences and save them in `out_dir`."""
    save_models(train_models(cfg, src_lines, trg_lines), out_dir)


def _train_one(cfg: TokenizerConfig, sentences: Iterable[str], what: str) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=cfg.type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=_threads(),
            minloglevel=0 if _verbose() else 2,  # its training log is hundreds of lines
        )
    except RuntimeError as e:
        raise _training_error(cfg, str(e), what) from None
    return model.getvalue()


def _training_error(cfg: TokenizerConfig, message: str, what: str) -> MtError:
    """Turn SentencePiece's check failure (file, line and condition) into advice in our terms."""
    too_high = re.search(r"Vocabulary size (?:is )?too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return ConfigError(f"tokenizer.vocab_size: {cfg.vocab_size} is more than {what} allows; "
                           f"lower it to at most {too_high.group(1)}")
    too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return ConfigError(f"tokenizer.vocab_size: {cfg.vocab_size} is less than {what} needs (its characters "
                           f"plus 4 special ids); raise it to at least {too_low.group(1)} "
                           "or lower tokenizer.character_coverage")
    if "sentences_.empty()" in message:
        return MtError(f"tokenizer: no text to train on in {what} (every line is empty)")
    detail = message.split("] ", 1)[-1].strip() or message  # drop "INTERNAL: src/x.cc(12) [cond]"
    return MtError(f"tokenizer: SentencePiece training failed on {what}: {detail}")


# ---------------------------------------------------------------------------------------------
# Using a trained tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """The source and target SentencePiece models of a run (one shared model when joint)."""

    def __init__(self, models: dict[str, bytes], where: str = "tokenizer"):
        self._joint = JOINT_MODEL in models
        if self._joint:
            self._src = self._trg = _processor(models[JOINT_MODEL], f"{where}/{JOINT_MODEL}")
        else:
            self._src = _processor(models[SRC_MODEL], f"{where}/{SRC_MODEL}")
            self._trg = _processor(models[TRG_MODEL], f"{where}/{TRG_MODEL}")
        self._identity = {
            "joint": self._joint,
            "models": {name: hashlib.sha256(blob).hexdigest() for name, blob in sorted(models.items())},
            "src_vocab_size": self.src_vocab_size,
            "trg_vocab_size": self.trg_vocab_size,
        }

    @classmethod
    def load(cls, tokenizer_dir: str | os.PathLike) -> Tokenizer:
        """Load `joint.model`, or else `src.model` and `trg.model`, from a run's tokenizer folder."""
        tokenizer_dir = Path(tokenizer_dir)
        names = [JOINT_MODEL] if (tokenizer_dir / JOINT_MODEL).is_file() else [SRC_MODEL, TRG_MODEL]
        missing = [name for name in names if not (tokenizer_dir / name).is_file()]
        if missing:
            raise MtError(f"{tokenizer_dir}: no tokenizer (expected {JOINT_MODEL}, or {SRC_MODEL} and "
                          f"{TRG_MODEL}); run mt prepare")
        return cls({name: (tokenizer_dir / name).read_bytes() for name in names}, str(tokenizer_dir))

    def model_names(self) -> list[str]:
        """The model files this tokenizer is made of, as `load` reads them."""
        return [JOINT_MODEL] if self._joint else [SRC_MODEL, TRG_MODEL]

    @property
    def joint(self) -> bool:
        return self._joint

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def trg_vocab_size(self) -> int:
        return self._trg.get_piece_size()

    def encode_src(self, lines: Sequence[str], threads: Optional[int] = None) -> list[list[int]]:
        """Piece ids per line, without BOS/EOS (the model adds what it needs); on `threads`
        threads, by default one a core."""
        return self._src.encode(list(lines), out_type=int, num_threads=threads or _threads())

    def encode_trg(self, lines: Sequence[str], threads: Optional[int] = None) -> list[list[int]]:
        """Piece ids per line, without BOS/EOS (training adds BOS to inputs, EOS to labels)."""
        return self._trg.encode(list(lines), out_type=int, num_threads=threads or _threads())

    def decode_trg(self, ids_lists: Iterable[Sequence[int]]) -> list[str]:
        """Detokenized text per id list; PAD, BOS and EOS are dropped wherever they occur."""
        cleaned = [[i for i in _ints(ids) if i not in _STRIPPED_IDS] for ids in ids_lists]
        return self._trg.decode(cleaned)

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        """Piece strings, e.g. '▁Hund', for labelling attention plots."""
        return [self._src.id_to_piece(i) for i in _ints(ids)]

    def trg_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._trg.id_to_piece(i) for i in _ints(ids)]

    def identity(self) -> dict:
        """Plain data naming these exact models, to check a checkpoint was trained with them."""
        return {**self._identity, "models": dict(self._identity["models"])}


def _ints(ids: Sequence[int]) -> list[int]:
    """Plain ints from a list, NumPy array or tensor (SentencePiece rejects NumPy integers)."""
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def _processor(blob: bytes, where: str) -> spm.SentencePieceProcessor:
    try:
        if not blob:  # SentencePiece would take an empty file for an empty model
            raise RuntimeError("empty file")
        processor = spm.SentencePieceProcessor(model_proto=blob)
    except RuntimeError:
        raise MtError(f"{where}: not a SentencePiece model (corrupt file?); {REDO_PREPARE}") from None
    found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise MtError(f"{where}: special ids pad/unk/bos/eos are {found}, mt needs "
                      f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with mt prepare")
    return processor
