"""`mt eval`: sacreBLEU's BLEU and chrF, with signatures, for translations mt makes or a finished file.

Scores come from sacreBLEU's Python API on detokenized text against the raw reference, with
its defaults (BLEU: 13a tokenization, mixed case, exp smoothing; chrF: chrF2), and lines are
read as the `sacrebleu` command reads them (trailing whitespace stripped), so
`sacrebleu REF -i HYP -m bleu chrf` prints the same numbers. Two or more hypothesis files are
compared with sacreBLEU's paired bootstrap resampling test against the first one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from mt import rundir
from mt.checkpoint import Loaded
from mt.errors import MtError
from mt.files import read_lines, write_text
from mt.translate import translate_lines

log = logging.getLogger(__name__)


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


def format_table(results: Sequence[dict]) -> str:
    """Scores as a table, a header row first, then each distinct signature on its own line."""
    width = max(20, *(len(r["name"]) for r in results))
    lines = [f"{'test set':<{width}} {'lines':>6} {'BLEU':>6} {'chrF':>6}"]
    lines += [f"{r['name']:<{width}} {r['lines']:>6} {r['bleu']:6.2f} {r['chrf']:6.2f}" for r in results]
    return "\n".join(lines + _signatures(results))


def _signatures(results: Sequence[dict]) -> list[str]:
    lines = []
    for metric, key in (("BLEU", "bleu_signature"), ("chrF", "chrf_signature")):
        for signature in dict.fromkeys(r[key] for r in results):  # distinct, in order
            lines.append(f"{metric} signature: {signature}")
    return lines


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
        number = lambda v, digits=2: None if v is None else round(float(v), digits)  # noqa: E731  (NumPy floats -> JSON)
        yield {"name": name, "lines": len(refs), "bleu": number(bleu.score), "bleu_ci": number(bleu.ci),
               "bleu_p": number(bleu.p_value, 4), "chrf": number(chrf.score), "chrf_ci": number(chrf.ci),
               "chrf_p": number(chrf.p_value, 4), "bleu_signature": str(signatures["BLEU"]),
               "chrf_signature": str(signatures["chrF2"])}


def format_comparison(results: Sequence[dict]) -> str:
    """The paired bootstrap as a table: score ± 95% CI and the p-value against the first
    system (the baseline), then the signatures."""
    width = max(20, *(len(r["name"]) for r in results))
    p = lambda v: "baseline" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'system':<{width}} {'lines':>6} {'BLEU':>6} {'± 95%':>6} {'p':>9} {'chrF':>6} {'± 95%':>6} {'p':>9}"]
    lines += [f"{r['name']:<{width}} {r['lines']:>6} {r['bleu']:6.2f} {r['bleu_ci']:6.2f} {p(r['bleu_p']):>9} "
              f"{r['chrf']:6.2f} {r['chrf_ci']:6.2f} {p(r['chrf_p']):>9}" for r in results]
    return "\n".join(lines + _signatures(results))


def score_file(loaded: Loaded, run_dir: Path, src: Path, ref: Path, output: Optional[Path] = None,
               beam: Optional[int] = None, batch_tokens: Optional[int] = None) -> dict:
    """Translate `src` with the loaded model and score it against `ref`; the translations are
    written to `output` (default: RUN_DIR/eval/<src name>.<checkpoint>.beam<k>.txt)."""
    return _translate_and_score(loaded, run_dir, Path(src).name, Path(src), Path(ref), output, beam, batch_tokens)


def score_test_sets(loaded: Loaded, run_dir: Path, beam: Optional[int] = None,
                    batch_tokens: Optional[int] = None) -> list[dict]:
    """Translate and score every test set the run's config names (`mt eval`, and `mt train` at its end)."""
    tests = rundir.recorded_files(run_dir).tests
    if not tests:
        raise MtError(f"{run_dir}: the config names no test sets (data.test); give --src and --ref")
    return [_translate_and_score(loaded, run_dir, name, Path(pair.src), Path(pair.trg), None, beam, batch_tokens)
            for name, pair in tests.items()]


def _translate_and_score(loaded: Loaded, run_dir: Path, name: str, src: Path, ref: Path, output: Optional[Path],
                         beam: Optional[int], batch_tokens: Optional[int]) -> dict:
    sources, refs = read_lines(src), read_lines(ref)
    if len(sources) != len(refs):
        raise MtError(f"{src} has {len(sources)} lines but {ref} has {len(refs)}")
    beam = beam or loaded.cfg.decoding.beam
    translations = translate_lines(loaded, sources, beam=beam, batch_tokens=batch_tokens, progress=True)
    if output is None:
        output = rundir.eval_output(run_dir, name, Path(str(loaded.path)), beam)
    write_text(output, "".join(t + "\n" for t in translations))
    log.info("%s: wrote %s", name, output)
    return {**score(translations, refs, name), "beam": beam, "checkpoint": str(loaded.path),
            "hypotheses": str(output)}
