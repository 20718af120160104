"""The `mt` command's options: the ones several commands share, and checks of options that go
together, made before anything heavy loads. cli.py declares each command with these.

Nothing here prints or exits: a bad combination raises MtError naming the options, and cli.py
shows it as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mt.config import PRECISIONS
from mt.errors import MtError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The run's YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set training.lr=5e-4 (repeatable)."),
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


def _check_precision(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in PRECISIONS:
        raise typer.BadParameter(f"expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", callback=_check_precision,
    help="Decoding precision on CUDA: auto, bf16, fp16 or fp32; default: what the run trained with (training.precision).")]


def examples(*lines: str) -> str:
    """A command's --help epilog: the lines as given (click's \\b keeps them unwrapped)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def load(config: Path, overrides: Optional[list[str]]):
    """The config of --config with each --set applied."""
    from mt.config import load_config

    return load_config(config, overrides or [])


def check_nbest(run_dir: Path, nbest: int, beam: Optional[int]) -> None:
    """--nbest N needs a beam of N or more: say so before the model loads."""
    from mt import rundir
    from mt.config import load_config

    if nbest == 1:
        return
    if beam is None and rundir.config_file(run_dir).is_file():
        beam = load_config(rundir.config_file(run_dir), []).decoding.beam
        if nbest > beam:
            raise MtError(f"--nbest {nbest}: the run decodes with beam {beam} (decoding.beam); give --beam {nbest} or more")
    if beam is not None and nbest > beam:
        raise MtError(f"--nbest {nbest}: more than --beam {beam}; give --beam {nbest} or more")


def check_eval_hyp_options(ref: Optional[Path], run_dir: Optional[Path], src: Optional[Path],
                           output: Optional[Path]) -> None:
    """`mt eval --hyp`: scores finished outputs against --ref, so it takes nothing to translate with."""
    if ref is None:
        raise MtError("--hyp needs --ref: the reference translations to score against")
    ignored = [name for name, given in (("--run-dir", run_dir), ("--src", src), ("--output", output)) if given]
    if ignored:
        raise MtError(f"{', '.join(ignored)}: not used with --hyp (finished outputs are scored as they are)")


def check_eval_run_options(run_dir: Optional[Path], src: Optional[Path], ref: Optional[Path],
                           output: Optional[Path]) -> None:
    """`mt eval --run-dir`: a file (--src with --ref) or the config's test sets; --output only with --src."""
    if run_dir is None:
        raise MtError("nothing to score: give --hyp and --ref, or --run-dir (with --src and --ref, or "
                      "alone for the config's test sets)")
    if (src is None) != (ref is None):
        raise MtError("--src and --ref go together: give both, or neither for the config's test sets")
    from mt import rundir

    if output is not None and src is None:
        raise MtError(f"--output goes with --src; the config's test sets are written to {rundir.eval_dir(run_dir)}")
    rundir.check_output("--output", output, [src, ref, *rundir.records(run_dir)])
