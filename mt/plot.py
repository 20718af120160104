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
from mt.outputs import check_output_folder
from mt.align import teacher_forced_attention
from mt.checkpoint import Loaded, load_for_inference
from mt.config import ModelConfig
from mt.errors import MtError
from mt.files import atomic_write, write_text
from mt.tokenizer import BOS_ID, EOS_ID
from mt.translate import fit_source, translate_ids

log = logging.getLogger(__name__)

KINDS = ("cross", "encoder", "decoder")
AXIS_NAMES = {"cross": ("output", "source"), "encoder": ("source", "source"), "decoder": ("output", "decoder input")}
DPI = 100
CELL_INCHES = 0.3  # one attention weight, room for an 8-point label
MIN_CELL_INCHES = 0.12  # the smallest cell a 6-point label still fits beside
MAX_FIGURE_INCHES = (19.0, 19.0)  # a large grid shrinks its cells to fit a screen (1900 x 1900 pixels)
LABEL_BAND_INCHES = 1.3  # tick labels and axis name, left of the first column and below the last row
PANEL_TITLE_INCHES = 0.35  # 'layer 2, head 1' above each panel
COLORBAR_INCHES = 0.75  # each panel's own colour bar and its two tick labels
FIGURE_TITLE_INCHES = 0.45


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


@dataclass
class CheckpointLabel:
    """Which checkpoint a picture shows: its file name and the step it was saved at."""

    name: str  # 'best.pt', 'step_0001000.pt', ...
    step: Optional[int]

    def __str__(self) -> str:
        return self.name if self.step is None else f"{self.name} (step {self.step})"


