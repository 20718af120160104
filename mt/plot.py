"""Pictures of a run: attention heatmaps (`mt attention`) and training curves (`mt plot`).

Attention is drawn for the translation the model actually chose: each line is translated
(greedy or beam search), then the model runs once more on that source and output with teacher
forcing, keeping every layer's encoder, decoder self- and cross-attention weights. Axes:

  cross     output pieces (</s> last) down, source pieces (</s> last) across
  encoder   source pieces down and across
  decoder   output pieces down, decoder inputs (<s> + output pieces) across: row i is the
            position that produced output piece i, and it may look at inputs 0..i

Pieces are shown as SentencePiece writes them: '▁' starts a word ('▁Hund', 's').

matplotlib is an optional extra (`pip install 'mt[plot]'`), imported only when drawing. We make
figures without pyplot, so no global registry holds them: each is freed with its last reference
(nothing to close), and PNGs are rendered by the non-interactive Agg backend.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from mt import rundir
from mt.checkpoint import Loaded, load_for_inference
from mt.config import ModelConfig
from mt.errors import MtError
from mt.files import atomic_write, write_text
from mt.model import AttentionWeights, Transformer
from mt.tokenizer import BOS_ID, EOS_ID
from mt.translate import fit_source, translate_ids

log = logging.getLogger(__name__)

KINDS = ("cross", "encoder", "decoder")
AXIS_NAMES = {"cross": ("output", "source"), "encoder": ("source", "source"), "decoder": ("output", "decoder input")}
DPI = 100
CELL_INCHES = 0.3  # one attention weight, room for an 8-point label
PANEL_MARGIN_INCHES = 1.3  # tick labels and title around each heatmap


@dataclass
class SentenceAttention:
    """One translated line and every attention weight the model used for it."""

    line: int  # 1-based number of the input line
    source: str
    translation: str
    src_pieces: list[str]  # source pieces, </s> included
    out_pieces: list[str]  # output pieces, </s> included
    in_pieces: list[str]  # decoder inputs: <s> and the output pieces
    weights: dict[str, Tensor]  # kind -> (layers, heads, queries, keys)

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels) of a kind's heatmap."""
        return {"cross": (self.out_pieces, self.src_pieces), "encoder": (self.src_pieces, self.src_pieces),
                "decoder": (self.out_pieces, self.in_pieces)}[kind]


@dataclass
class Selection:
    """Which panels to draw: layers down, heads across (None = the mean over heads)."""

    layers: list[int]
    heads: list[Optional[int]]

    def grid(self) -> tuple[int, int]:
        """(rows, columns): a layers x heads grid when both vary, else one row."""
        if len(self.layers) > 1 and len(self.heads) > 1:
            return len(self.layers), len(self.heads)
        return 1, len(self.layers) * len(self.heads)


# ---------------------------------------------------------------------------------------------
# mt attention
# ---------------------------------------------------------------------------------------------


def attention_command(run_dir: str | Path, lines: Sequence[str], output: str | Path, checkpoint: str = "best",
                      beam: Optional[int] = None, layer: str = "-1", head: str = "mean", kind: str = "cross",
                      as_json: bool = False, device: str = "auto") -> Iterator[Path]:
    """Translate each line and write OUTPUT/NNNN.png (NNNN: the input line's number), and with
    `as_json` OUTPUT/NNNN.json; yields each path once it is written. Empty lines are skipped."""
    if kind not in KINDS:
        raise MtError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    _figure_class()  # a missing matplotlib should stop us before the model loads
    loaded = load_for_inference(run_dir, checkpoint, device)
    selection = select(layer, head, kind, loaded.cfg.model)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for sentence in sentence_attention(loaded, lines, beam):
        stem = f"{sentence.line:04d}"
        yield save_figure(draw_attention(sentence, kind, selection), output / f"{stem}.png")
        if as_json:
            write_text(output / f"{stem}.json", json.dumps(attention_json(sentence), ensure_ascii=False) + "\n")
            yield output / f"{stem}.json"


def select(layer: str, head: str, kind: str, model: ModelConfig) -> Selection:
    """Parse --layer (number, negative from the end, or 'all') and --head (number, 'mean' or 'all')."""
    count = model.encoder_layers if kind == "encoder" else model.decoder_layers
    what = "encoder layers" if kind == "encoder" else "decoder layers"
    layers = list(range(count)) if layer == "all" else [_index("--layer", layer, count, what, " or 'all'")]
    if head in ("mean", "all"):
        heads = [None] if head == "mean" else list(range(model.heads))
    else:
        heads = [_index("--head", head, model.heads, "heads", ", 'mean' or 'all'")]
    return Selection(layers, heads)


def _index(option: str, text: str, count: int, what: str, words: str) -> int:
    """A 0-based index into `count` things; negative numbers count from the end."""
    valid = f"this model has {count} {what}: use 0 to {count - 1}, -{count} to -1{words}"
    try:
        index = int(text)
    except ValueError:
        raise MtError(f"{option} {text}: not a number; {valid}") from None
    if not -count <= index < count:
        raise MtError(f"{option} {text}: out of range; {valid}")
    return index % count


