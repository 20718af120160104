"""`mt export`: a trained run as a CTranslate2 model folder, the format translation models are
deployed in (C++ decoding on CPU with int8 weights or on GPU, from Python, C++ or its servers).

The converter maps mt's parameters onto CTranslate2's Transformer specification, as
CTranslate2's own fairseq and OpenNMT-py converters do for theirs:

  mt (model.py)                              CTranslate2 (TransformerSpec)
  src_embed.tokens / trg_embed.tokens        encoder.embeddings[0] / decoder.embeddings (x sqrt(d_model))
  positions table (ours) / learned rows      position_encodings.encodings
  self_attn.qkv_proj (fused q, k, v)         self_attention.linear[0]
  cross_attn.q_proj, cross_attn.kv_proj      attention.linear[0], attention.linear[1] (fused k, v)
  *.out_proj                                 *.linear[-1]
  attn_res/self_res, cross_res, ff_res norm  self_attention, attention, ffn .layer_norm
  ff.up, ff.down                             ffn.linear_0, ffn.linear_1
  encoder_norm, decoder_norm (pre-norm)      encoder.layer_norm, decoder.layer_norm
  output                                     decoder.projection

The sinusoidal table is written out: CTranslate2's built-in one puts all sines before all
cosines (and starts at position 1), mt interleaves them from position 0. The weights are mt's,
unchanged, so the exported model's log-probabilities are mt's (to float rounding). mt's search
never picks PAD or BOS (search._forbid_specials, after the softmax); CTranslate2 would if the
model ranked one among its best candidates, which a trained model, giving them no probability
to speak of, does not. Forbidding them in CTranslate2 (a -inf bias or `suppress_sequences`)
would renormalise every log-probability without them, so it is left out.

The folder also holds the run's SentencePiece model(s), `mt_export.json` (decoding settings),
`translate.py` (mt.exported_translate: the search settings and ranking that reproduce
`mt translate`) and a README.txt. It is written to a temporary folder beside the target and
renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mt import rundir
from mt.checkpoint import Loaded, load_for_inference
from mt.config import ModelConfig
from mt.errors import MtError
from mt.tokenizer import BOS_ID, EOS_ID, UNK_ID

log = logging.getLogger(__name__)

FORMATS = ("ctranslate2",)
QUANTIZATIONS = ("none", "int8", "int8_float16", "float16", "bfloat16")
MARKER = "mt_export.json"  # names a folder `mt export` made: only such a folder is replaced by --force
INSTALL_HINT = "pip install 'mt[export]'  (or: pip install ctranslate2)"

# Every option of cfg.model, and what the export does with it. A model option added later is
# refused by name unless it is at its default (the architecture then is the one converted here).
CONVERTED = {
    "d_model": None, "heads": None, "encoder_layers": None, "decoder_layers": None, "ff_dim": None,
    "max_len": None, "share_embeddings": None, "tie_output": None,  # shapes and sharing: weights carry them
    "dropout": None, "attention_dropout": None, "activation_dropout": None,  # training only
    "activation": ("relu", "gelu"), "norm": ("pre", "post"), "positions": ("sinusoidal", "learned"),
}


def export_run(run_dir: str | Path, output: str | Path, checkpoint: str = "best", fmt: str = "ctranslate2",
               quantization: str = "none", force: bool = False) -> Path:
    """`mt export`: write RUN_DIR's checkpoint as a CTranslate2 model folder at `output`."""
    if fmt not in FORMATS:
        raise MtError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise MtError(f"--quantization {quantization}: expected one of {', '.join(QUANTIZATIONS)}")
    ctranslate2 = import_ctranslate2()
    output = Path(output)
    folder = check_output(output, force)
    loaded = load_for_inference(run_dir, checkpoint, device="cpu")
    check_architecture(loaded.cfg.model)
    spec = build_spec(ctranslate2.specs, loaded)
    with staging_dir(folder) as staging:
        spec.validate()
        spec.optimize(quantization=None if quantization == "none" else quantization)
        spec.save(str(staging))
        write_companions(staging, Path(run_dir), loaded, quantization)
        replace_dir(staging, folder)
    log.info("exported %s (%s weights) to %s", loaded.path, quantization, output)
    return output


