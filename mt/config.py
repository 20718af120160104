"""The run configuration: typed dataclasses built from one YAML file plus `--set` overrides.

Every key has a default and a check. A mistake is a `ConfigError` naming the file, the line
(where YAML gives one), the dotted key and what was expected, e.g.

    configs/toy.yaml:14: training.lr: expected a number > 0, got 'fast'
    configs/toy.yaml:9: unknown key 'trainig' (did you mean 'training'?)

This module imports no torch, so `mt --help` and config errors are instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mt.errors import ConfigError
from mt.files import as_given, not_a_file
from mt.yaml_bounds import check_bounded

# ---------------------------------------------------------------------------------------------
# The schema. A YAML key and its attribute share one spelling: `training.lr` is cfg.training.lr.
# `metadata` holds range checks: gt / ge / lt / le.
# ---------------------------------------------------------------------------------------------


Precision = Literal["auto", "bf16", "fp16", "fp32"]  # autocast dtype for training and decoding
PRECISIONS = typing.get_args(Precision)


def _positive(default: Any, le: float) -> Any:
    return field(default=default, metadata={"gt": 0, "le": le})


def _nonneg(default: Any, le: float) -> Any:
    return field(default=default, metadata={"ge": 0, "le": le})


def _fraction(default: float) -> Any:
    return field(default=default, metadata={"ge": 0, "lt": 1})


@dataclass
class FilePair:
    src: str = ""
    trg: str = ""


@dataclass
class FilterConfig:
    """Training-pair filters; each one's dropped count is reported by `mt prepare`."""

    drop_empty: bool = True  # a pair with an empty side
    max_words: int = _nonneg(250, le=1_000_000)  # whitespace words per side; 0 = off
    max_ratio: float = _nonneg(4.0, le=1_000_000)  # longer/shorter side in words; 0 = off
    drop_duplicates: bool = True  # exact duplicate (src, trg) pairs


@dataclass
class DataConfig:
    corpus: Optional[Literal["multi30k"]] = None  # a known public corpus, downloaded on first use
    src_lang: str = "de"
    trg_lang: str = "en"
    data_dir: Optional[str] = None  # a folder already holding the corpus files (else $MT_DATA, else download)
    train: Optional[FilePair] = None
    dev: Optional[FilePair] = None
    test: dict[str, FilePair] = field(default_factory=dict)
    filter: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class TokenizerConfig:
    type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = field(default=8000, metadata={"ge": 16, "le": 1_000_000})
    joint: bool = True  # one SentencePiece model and vocabulary for both sides
    character_coverage: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    max_sentences: int = _positive(2_000_000, le=1_000_000_000)  # sample for training


@dataclass
class ModelConfig:
    d_model: int = _positive(512, le=65_536)
    heads: int = _positive(8, le=1024)
    encoder_layers: int = _positive(6, le=1000)
    decoder_layers: int = _positive(6, le=1000)
    ff_dim: int = _positive(2048, le=1_048_576)
    dropout: float = _fraction(0.1)
    attention_dropout: float = _fraction(0.0)
    activation_dropout: float = _fraction(0.0)
    activation: Literal["relu", "gelu"] = "relu"
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_len: int = _positive(256, le=1_048_576)  # longest sequence, in subwords, the model accepts
    share_embeddings: bool = True  # source and target embeddings (needs tokenizer.joint)
    tie_output: bool = True  # target embedding = output projection


@dataclass
class EarlyStoppingConfig:
    metric: Literal["bleu", "loss"] = "bleu"
    patience: int = _nonneg(10, le=1_000_000)  # validations without improvement; 0 = never stop early