def checkpoint_label(path: Path) -> CheckpointLabel:
    """The label of a checkpoint file; mmap reads its step without reading its weights again."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be mmapped: no step then
        return CheckpointLabel(path.name, None)
    step = state.get("step")
    return CheckpointLabel(path.name, step if isinstance(step, int) else None)


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
    written = {f"{number:04d}.{ext}": kind for number, line in enumerate(lines, start=1) if line.strip()
               for ext, kind in (("png", "picture"), ("json", "json")) if ext == "png" or as_json}
    check_output_folder("--output", Path(output), Path(run_dir), written)
    loaded = load_for_inference(run_dir, checkpoint, device)
    selection = select(layer, head, kind, loaded.cfg.model)
    shown = checkpoint_label(loaded.path)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for sentence in sentence_attention(loaded, lines, beam):
        stem = f"{sentence.line:04d}"
        yield save_figure(draw_attention(sentence, kind, selection, shown), output / f"{stem}.png")
        if as_json:
            written = attention_json(sentence, shown)
            write_text(output / f"{stem}.json", json.dumps(written, ensure_ascii=False) + "\n")
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


def attention_json(sentence: SentenceAttention, shown: CheckpointLabel) -> dict:
    """Tokens, translation and every weight as nested lists [layer][head][query][key], 6 decimals."""
    return {
        "checkpoint": shown.name, "step": shown.step,
        "line": sentence.line, "source": sentence.source, "translation": sentence.translation,
        "source_tokens": sentence.src_pieces, "target_tokens": sentence.out_pieces,
        "decoder_input_tokens": sentence.in_pieces,
        "attention": {kind: w.double().round(decimals=6).tolist() for kind, w in sentence.weights.items()},
    }


def draw_attention(sentence: SentenceAttention, kind: str, selection: Selection,
                   shown: Optional[CheckpointLabel] = None):
    """A figure with one heatmap per selected (layer, head). Each panel is coloured from 0 to its
    own largest weight, with its own colour bar: on one 0..1 scale for all, self-attention that
    spreads thinly (every weight below 0.2) would look uniformly dark."""
    rows, columns = sentence.labels(kind)
    n_rows, n_cols = selection.grid()
    cell = cell_size(n_rows, n_cols, len(rows), len(columns))
    fontsize = min(8.0, max(6.0, cell * 72 * 0.85))  # a label about as tall as its cell
    fig = _figure_class()(figsize=figure_size(n_rows, n_cols, len(rows), len(columns)), dpi=DPI,
                          layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax, (layer, head) in zip(axes.flat, itertools.product(selection.layers, selection.heads)):
        weights = sentence.weights[kind][layer]  # (heads, queries, keys)
        panel = (weights.mean(dim=0) if head is None else weights[head]).numpy()
        top = colour_top(panel, kind)
        image = ax.imshow(panel, vmin=0.0, vmax=top, cmap="viridis")
        ax.set_title(f"layer {layer}, {'mean of heads' if head is None else f'head {head}'}", fontsize=9)
        # beside the heatmap as drawn (a bar from fig.colorbar spans the whole grid cell instead)
        colorbar = fig.colorbar(image, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]), ticks=[0.0, top], format="%.2f",
                                extend="max" if panel.max() > top + 0.005 else "neither")  # a clipped row
        colorbar.ax.tick_params(labelsize=7)
    label_outer_panels(axes, rows, columns, kind, fontsize)
    title = f"line {sentence.line}: {kind} attention"
    fig.suptitle(title if shown is None else f"{title}, {shown}", fontsize=10)
    return fig


def colour_top(panel, kind: str) -> float:
    """The weight a panel shows as yellow: its largest, except that the decoder's first row is
    left out, since output piece 1 can only look at <s> and its 1.0 would darken the rest."""
    free = panel[1:] if kind == "decoder" and len(panel) > 1 else panel
    return max(float(free.max()), 1e-6)


def label_outer_panels(axes, rows: list[str], columns: list[str], kind: str, fontsize: float) -> None:
    """Pieces along the left column and the bottom row only: every panel has the same ones."""
    for ax in axes.flat:
        ax.set_xticks(range(len(columns)), columns if ax in axes[-1] else [], rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(rows)), rows if ax in axes[:, 0] else [], fontsize=fontsize)
    for ax in axes[-1]:
        ax.set_xlabel(AXIS_NAMES[kind][1])
    for ax in axes[:, 0]:
        ax.set_ylabel(AXIS_NAMES[kind][0])


def cell_size(n_rows: int, n_cols: int, queries: int, keys: int) -> float:
    """Inches per weight: CELL_INCHES, less where the grid would not fit MAX_FIGURE_INCHES
    (never below MIN_CELL_INCHES: a very long sentence makes a larger picture instead)."""
    max_width, max_height = MAX_FIGURE_INCHES
    fit_width = (max_width - LABEL_BAND_INCHES - n_cols * COLORBAR_INCHES) / (n_cols * max(keys, 1))
    fit_height = (max_height - LABEL_BAND_INCHES - FIGURE_TITLE_INCHES - n_rows * PANEL_TITLE_INCHES) / \
        (n_rows * max(queries, 1))
    return max(MIN_CELL_INCHES, min(CELL_INCHES, fit_width, fit_height))


def figure_size(n_rows: int, n_cols: int, queries: int, keys: int) -> tuple[float, float]:
    """Inches (width, height): panels of cell_size() per weight, labels along two edges."""
    cell = cell_size(n_rows, n_cols, queries, keys)
    panel_width = max(keys * cell, 1.5) + COLORBAR_INCHES
    panel_height = max(queries * cell, 1.0) + PANEL_TITLE_INCHES
    return (n_cols * panel_width + LABEL_BAND_INCHES,
            n_rows * panel_height + LABEL_BAND_INCHES + FIGURE_TITLE_INCHES)


# ---------------------------------------------------------------------------------------------
# mt plot
# ---------------------------------------------------------------------------------------------


def plot_curves(run_dir: str | Path, output: Optional[str | Path] = None) -> Path:
    """Training and validation loss (top) and validation BLEU (bottom) against steps, from
    RUN_DIR/metrics.jsonl, with best.pt's step marked; written to `output` (default
    RUN_DIR/curves.png)."""
    run_dir = Path(run_dir)
    rows = rundir.read_metrics(run_dir, missing_ok=False)
    if not any("loss" in r or "dev_loss" in r for r in rows):
        raise MtError(f"{rundir.metrics_file(run_dir)}: no training or validation rows to plot yet")
    best = rundir.named_checkpoint(run_dir, "best")
    best_step = checkpoint_label(best).step if best.is_file() else None
    fig = draw_curves(rows, best_step, str(run_dir))
    return save_figure(fig, Path(output) if output else rundir.curves_file(run_dir))


def draw_curves(rows: list[dict], best_step: Optional[int], title: str):
    """The figure of plot_curves: a series without points gets no legend entry, an empty BLEU
    panel says why, and steps are whole numbers."""
    from matplotlib.ticker import MaxNLocator

    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "dev_loss" in r]
    fig = _figure_class()(figsize=(8, 6), dpi=DPI, layout="constrained")
    loss_ax, bleu_ax = fig.subplots(2, 1, sharex=True)
    if train:
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    if dev:
        loss_ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="validation loss")
        bleu_ax.plot([r["step"] for r in dev], [r["dev_bleu"] for r in dev], "o-", color="tab:green",
                     label="validation BLEU (greedy)")
    else:
        bleu_ax.text(0.5, 0.5, "no validation yet", transform=bleu_ax.transAxes, ha="center", va="center",
                     color="0.4")
    if best_step is not None:
        for ax in (loss_ax, bleu_ax):
            ax.axvline(best_step, color="tab:red", linestyle="--", linewidth=1,
                       label=f"best.pt (step {best_step})")
    loss_ax.set_ylabel("loss per target token")
    bleu_ax.set_ylabel("validation BLEU")
    bleu_ax.set_xlabel("step")
    bleu_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, bleu_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    return fig


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
    """Write a figure as PNG, atomically; the size in pixels is its size in inches times DPI. Its
    title (line, kind, checkpoint and step) is also the PNG's Title, for image viewers and scripts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # render with Agg, whatever backend the user's matplotlibrc names
    metadata = {"Title": fig.texts[0].get_text()} if fig.texts else {}  # suptitle is the figure's first text
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, metadata=metadata)
    return path