def import_ctranslate2():
    try:
        import ctranslate2
        import ctranslate2.specs  # noqa: F401  (the converter API)
    except ImportError:
        raise MtError(f"mt export needs CTranslate2, an optional extra: {INSTALL_HINT}") from None
    return ctranslate2


def check_output(output: Path, force: bool) -> Path:
    """The folder to write: `output`, or the folder a symlink there points at (the link is kept
    and shows the new export). An existing folder is replaced only with --force, and only if
    `mt export` made it."""
    shown = f"--output {output}"
    folder = output
    if output.is_symlink():
        target = os.readlink(output)
        if not output.exists():
            raise MtError(f"{shown}: a symlink to {target}, which does not exist")
        shown, folder = f"{shown} (a symlink to {target})", output.resolve()
    if not folder.exists():
        return folder
    if not force:
        raise MtError(f"{shown}: already exists (add --force to replace an earlier export)")
    if not folder.is_dir() or not (folder / MARKER).is_file():
        raise MtError(f"{shown}: exists and is not a folder made by mt export (no {MARKER} in it); "
                      "not replacing it even with --force: choose another --output")
    return folder


def check_architecture(model_cfg: ModelConfig) -> None:
    """Every model option is either converted below or refused here, by name."""
    for f in dataclasses.fields(model_cfg):
        value = getattr(model_cfg, f.name)
        if f.name in CONVERTED:
            allowed = CONVERTED[f.name]
            if allowed is not None and value not in allowed:
                raise MtError(f"model.{f.name} = {value!r}: mt export converts only {', '.join(allowed)}")
        elif value != _default(f):
            raise MtError(f"model.{f.name} = {value!r}: mt export does not convert this option yet")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


class Weights:
    """The model's tensors by name, as float32 NumPy arrays; remembers which ones were used,
    so a parameter the converter does not know (a newer model) is an error, not a silent loss."""

    def __init__(self, model: torch.nn.Module):
        # non-persistent buffers (the sinusoidal table) are not in state_dict but are the model's
        self.tensors = {**dict(model.named_buffers()), **model.state_dict()}
        self.used: set[str] = set()

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise MtError(f"mt export: the model has no parameter {name!r} (a model this export does not know)")
        self.used.add(name)
        return self.tensors[name].detach().float().cpu().numpy()

    def check_all_used(self, model: torch.nn.Module) -> None:
        unused = sorted(set(model.state_dict()) - self.used)
        if unused:
            raise MtError(f"mt export: parameters it does not know how to convert: {', '.join(unused[:5])}")


@dataclasses.dataclass(frozen=True)
class Stack:
    """Where one side of mt's model keeps its parameters (model.py names)."""

    embed: str
    layers: str
    self_res: str  # the residual block around self-attention, whose norm CTranslate2 puts in self_attention
    final_norm: str  # pre-norm only
    cross_attention: bool


ENCODER = Stack("src_embed", "encoder_layers", "attn_res", "encoder_norm", cross_attention=False)
DECODER = Stack("trg_embed", "decoder_layers", "self_res", "decoder_norm", cross_attention=True)