@dataclass
class TrainingConfig:
    seed: int = field(default=1, metadata={"ge": 0, "le": 2**32 - 1})  # what NumPy's generator takes
    max_steps: int = _nonneg(100_000, le=10**12)  # optimizer updates; 0 = no limit
    max_epochs: int = _nonneg(0, le=10**9)  # 0 = no limit
    max_minutes: float = _nonneg(0.0, le=10**9)  # wall time; 0 = no limit
    batch_tokens: int = _positive(4096, le=10**9)  # target tokens per batch (per process)
    update_freq: int = _positive(1, le=100_000)  # batches accumulated into one update
    lr: float = _positive(7e-4, le=1e12)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = _nonneg(0.0, le=100)
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    warmup_steps: int = _nonneg(4000, le=10**12)
    clip_norm: float = _nonneg(1.0, le=1e9)  # 0 = no clipping
    label_smoothing: float = _fraction(0.1)
    precision: Precision = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    validate_every: int = _positive(1000, le=10**12)  # steps
    save_every: int = _positive(1000, le=10**12)  # steps
    keep_checkpoints: int = _positive(5, le=1_000_000)
    log_every: int = _positive(100, le=10**12)
    max_bad_steps: int = _positive(10, le=1_000_000)  # NaN/inf losses, or batches too big for memory, in a row before training stops
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class DecodingConfig:
    beam: int = _positive(5, le=1000)
    length_penalty: float = _nonneg(1.0, le=100)  # GNMT alpha; 0 = none
    max_len_a: float = _nonneg(1.5, le=1000)  # output length limit: a * source length + b (subwords)
    max_len_b: int = _nonneg(10, le=1_000_000)
    batch_tokens: int = _positive(8000, le=10**9)  # source tokens per translation batch


@dataclass
class Config:
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _Where:
    """Where each dotted key was written: 'file:line' for YAML keys, '--set' for overrides."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}
        self.overridden: set[str] = set()

    def __call__(self, key: str) -> str:
        for given in sorted(self.overridden):  # the key itself, or a key under it, came from --set
            if given == key or given.startswith(key + "."):
                return f"--set {given}"
        probe = key
        while probe:  # a key without a line of its own reports its parent's
            if probe in self.lines:
                return f"{self.source}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.source


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `--set key=value` overrides, validate, and return it."""
    path = Path(path)
    if not path.is_file():
        reason = not_a_file(path)
        raise ConfigError(f"{path}: {'no such config file' if reason == 'no such file' else reason}")
    where = _Where(str(path))
    raw = _read_yaml(path, where)
    for override in overrides:
        _apply_override(raw, override, where)
    cfg = _build(Config, raw, "", where)
    _check_consistency(cfg, where)
    _check_files(cfg, where)
    return cfg


