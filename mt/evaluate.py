"""`mt eval`: sacreBLEU's BLEU and chrF, with signatures, for translations mt makes or a finished file.

Scores come from sacreBLEU's Python API on detokenized text against the raw reference, with
its defaults (BLEU: 13a tokenization, mixed case, exp smoothing; chrF: chrF2), and lines are
read as the `sacrebleu` command reads them (trailing whitespace stripped), so
`sacrebleu REF -i HYP -m bleu chrf` prints the same numbers. Two or more hypothesis files are
compared with sacreBLEU's paired bootstrap resampling test against the first one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from mt.errors import MtError
from mt.files import read_lines, write_text

log = logging.getLogger(__name__)

EVAL_DIR = "eval"  # under run_dir: the hypotheses that `mt eval` scored, to look at or re-score


def score(hyps: Sequence[str], refs: Sequence[str], name: str) -> dict:
    """BLEU and chrF of `hyps` against `refs`, with sacreBLEU's signatures."""
    if len(hyps) != len(refs):
        raise MtError(f"{name}: {len(hyps)} hypothesis lines but {len(refs)} reference lines")
    if not refs:
        raise MtError(f"{name}: no lines to score (the files are empty)")
    hyps, refs = [h.rstrip() for h in hyps], [r.rstrip() for r in refs]
    bleu, chrf = BLEU(), CHRF()
    return {"name": name, "lines": len(hyps),
            "bleu": round(bleu.corpus_score(hyps, [refs]).score, 2),
            "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def format_row(result: dict) -> str:
    return (f"{result['name']:<20} {result['lines']:>6} lines  BLEU {result['bleu']:6.2f}  "
            f"chrF {result['chrf']:6.2f}  {result['bleu_signature']}  {result['chrf_signature']}")


def compare(hyp_paths: Sequence[Path], ref_path: Path) -> Iterator[dict]:
    """Paired bootstrap resampling (sacreBLEU's, 1000 resamples): each system's BLEU and chrF
    with a 95% confidence interval, and for every system after the first its p-value against
    the first (the baseline)."""
    refs = [r.rstrip() for r in read_lines(ref_path)]
    if not refs:
        raise MtError(f"{ref_path}: no lines to score (the file is empty)")
    systems = []
    for path in hyp_paths:
        hyps = [h.rstrip() for h in read_lines(path)]
        if len(hyps) != len(refs):
            raise MtError(f"{path}: {len(hyps)} lines but the reference {ref_path} has {len(refs)}")
        systems.append((str(path), hyps))
    signatures, results = PairedTest(systems, {"BLEU": BLEU(), "chrF": CHRF()}, [refs], test_type="bs")()
    for k, name in enumerate(results["System"]):
        bleu, chrf = results["BLEU"][k], results["chrF2"][k]
        number = lambda v: None if v is None else round(float(v), 4)  # noqa: E731  (NumPy floats -> JSON)
        yield {"name": name, "lines": len(refs), "bleu": number(bleu.score), "bleu_ci": number(bleu.ci),
               "bleu_p": number(bleu.p_value), "chrf": number(chrf.score), "chrf_ci": number(chrf.ci),
               "chrf_p": number(chrf.p_value), "bleu_signature": str(signatures["BLEU"]),
               "chrf_signature": str(signatures["chrF2"])}


def format_comparison(result: dict, baseline: bool) -> str:
    p = lambda v: "baseline" if baseline else f"p = {v:.4f}"  # noqa: E731
    return (f"{result['name']}: BLEU {result['bleu']:.2f} (± {result['bleu_ci']:.2f}, {p(result['bleu_p'])})  "
            f"chrF {result['chrf']:.2f} (± {result['chrf_ci']:.2f}, {p(result['chrf_p'])})")


def evaluate_command(run_dir: Optional[Path], src: Optional[Path], ref: Optional[Path], hyps: Sequence[Path],
                     output: Optional[Path], checkpoint: str = "best", beam: Optional[int] = None,
                     batch_tokens: Optional[int] = None, device: str = "auto",
                     as_json: bool = False) -> Iterator[str]:
    """The lines `mt eval` prints: one row (or JSON object) per scored test set or system."""
    show = (lambda r: json.dumps(r)) if as_json else format_row  # noqa: E731
    if hyps:
        if ref is None:
            raise MtError("--hyp needs --ref: the reference translations to score against")
        ignored = [name for name, given in (("--run-dir", run_dir), ("--src", src), ("--output", output)) if given]
        if ignored:
            raise MtError(f"{', '.join(ignored)}: not used with --hyp (finished outputs are scored as they are)")
        if len(hyps) > 1:
            for k, result in enumerate(compare(hyps, ref)):
                yield json.dumps(result) if as_json else format_comparison(result, baseline=k == 0)
            return
        yield show(score(read_lines(hyps[0]), read_lines(ref), str(hyps[0])))
        return
    if run_dir is None:
        raise MtError("nothing to score: give --hyp and --ref, or --run-dir (with --src and --ref, or "
                      "alone for the config's test sets)")
    if (src is None) != (ref is None):
        raise MtError("--src and --ref go together: give both, or neither for the config's test sets")
    if output is not None and src is None:
        raise MtError(f"--output goes with --src; the config's test sets are written to {Path(run_dir) / EVAL_DIR}")
    from mt.checkpoint import load_for_inference
    from mt.translate import translate_lines

    loaded = load_for_inference(run_dir, checkpoint, device)
    beam = beam or loaded.cfg.decoding.beam
    if src is not None:
        sets = {Path(src).name: (Path(src), Path(ref))}
    else:
        from mt.prepare import load_prepared

        tests = load_prepared(run_dir).files.tests
        if not tests:
            raise MtError(f"{run_dir}: the config names no test sets (data.test); give --src and --ref")
        sets = {name: (Path(pair.src), Path(pair.trg)) for name, pair in tests.items()}
    for name, (src_path, ref_path) in sets.items():
        sources, refs = read_lines(src_path), read_lines(ref_path)
        if len(sources) != len(refs):
            raise MtError(f"{src_path} has {len(sources)} lines but {ref_path} has {len(refs)}")
        translations = translate_lines(loaded, sources, beam=beam, batch_tokens=batch_tokens)
        target = Path(output) if output and src is not None else (
            Path(run_dir) / EVAL_DIR / f"{name}.{Path(str(loaded.path)).stem}.beam{beam}.txt")
        write_text(target, "".join(t + "\n" for t in translations))
        log.info("%s: wrote %s", name, target)
        yield show({**score(translations, refs, name), "beam": beam, "checkpoint": str(loaded.path),
                    "hypotheses": str(target)})