def build_spec(specs, loaded: Loaded):
    """The CTranslate2 TransformerSpec of `loaded.model`, weights filled in."""
    m, model = loaded.cfg.model, loaded.model
    activation = {"relu": specs.Activation.RELU, "gelu": specs.Activation.GELU}[m.activation]  # exact (erf) GELU
    pre_norm = m.norm == "pre"
    encoder = specs.TransformerEncoderSpec(m.encoder_layers, m.heads, pre_norm=pre_norm, activation=activation)
    decoder = specs.TransformerDecoderSpec(m.decoder_layers, m.heads, pre_norm=pre_norm, activation=activation)
    spec = specs.TransformerSpec(encoder, decoder)
    weights = Weights(model)
    set_stack(spec.encoder, weights, ENCODER, m.positions, pre_norm)
    set_stack(spec.decoder, weights, DECODER, m.positions, pre_norm)
    spec.decoder.projection.weight = weights("output.weight")  # no bias, as in mt
    weights.check_all_used(model)
    set_config(spec.config, loaded)
    tokenizer = loaded.tokenizer
    spec.register_source_vocabulary(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
    spec.register_target_vocabulary(tokenizer.trg_pieces(range(tokenizer.trg_vocab_size)))
    return spec


def set_stack(spec, weights: Weights, stack: Stack, positions: str, pre_norm: bool) -> None:
    """Encoder or decoder: embeddings, then each layer's self-attention, cross-attention
    (decoder), feed-forward block, then the final norm of a pre-norm model."""
    set_embeddings(spec, weights, stack.embed, positions)
    for i, layer in enumerate(spec.layer):
        scope = f"{stack.layers}.{i}"
        set_self_attention(layer.self_attention, weights, f"{scope}.self_attn")
        set_norm(layer.self_attention.layer_norm, weights, f"{scope}.{stack.self_res}.norm")
        if stack.cross_attention:
            set_cross_attention(layer.attention, weights, scope)
        set_ffn(layer.ffn, weights, scope)
    if pre_norm:
        set_norm(spec.layer_norm, weights, stack.final_norm)


def set_embeddings(spec, weights: Weights, side: str, positions: str) -> None:
    """Token table, and the positions mt adds after scaling tokens by sqrt(d_model)."""
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = weights(f"{side}.tokens.weight")
    spec.scale_embeddings = True
    table = f"{side}.positions.weight" if positions == "learned" else f"{side}.positions_table"
    spec.position_encodings.encodings = weights(table)


def set_cross_attention(spec, weights: Weights, scope: str) -> None:
    set_linear(spec.linear[0], weights, f"{scope}.cross_attn.q_proj")
    set_linear(spec.linear[1], weights, f"{scope}.cross_attn.kv_proj")  # k rows, then v rows, as CTranslate2 fuses them
    set_linear(spec.linear[2], weights, f"{scope}.cross_attn.out_proj")
    set_norm(spec.layer_norm, weights, f"{scope}.cross_res.norm")


def set_self_attention(spec, weights: Weights, scope: str) -> None:
    set_linear(spec.linear[0], weights, f"{scope}.qkv_proj")  # q, k, v rows in that order, as CTranslate2 fuses them
    set_linear(spec.linear[1], weights, f"{scope}.out_proj")


def set_ffn(spec, weights: Weights, scope: str) -> None:
    set_norm(spec.layer_norm, weights, f"{scope}.ff_res.norm")
    set_linear(spec.linear_0, weights, f"{scope}.ff.up")
    set_linear(spec.linear_1, weights, f"{scope}.ff.down")


def set_linear(spec, weights: Weights, scope: str) -> None:
    spec.weight = weights(f"{scope}.weight")
    if f"{scope}.bias" in weights.tensors:
        spec.bias = weights(f"{scope}.bias")


def set_norm(spec, weights: Weights, scope: str) -> None:
    spec.gamma = weights(f"{scope}.weight")
    spec.beta = weights(f"{scope}.bias")


def set_config(config, loaded: Loaded) -> None:
    """Special tokens by their pieces, torch's LayerNorm epsilon, and the source EOS mt appends."""
    tokenizer = loaded.tokenizer
    config.unk_token = tokenizer.src_pieces([UNK_ID])[0]
    config.bos_token = config.decoder_start_token = tokenizer.trg_pieces([BOS_ID])[0]
    config.eos_token = tokenizer.trg_pieces([EOS_ID])[0]
    config.add_source_eos = True  # mt encodes "pieces </s>": the model adds it, callers pass pieces only
    config.layer_norm_epsilon = next(module.eps for module in loaded.model.modules()
                                     if isinstance(module, torch.nn.LayerNorm))


class staging_dir:
    """A fresh temporary folder beside `output`, removed on leaving unless it was renamed into place."""

    def __init__(self, output: Path):
        self.output = output

    def __enter__(self) -> Path:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = make_fresh_dir(self.output.parent, f".{self.output.name}.")
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def make_fresh_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder with the mode a plain mkdir gives (0o777 less the umask):
    tempfile.mkdtemp's is always 0700, which would keep a service or a colleague from the model."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another export chose the same name: draw again
            continue
    raise MtError(f"{parent}: cannot make a temporary folder there (100 names taken)")


def replace_dir(staging: Path, output: Path) -> None:
    """Rename the finished folder into place; an earlier export (checked) is moved aside first,
    then removed (`output` is a real folder here, never a symlink: check_output resolved it)."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{staging.name}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as err:  # the new export is in place; say what is left, never hide it
            log.warning("could not remove the earlier export moved to %s: %s", old, err)


def write_companions(folder: Path, run_dir: Path, loaded: Loaded, quantization: str) -> None:
    """SentencePiece model(s), decoding settings, translate.py and README.txt beside model.bin."""
    tokenizer_dir = rundir.tokenizer_dir(run_dir)
    names = ["joint.model"] if loaded.tokenizer.joint else ["src.model", "trg.model"]
    for name in names:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    dec = loaded.cfg.decoding
    settings = {
        "made_by": "mt export", "checkpoint": str(loaded.path), "quantization": quantization,
        "source_spm": names[0], "target_spm": names[-1], "max_len": loaded.cfg.model.max_len,
        "decoding": {"beam": dec.beam, "length_penalty": dec.length_penalty, "max_len_a": dec.max_len_a,
                     "max_len_b": dec.max_len_b, "batch_tokens": dec.batch_tokens},
    }
    (folder / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.copyfile(Path(__file__).with_name("exported_translate.py"), folder / "translate.py")
    (folder / "README.txt").write_text(readme_text(settings))


def readme_text(settings: dict) -> str:
    d = settings["decoding"]
    compute = "int8" if settings["quantization"] == "none" else settings["quantization"]
    return README.format(src=settings["source_spm"], trg=settings["target_spm"], beam=d["beam"],
                         alpha=d["length_penalty"], a=d["max_len_a"], b=d["max_len_b"],
                         cut=settings["max_len"] - 1, compute=compute, checkpoint=settings["checkpoint"])


README = """\
A translation model exported by `mt export` from {checkpoint}, for CTranslate2
(https://opennmt.net/CTranslate2). Needs: pip install ctranslate2 sentencepiece

Translate stdin to stdout as `mt translate` does (same lines, same beam and ranking):
    python translate.py [--beam N] [--device cpu|cuda] [--compute-type default|int8|float16] < in > out

Or in your own code, the few lines that matter:

    import ctranslate2, sentencepiece as spm
    src, trg = spm.SentencePieceProcessor(model_file="{src}"), spm.SentencePieceProcessor(model_file="{trg}")
    translator = ctranslate2.Translator(".", device="cpu", compute_type="{compute}")
    pieces = [src.encode(line.strip(), out_type=str)[:{cut}] for line in lines]   # mt cuts at {cut} pieces
    results = translator.translate_batch(pieces, beam_size={beam}, length_penalty=1.0, min_decoding_length=0,
                                         max_decoding_length=int({a} * max(map(len, pieces)) + {b}))
    print([trg.decode(r.hypotheses[0]) for r in results])

The source's end token </s> is appended by the model itself (config.json: add_source_eos), so
pass pieces only. mt's settings for this run: beam {beam}, length penalty alpha {alpha} (GNMT:
score / ((5 + n) / 6) ** alpha, n counting </s>), output length limit {a} * source pieces + {b}
per sentence. CTranslate2 ranks finished hypotheses by score / n ** length_penalty instead, so
the short call above can pick a different one of the same candidates; translate.py asks for all
{beam} candidates and ranks them as mt does, and sends sentences with equal limits together.
What still differs from mt: on sentences whose search reaches the length limit, mt forces </s>
there (and counts its log-probability), CTranslate2 stops without it; and when more than {beam}
hypotheses have finished by the time CTranslate2 stops, it keeps its {beam} best by score / n,
which may leave out the one mt would choose.
"""
