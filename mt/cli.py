"""The `mt` command: parses options, calls one function per command, prints; no logic here.

Heavy modules (torch, sentencepiece) are imported inside the commands so that `mt --help`
and configuration errors answer instantly.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mt.errors import MtError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mt: train, run and inspect Transformer translation models. Each run is one YAML config.",
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The run's YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key, e.g. --set training.lr=5e-4 (repeatable)."),
]
RunDirOpt = Annotated[Path, typer.Option("--run-dir", "-r", help="A run directory made by `mt train`.")]
CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", help="best, last, averaged, or a checkpoint file path.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")]
BeamOpt = Annotated[
    Optional[int], typer.Option("--beam", "-b", min=1, help="Beam size (1 = greedy); default: decoding.beam.")
]
BatchTokensOpt = Annotated[
    Optional[int], typer.Option("--batch-tokens", min=1, help="Source tokens per batch; default: decoding.batch_tokens.")
]


def _verbose() -> bool:
    return os.environ.get("MT_VERBOSE", "") not in ("", "0")


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks (or MT_VERBOSE=1).")] = False,
) -> None:
    if verbose:
        os.environ["MT_VERBOSE"] = "1"
    logging.basicConfig(
        level=logging.DEBUG if _verbose() else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if _verbose() else "%(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _load(config: Path, overrides: Optional[list[str]]):
    from mt.config import load_config

    return load_config(config, overrides or [])


@app.command("config")
def config_cmd(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Print the fully resolved configuration (every default filled in) as YAML."""
    from mt.config import to_yaml

    typer.echo(to_yaml(_load(config, set_)), nl=False)


@app.command()
def prepare(
    config: ConfigOpt,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Redo everything even if nothing changed.")] = False,
) -> None:
    """Fetch and check the corpus, train SentencePiece, encode train/dev into the run's cache."""
    from mt.prepare import prepare as run_prepare
    from mt.train import check_run_dir

    cfg = _load(config, set_)
    check_run_dir(cfg, Path(cfg.run_dir), restart=False)  # never re-tokenize a trained run's data
    run_prepare(cfg, force=force)


@app.command()
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    restart: Annotated[bool, typer.Option("--restart", help="Start over instead of resuming the run dir.")] = False,
) -> None:
    """Train a Transformer (preparing data first when needed), then score the test sets."""
    from mt.train import train as run_train

    run_train(_load(config, set_), device=device, restart=restart)


@app.command()
def translate(
    run_dir: RunDirOpt,
    checkpoint: CheckpointOpt = "best",
    beam: BeamOpt = None,
    nbest: Annotated[int, typer.Option("--nbest", min=1, help="Print the N best translations per line: 'index ||| translation ||| score'.")] = 1,
    batch_tokens: BatchTokensOpt = None,
    device: DeviceOpt = "auto",
    alignments: Annotated[bool, typer.Option("--alignments", help="Append i-j word alignments from cross-attention: after a tab, or as a 4th '|||' field with --nbest.")] = False,
) -> None:
    """Translate source sentences from stdin to stdout, one line out per line in."""
    from mt.translate import translate_stream

    try:
        translate_stream(
            run_dir, sys.stdin.buffer, sys.stdout, checkpoint=checkpoint, beam=beam, nbest=nbest,
            batch_tokens=batch_tokens, device=device, alignments=alignments,
        )
    except BrokenPipeError:  # `mt translate | head`: the reader left; exit quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


@app.command("eval")
def eval_cmd(
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", "-r", help="Run dir to translate with.")] = None,
    src: Annotated[Optional[Path], typer.Option("--src", help="Source file to translate and score.")] = None,
    ref: Annotated[Optional[Path], typer.Option("--ref", help="Reference translations.")] = None,
    hyp: Annotated[Optional[list[Path]], typer.Option("--hyp", help="Finished hypotheses to score (twice: compare).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the translations here.")] = None,
    checkpoint: CheckpointOpt = "best",
    beam: BeamOpt = None,
    batch_tokens: BatchTokensOpt = None,
    device: DeviceOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line per test set.")] = False,
) -> None:
    """sacreBLEU BLEU and chrF with signatures: of a run on a file, its test sets, or finished outputs."""
    from mt.evaluate import evaluate_command

    for line in evaluate_command(
        run_dir=run_dir, src=src, ref=ref, hyps=hyp or [], output=output, checkpoint=checkpoint,
        beam=beam, batch_tokens=batch_tokens, device=device, as_json=json_out,
    ):
        typer.echo(line)


@app.command()
def average(
    run_dir: RunDirOpt,
    last: Annotated[int, typer.Option("--last", min=1, help="How many of the newest checkpoints to average.")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN_DIR/checkpoints/averaged.pt")] = None,
) -> None:
    """Average the parameters of the last M checkpoints into one that translate and eval accept."""
    from mt.checkpoint import average_checkpoints

    path = average_checkpoints(run_dir, last=last, output=output)
    typer.echo(str(path))


@app.command()
def attention(
    run_dir: RunDirOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the PNG (and JSON) files.")],
    text: Annotated[Optional[str], typer.Option("--text", help="A sentence to translate; default: stdin lines.")] = None,
    checkpoint: CheckpointOpt = "best",
    beam: BeamOpt = None,
    layer: Annotated[str, typer.Option("--layer", help="Layer number (0-based; negative counts from the end) or 'all'.")] = "-1",
    head: Annotated[str, typer.Option("--head", help="Head number (0-based), 'mean' (average of heads) or 'all'.")] = "mean",
    kind: Annotated[str, typer.Option("--kind", help="cross, encoder or decoder attention.")] = "cross",
    json_out: Annotated[bool, typer.Option("--json", help="Also write raw weights and tokens as JSON.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Draw attention heatmaps (cross-attention by default) for translated sentences."""
    from mt.files import decode_stdin_lines
    from mt.plot import attention_command

    lines = [text] if text is not None else decode_stdin_lines(sys.stdin.buffer.read())
    for path in attention_command(
        run_dir, lines, output, checkpoint=checkpoint, beam=beam, layer=layer, head=head,
        kind=kind, as_json=json_out, device=device,
    ):
        typer.echo(str(path))


@app.command()
def plot(
    run_dir: RunDirOpt,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN_DIR/curves.png")] = None,
) -> None:
    """Draw training loss, validation loss and validation BLEU against steps."""
    from mt.plot import plot_curves

    typer.echo(str(plot_curves(run_dir, output)))


@app.command()
def export(
    run_dir: RunDirOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the exported model to.")],
    checkpoint: CheckpointOpt = "best",
    format_: Annotated[str, typer.Option("--format", help="ctranslate2 (the one format so far).")] = "ctranslate2",
    quantization: Annotated[str, typer.Option("--quantization", help="Weights: none (float32), int8, int8_float16, float16 or bfloat16.")] = "none",
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if an earlier mt export made it.")] = False,
) -> None:
    """Write a run's model as a CTranslate2 folder (model, vocabularies, SentencePiece, translate.py, README.txt)."""
    from mt.export import export_run

    typer.echo(str(export_run(run_dir, output, checkpoint=checkpoint, fmt=format_, quantization=quantization,
                              force=force)))


def main() -> None:
    """Entry point: run the app; a user's mistake is one line on stderr, not a traceback.

    Typer (standalone mode) handles usage errors itself and exits 2; our MtError arrives here.
    """
    try:
        app()
    except MtError as e:
        if _verbose():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # a path the user gave that cannot be read or written
        if _verbose():
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
