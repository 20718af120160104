"""The `mt` command: parses and checks options, calls library functions, prints their results.

This is the only module that prints, exits or sets up logging handlers; the library returns
results and raises MtError (a user's mistake) or Interrupted (training stopped by a signal).
Heavy modules (torch, sentencepiece) are imported inside the commands so that `mt --help`
and configuration errors answer instantly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from mt.errors import Interrupted, MtError
from mt.options import (
    BatchTokensOpt, BeamOpt, CheckpointOpt, ConfigOpt, DeviceOpt, PrecisionOpt, RunDirOpt, SetOpt,
    check_eval_hyp_options, check_eval_run_options, check_nbest, examples, load,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="mt: train, run and inspect Transformer translation models. Each run is one YAML config.",
)

def _verbose() -> bool:  # --verbose (or MT_VERBOSE=1) sets the `mt` loggers to DEBUG
    return logging.getLogger("mt").isEnabledFor(logging.DEBUG)


def _print_version(value: bool) -> None:
    if value:
        import mt
        typer.echo(f"mt {mt.__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks (or MT_VERBOSE=1).")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print mt's version and exit.")] = False,
) -> None:
    from mt.progress import BarSafeHandler  # tqdm, imported only once a command runs

    verbose = verbose or os.environ.get("MT_VERBOSE", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if verbose else "%(message)s",
        datefmt="%H:%M:%S",
        handlers=[BarSafeHandler()],
    )
    logging.getLogger("mt").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("sacrebleu").setLevel(logging.DEBUG if verbose else logging.WARNING)  # its progress chatter


@contextlib.contextmanager
def _log_file(path: Path, enabled: bool = True) -> Iterator[None]:
    """Also write the `mt` loggers' records to `path` while the block runs."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("mt").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("mt").removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _writing(run_dir: Path, given_as: str = "run_dir") -> Iterator[None]:
    """A command writing into `run_dir` (named by the config's run_dir or by --run-dir): refused if
    mt did not make it; else run holding its lock (rank 0 only under torchrun), after the marker
    is written and stale temp files removed."""
    from mt import lock, rundir

    if os.environ.get("RANK", "0") != "0":
        yield
        return
    rundir.check_ours(run_dir, given_as)
    fresh = not run_dir.exists()
    try:
        with lock.hold(rundir.lock_file(run_dir), lock.command_line()):
            rundir.claim(run_dir)
            yield
    except BaseException:
        if fresh:  # a refused command leaves no folder behind
            rundir.unmake_if_bare(run_dir)
        raise


@app.command("config", epilog=examples('mt config --config configs/toy.yaml', 'mt config -c configs/multi30k_de_en.yaml --set training.lr=5e-4'))
def config_cmd(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Print the fully resolved configuration (every default filled in) as YAML."""
    from mt.config import to_yaml

    typer.echo(to_yaml(load(config, set_)), nl=False)


@app.command(epilog=examples('mt prepare --config configs/multi30k_de_en.yaml'))
def prepare(
    config: ConfigOpt,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Redo everything even if nothing changed.")] = False,
) -> None:
    """Fetch and check the corpus, train SentencePiece, encode train/dev into the run's cache."""
    from mt import rundir
    from mt.prepare import prepare as run_prepare
    from mt.run import check_run_dir

    cfg = load(config, set_)
    with _writing(Path(cfg.run_dir)):
        # never re-tokenize a trained run's data; `mt prepare` has no --restart to offer
        check_run_dir(cfg, Path(cfg.run_dir), restart=False, way_out="")
        if force and rundir.has_checkpoints(cfg.run_dir):
            raise MtError(f"{cfg.run_dir} holds checkpoints: --force would re-tokenize the data they were trained "
                          "on; set run_dir to a new folder to prepare afresh")
        run_prepare(cfg, force=force)


@app.command(epilog=examples('mt train --config configs/multi30k_de_en_cpu.yaml', 'mt train -c configs/toy.yaml --set training.max_steps=200 --restart'))
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    restart: Annotated[bool, typer.Option("--restart", help="Start over instead of resuming the run dir.")] = False,
) -> None:
    """Train a Transformer (preparing data first when needed), then score the test sets."""
    from mt import rundir
    from mt.evaluate import format_table
    from mt.train import run_training, start

    cfg = load(config, set_)
    with _writing(Path(cfg.run_dir)):
        run, state = start(cfg, device=device, restart=restart)
        with _log_file(rundir.train_log(cfg.run_dir), enabled=run.is_main):
            scores = run_training(run, state)
    if scores:
        typer.echo(format_table(scores))