def _read_yaml(path: Path, where: _Where) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        check_bounded(text, path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{place}: YAML syntax error: {e.problem or e.context}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    _record_lines(node, "", where)
    return raw


def _record_lines(node: yaml.Node, prefix: str, where: _Where) -> None:
    """Remember each key's line; a key given twice is an error (YAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in where.lines:
                raise ConfigError(f"{where.source}:{line}: {key}: given twice (first on line {where.lines[key]})")
            where.lines[key] = line
            _record_lines(value_node, key + ".", where)


def _apply_override(raw: dict, override: str, where: _Where) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. --set training.lr=5e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    where.overridden.add(key)


def _build(cls: type, raw: Any, prefix: str, where: _Where) -> Any:
    """Build dataclass `cls` from a dict, checking every key; errors carry the dotted key."""
    name = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(prefix.rstrip('.'))}: {name}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            full = f"{prefix}{key}"
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            valid = ", ".join(fields)
            raise ConfigError(f"{where(full)}: unknown key '{full}'{hint}; valid keys here: {valid}")
    values = {}
    for fname, f in fields.items():
        if fname in raw:
            key = f"{prefix}{fname}"
            values[fname] = _convert(hints[fname], raw[fname], key, where)
            _check_range(f, values[fname], key, where)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, where: _Where) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{where(key)}: {key}: expected {expected}, got {value!r}")

    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, where)
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(hint):
        if hint is FilePair and isinstance(value, dict):
            missing = [side for side in ("src", "trg") if side not in value]
            if missing:
                fail(f"both 'src' and 'trg' files (missing {', '.join(missing)})")
        return _build(hint, value if value is not None else {}, key + ".", where)
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping of names")
        return {str(k): _convert(args[1], v, f"{key}.{k}", where) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            fail("a list")
        return [_convert(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if hint is float:
        return _to_float(value, fail)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            fail("a string")
        return str(value)
    raise AssertionError(f"config schema has an unsupported type {hint} at {key}")


def _to_float(value: Any, fail) -> float:
    # YAML 1.1 reads 5e-4 (no dot) as a string; people write it, so take it as the number
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail("a number")
    if not math.isfinite(value):  # .inf or .nan would pass or dodge every range check
        fail("a finite number")
    return float(value)


def _check_range(f: dataclasses.Field, value: Any, key: str, where: _Where) -> None:
    meta = f.metadata
    checks = [("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
              ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")]
    bounds = [f"{symbol} {meta[name]}" for name, ok, symbol in checks if name in meta]
    if value is not None and not all(ok(value, meta[name]) for name, ok, _ in checks if name in meta):
        kind = "an integer" if isinstance(value, int) else "a number"
        raise ConfigError(f"{where(key)}: {key}: expected {kind} {' and '.join(bounds)}, got {value!r}")


def _check_consistency(cfg: Config, where: _Where) -> None:
    """Rules that span several keys."""
    data = cfg.data
    if data.corpus is None and (data.train is None or data.dev is None):
        missing = "data.train" if data.train is None else "data.dev"
        raise ConfigError(f"{where('data')}: {missing}: expected src/trg files, or data.corpus: multi30k")
    if data.src_lang == data.trg_lang:
        raise ConfigError(f"{where('data.trg_lang')}: data.trg_lang: expected a language other than "
                          f"data.src_lang ({data.src_lang!r})")
    if cfg.model.share_embeddings and not cfg.tokenizer.joint:
        raise ConfigError(f"{where('model.share_embeddings')}: model.share_embeddings: needs "
                          "tokenizer.joint: true (one vocabulary for both sides); set one of them")
    if cfg.model.d_model % cfg.model.heads:
        raise ConfigError(f"{where('model.heads')}: model.heads: expected a divisor of model.d_model "
                          f"({cfg.model.d_model}), got {cfg.model.heads}")
    if len(cfg.training.betas) != 2 or not all(0 <= b < 1 for b in cfg.training.betas):
        raise ConfigError(f"{where('training.betas')}: training.betas: expected two numbers in [0, 1)")
    t = cfg.training
    if not (t.max_steps or t.max_epochs or t.max_minutes):
        raise ConfigError(f"{where('training.max_steps')}: training.max_steps, max_epochs and max_minutes are "
                          "all 0: set at least one, or training would never end")
    if not str(cfg.run_dir).strip():
        raise ConfigError(f"{where('run_dir')}: run_dir: expected a folder path, got an empty one")


def to_dict(cfg: Config) -> dict:
    """The fully resolved config as plain data (for YAML output, manifests and checkpoints)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(raw: dict, source: str = "checkpoint") -> Config:
    """Rebuild a Config from `to_dict` output, with the same type and range checks.

    Data files are not checked: they are facts about a past run and may have moved since.
    """
    return _build(Config, raw, "", _Where(source))


def _check_files(cfg: Config, where: _Where) -> None:
    named = [("data.train", cfg.data.train), ("data.dev", cfg.data.dev)]
    named += [(f"data.test.{name}", pair) for name, pair in cfg.data.test.items()]
    for key, pair in named:
        for side in ("src", "trg"):
            path = getattr(pair, side) if pair else None
            if pair and not str(path or "").strip():
                raise ConfigError(f"{where(f'{key}.{side}')}: {key}.{side}: expected a file path, got an empty one")
            if path and not Path(path).is_file():
                raise ConfigError(f"{where(f'{key}.{side}')}: {key}.{side}: {not_a_file(Path(path))}: {as_given(path)}")
    if cfg.data.data_dir and not Path(cfg.data.data_dir).is_dir():
        raise ConfigError(f"{where('data.data_dir')}: data.data_dir: no such folder: {as_given(cfg.data.data_dir)}")