def sentence_attention(loaded: Loaded, lines: Sequence[str],
                       beam: Optional[int] = None) -> Iterator[SentenceAttention]:
    """Translate the lines, then yield each non-empty one with its attention weights."""
    src_ids = fit_source(loaded, lines)
    results = translate_ids(loaded, src_ids, beam=beam)
    tokenizer = loaded.tokenizer
    for number, (line, ids, result) in enumerate(zip(lines, src_ids, results), start=1):
        if not ids:
            log.warning("line %d is empty: no heatmap", number)
            continue
        out_ids = result.hyps[0].tokens
        out_pieces = tokenizer.trg_pieces([*out_ids, EOS_ID])
        yield SentenceAttention(
            number, line.strip(), tokenizer.decode_trg([out_ids])[0], tokenizer.src_pieces(result.src_ids),
            out_pieces, tokenizer.trg_pieces([BOS_ID]) + out_pieces[:-1],
            teacher_forced_attention(loaded.model, result.src_ids, out_ids, loaded.device))


@torch.inference_mode()
def teacher_forced_attention(model: Transformer, src_ids: Sequence[int], out_ids: Sequence[int],
                             device: torch.device) -> dict[str, Tensor]:
    """Every attention weight for one source (EOS included) and a given output (no BOS/EOS):
    kind -> (layers, heads, queries, keys), float32 on the CPU."""
    src = torch.tensor([list(src_ids)], device=device)  # (1, src_len)
    # decoder position i reads trg_in[i] and predicts out_ids[i]; the last position predicts EOS
    trg_in = torch.tensor([[BOS_ID, *out_ids]], device=device)  # (1, trg_len)
    weights = AttentionWeights([], [], [])
    encoder_out, src_mask = model.encode(src, weights)
    model.decode(trg_in, encoder_out, src_mask, weights)
    return {"encoder": _stack(weights.encoder), "decoder": _stack(weights.decoder_self),
            "cross": _stack(weights.cross)}


def _stack(per_layer: list[Tensor]) -> Tensor:
    """Layers of (1, heads, queries, keys) -> (layers, heads, queries, keys), float32 on the CPU."""
    return torch.stack([w[0] for w in per_layer]).float().cpu()


def attention_json(sentence: SentenceAttention) -> dict:
    """Tokens, translation and every weight as nested lists [layer][head][query][key], 6 decimals."""
    return {
        "line": sentence.line, "source": sentence.source, "translation": sentence.translation,
        "source_tokens": sentence.src_pieces, "target_tokens": sentence.out_pieces,
        "decoder_input_tokens": sentence.in_pieces,
        "attention": {kind: w.double().round(decimals=6).tolist() for kind, w in sentence.weights.items()},
    }


def draw_attention(sentence: SentenceAttention, kind: str, selection: Selection):
    """A figure with one heatmap per selected (layer, head), weights on one 0..1 colour scale."""
    rows, columns = sentence.labels(kind)
    n_rows, n_cols = selection.grid()
    fig = _figure_class()(figsize=figure_size(n_rows, n_cols, len(rows), len(columns)), dpi=DPI,
                          layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax, (layer, head) in zip(axes.flat, itertools.product(selection.layers, selection.heads)):
        weights = sentence.weights[kind][layer]  # (heads, queries, keys)
        image = ax.imshow((weights.mean(dim=0) if head is None else weights[head]).numpy(),
                          vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"layer {layer}, {'mean of heads' if head is None else f'head {head}'}", fontsize=9)
        ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(AXIS_NAMES[kind][1])
    for ax in axes[:, 0]:
        ax.set_ylabel(AXIS_NAMES[kind][0])
    fig.colorbar(image, ax=axes, shrink=0.6)
    fig.suptitle(f"line {sentence.line}: {kind} attention", fontsize=10)
    return fig


def figure_size(n_rows: int, n_cols: int, queries: int, keys: int) -> tuple[float, float]:
    """Inches (width, height): a fixed size per weight, so long sentences keep readable labels."""
    panel_width = max(keys * CELL_INCHES, 1.5) + PANEL_MARGIN_INCHES
    panel_height = max(queries * CELL_INCHES, 1.0) + PANEL_MARGIN_INCHES
    return n_cols * panel_width + 1.0, n_rows * panel_height + 0.4  # colour bar; figure title


# ---------------------------------------------------------------------------------------------
# mt plot
# ---------------------------------------------------------------------------------------------


def plot_curves(run_dir: str | Path, output: Optional[str | Path] = None) -> Path:
    """Training and validation loss (top) and validation BLEU (bottom) against steps, from
    RUN_DIR/metrics.jsonl; written to `output` (default RUN_DIR/curves.png)."""
    run_dir = Path(run_dir)
    rows = rundir.read_metrics(run_dir, missing_ok=False)
    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "dev_loss" in r]
    if not train and not dev:
        raise MtError(f"{rundir.metrics_file(run_dir)}: no training or validation rows to plot yet")
    fig = _figure_class()(figsize=(8, 6), dpi=DPI, layout="constrained")
    loss_ax, bleu_ax = fig.subplots(2, 1, sharex=True)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    loss_ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="validation loss")
    loss_ax.set_ylabel("loss per target token")
    loss_ax.legend()
    bleu_ax.plot([r["step"] for r in dev], [r["dev_bleu"] for r in dev], "o-", color="tab:green")
    bleu_ax.set_ylabel("validation BLEU")
    bleu_ax.set_xlabel("step")
    for ax in (loss_ax, bleu_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    return save_figure(fig, Path(output) if output else rundir.curves_file(run_dir))


# ---------------------------------------------------------------------------------------------
# matplotlib
# ---------------------------------------------------------------------------------------------


def _figure_class():
    """matplotlib's Figure class, or an error saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MtError("drawing needs matplotlib, which is not installed: pip install 'mt[plot]' "
                      "(in a clone of mt: pip install -e '.[plot]')") from None
    return Figure


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG, atomically; the size in pixels is its size in inches times DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # render with Agg, whatever backend the user's matplotlibrc names
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path