@app.command(epilog=examples('echo "Ein Hund rennt." | mt translate --run-dir runs/multi30k_de_en', 'mt translate -r runs/multi30k_de_en --beam 5 --nbest 3 < input.de'))
def translate(
    run_dir: RunDirOpt,
    checkpoint: CheckpointOpt = "best",
    beam: BeamOpt = None,
    nbest: Annotated[int, typer.Option("--nbest", min=1, help="Print the N best translations per line: 'index ||| translation ||| score'.")] = 1,
    batch_tokens: BatchTokensOpt = None,
    device: DeviceOpt = "auto",
    alignments: Annotated[bool, typer.Option("--alignments", help="Append i-j word alignments from cross-attention: after a tab, or as a 4th '|||' field with --nbest.")] = False,
    precision: PrecisionOpt = None,
) -> None:
    """Translate source sentences from stdin to stdout, one line out per line in."""
    from mt.translate import translate_stream

    check_nbest(run_dir, nbest, beam)
    try:
        translate_stream(
            run_dir, sys.stdin.buffer, sys.stdout, checkpoint=checkpoint, beam=beam, nbest=nbest,
            batch_tokens=batch_tokens, device=device, alignments=alignments, precision=precision,
        )
    except BrokenPipeError:  # `mt translate | head`: the reader left; exit quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


@app.command("eval", epilog=examples('mt eval --run-dir runs/multi30k_de_en', 'mt eval --hyp a.txt --hyp b.txt --ref ref.en'))
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
    precision: PrecisionOpt = None,
) -> None:
    """sacreBLEU BLEU and chrF with signatures: of a run on a file, its test sets, or finished outputs."""
    from mt import evaluate

    def show(results: list[dict], table=evaluate.format_table) -> None:
        typer.echo("\n".join(map(json.dumps, results)) if json_out else table(results))

    if hyp:
        check_eval_hyp_options(ref, run_dir, src, output)
        if len(hyp) > 1:
            show(list(evaluate.compare(hyp, ref)), evaluate.format_comparison)
            return
        from mt.files import read_lines

        show([evaluate.score(read_lines(hyp[0]), read_lines(ref), str(hyp[0]))])
        return
    check_eval_run_options(run_dir, src, ref, output)
    from mt.checkpoint import load_for_inference

    loaded = load_for_inference(run_dir, checkpoint, device, precision)
    if src is not None:
        results = [evaluate.score_file(loaded, run_dir, src, ref, output, beam, batch_tokens)]
    else:
        with _writing(run_dir, "--run-dir"):  # the hypotheses go into the run dir
            results = evaluate.score_test_sets(loaded, run_dir, beam, batch_tokens)
    show(results)


@app.command(epilog=examples('mt average --run-dir runs/multi30k_de_en --last 5'))
def average(
    run_dir: RunDirOpt,
    last: Annotated[int, typer.Option("--last", min=1, help="How many of the newest checkpoints to average.")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN_DIR/checkpoints/averaged.pt")] = None,
) -> None:
    """Average the parameters of the last M checkpoints into one that translate and eval accept."""
    from mt.checkpoint import average_checkpoints

    from mt import outputs

    outputs.check_output("--output", output, run_dir, "checkpoint")  # averaged.pt may be redone
    with _writing(run_dir, "--run-dir"):
        path = average_checkpoints(run_dir, last=last, output=output)
    typer.echo(str(path))


@app.command(epilog=examples('mt attention -r runs/multi30k_de_en -o attention/ --text "Ein Hund rennt."'))
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


@app.command(epilog=examples('mt plot --run-dir runs/multi30k_de_en'))
def plot(
    run_dir: RunDirOpt,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN_DIR/curves.png")] = None,
) -> None:
    """Draw training loss, validation loss and validation BLEU against steps."""
    from mt import outputs
    from mt.plot import plot_curves

    outputs.check_output("--output", output, run_dir, "picture")
    typer.echo(str(plot_curves(run_dir, output)))


@app.command(epilog=examples('mt export --run-dir runs/multi30k_de_en --output exported/ --quantization int8'))
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


@app.command(epilog=examples('mt serve --run-dir runs/multi30k_de_en --port 8000'))
def serve(
    run_dir: RunDirOpt,
    checkpoint: CheckpointOpt = "best",
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    device: DeviceOpt = "auto",
    beam: BeamOpt = None,
    max_lines: Annotated[int, typer.Option("--max-lines", min=1, help="Lines per request.")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, help="Characters per line.")] = 1000,
    max_batch_tokens: Annotated[Optional[int], typer.Option("--max-batch-tokens", min=1, help="Source tokens searched together; default: decoding.batch_tokens.")] = None,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="How long a search waits for more requests to join it (only while it has fewer than the last search).")] = 20.0,
) -> None:
    """Serve translations over HTTP (JSON API at /v1, docs at /docs) and the attention page at /."""
    from mt.serve import Limits, serve_command

    limits = Limits(max_lines=max_lines, max_chars=max_chars, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms)
    serve_command(run_dir, checkpoint=checkpoint, host=host, port=port, device=device, beam=beam, limits=limits)


def _say_error(message: str) -> None:
    """One write, so that the error lines of several processes (torchrun's ranks) never mix."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def main() -> None:
    """Run the app: a user's mistake (MtError) is one line on stderr, not a traceback.
    Typer (standalone mode) handles usage errors itself and exits 2."""
    try:
        app()
    except Interrupted as e:  # saved and logged already; exit as a signal-stopped program does
        sys.exit(e.exit_code)
    except MtError as e:
        if _verbose():
            raise
        _say_error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # a path the user gave that cannot be read or written
        if _verbose():
            raise
        where = f"{e.filename}: " if e.filename else ""
        _say_error(f"{where}{e.strerror or e}")
        sys.exit(1)
