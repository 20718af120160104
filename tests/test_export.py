"""`mt export` to CTranslate2: the exported model translates exactly as `mt translate` does.

Two trained models between them use every architecture option: the session's toy model
(configs/toy.yaml: pre-norm, ReLU, sinusoidal positions, one vocabulary and embedding table,
tied output) and a small variant with all the others, trained briefly on the same map task: long
enough that its searches end sentences before the length limit (an untrained model babbles to
the limit on every line, where mt and CTranslate2 are known to differ), which is what exactness
needs, not quality. Each is exported once per module; the refusals run the real command
in-process (`mt.cli.main`): a subprocess would only add the start-up of Python and torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("ctranslate2")

from conftest import make_toy_data, toy_config  # noqa: E402
from mt.checkpoint import Loaded, load_for_inference  # noqa: E402
from mt.cli import main  # noqa: E402
from mt.config import load_config  # noqa: E402
from mt.errors import MtError  # noqa: E402
from mt.export import check_architecture, export_run  # noqa: E402
from mt.exported_translate import CT2_LENGTH_PENALTY  # noqa: E402
from mt.files import read_lines  # noqa: E402
from mt.search import Hypothesis, max_output_lengths  # noqa: E402
from mt.tokenizer import EOS_ID  # noqa: E402
from mt.train import train  # noqa: E402
from mt.translate import fit_source, translate_ids  # noqa: E402

# The option values configs/toy.yaml does not use. 120 steps on 2,000 pairs: nearly every
# output ends before its length limit, with varied words (the map task's dev BLEU ~15).
VARIANT = dict(norm="post", activation="gelu", positions="learned", share_embeddings=False, tie_output=False)
VARIANT_STEPS = 120


# ---------------------------------------------------------------------------------------------
# Models and their exports, made once per module
# ---------------------------------------------------------------------------------------------

@dataclass
class Export:
    """A run dir, its model as mt loads it, and the folder `mt export` made of it."""

    run_dir: Path
    loaded: Loaded
    folder: Path
    test_src: Path  # lines to translate, of the task it was trained on


def exported(run_dir: Path, folder: Path, test_src: Path) -> Export:
    return Export(run_dir, load_for_inference(run_dir, "best", "cpu"), export_run(run_dir, folder), test_src)


def load_exported(folder: Path, compute_type: str = "float32"):
    """The translate.py that `mt export` wrote into the folder, imported from there."""
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(folder))}", folder / "translate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ExportedModel(folder, device="cpu", compute_type=compute_type)


@pytest.fixture(scope="module")
def toy_export(toy_run, tmp_path_factory) -> Export:
    """The trained toy model (conftest's session `toy_run`), exported with float32 weights."""
    folder = tmp_path_factory.mktemp("toy_export") / "exported"
    return exported(toy_run / "run", folder, toy_run / "data/test.src")


@pytest.fixture(scope="module")
def variant_export(tmp_path_factory) -> Export:
    """A model with every option value the toy model does not use, trained briefly, exported."""
    base = tmp_path_factory.mktemp("variant")
    data = make_toy_data(base / "data", train=2000, dev=20, test=60)  # a small dev set: validation is cheap
    config = toy_config(base / "cfg.yaml", data, base / "run", tokenizer__joint=False, tokenizer__vocab_size=40,
                        model__d_model=32, model__ff_dim=64, training__max_steps=VARIANT_STEPS,
                        training__validate_every=VARIANT_STEPS, training__save_every=VARIANT_STEPS,
                        **{f"model__{k}": v for k, v in VARIANT.items()})
    train(load_config(config), device="cpu")
    return exported(base / "run", base / "exported", data / "test.src")


@pytest.fixture(params=["toy", "variant"])
def model_export(request) -> Export:
    return request.getfixturevalue(f"{request.param}_export")


# ---------------------------------------------------------------------------------------------
# mt and the export, line by line
# ---------------------------------------------------------------------------------------------

@dataclass
class Line:
    """One input line as mt translates it and as the export does, with mt's length limit."""

    mine: Hypothesis  # mt's best: tokens without </s>, score with it
    text: str  # what `mt translate` prints
    theirs: Any  # translate.py's Result
    limit: int  # the most tokens mt's search may output before </s>

    @property
    def mt_reached_limit(self) -> bool:  # mt then forced </s>; CTranslate2 stops without it
        return len(self.mine.tokens) >= self.limit


def side_by_side(export: Export, lines: list[str], beam: int, model=None) -> list[Line]:
    """Each non-empty line through mt's search and the export's, after checking that both cut
    the source and set the length limit (decoding.max_len_a, max_len_b) in the same way."""
    loaded, model = export.loaded, model or load_exported(export.folder)
    src_ids = fit_source(loaded, lines)
    dec = loaded.cfg.decoding
    limits = [int(max_output_lengths(torch.tensor([ids + [EOS_ID]]), dec.max_len_a, dec.max_len_b,
                                     loaded.cfg.model.max_len)) for ids in src_ids]
    assert [model.pieces(line) for line in lines] == [loaded.tokenizer.src_pieces(ids) for ids in src_ids]
    assert [model.limit(len(ids)) for ids in src_ids if ids] == [n for ids, n in zip(src_ids, limits) if ids]
    hyps = [t.hyps[0] for t in translate_ids(loaded, src_ids, beam=beam)]
    texts = loaded.tokenizer.decode_trg([h.tokens for h in hyps])
    theirs = model.translate(lines, beam=beam)
    return [Line(*four) for four, ids in zip(zip(hyps, texts, theirs, limits), src_ids) if ids]


def assert_same_scores(line: Line) -> None:
    assert line.theirs.score == pytest.approx(line.mine.score, abs=1e-3)
    assert line.theirs.normalized == pytest.approx(line.mine.normalized, abs=1e-3)


def assert_greedy_exact(lines: list[Line]) -> None:
    """Greedy: the same line everywhere; CTranslate2 stops without </s> exactly where mt
    reached its limit (and forced </s>); elsewhere the same score."""
    for line in lines:
        assert line.theirs.text == line.text
        assert line.theirs.ended == (not line.mt_reached_limit)
        if line.theirs.ended:
            assert_same_scores(line)


def assert_beam_exact(lines: list[Line]) -> dict[str, int]:
    """Beam search: every line is mt's (same scores where both ended on their own), or differs
    for one of the two reasons README gives, checked here; returns how many lines are which."""
    counts = {"same": 0, "length limit": 0, "dropped by CTranslate2's ranking": 0}
    for line in lines:
        mine, theirs = line.mine, line.theirs
        both_ended = theirs.ended and not line.mt_reached_limit
        if theirs.text == line.text:
            counts["same"] += 1
            if both_ended:
                assert_same_scores(line)
        elif not both_ended:  # mt forced </s> at the limit, or CTranslate2's best stopped there
            counts["length limit"] += 1
        else:  # CTranslate2 kept its `beam` best by score / n ** penalty and mt's choice was not among them
            counts["dropped by CTranslate2's ranking"] += 1
            assert theirs.normalized <= mine.normalized + 1e-3  # by mt's ranking, mt's choice is the best
            n = len(mine.tokens) + 1
            assert theirs.score / theirs.length ** CT2_LENGTH_PENALTY >= mine.score / n ** CT2_LENGTH_PENALTY - 1e-3
    return counts


def assert_meaningful(lines: list[Line]) -> None:
    """Lines worth comparing: varied, and nearly all ended by the model before mt's limit."""
    assert len({line.text for line in lines}) > 10, "the model should say different things"
    assert sum(not line.mt_reached_limit for line in lines) >= 0.9 * len(lines)


# ---------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------

def test_the_two_models_use_every_architecture_option(toy_export, variant_export):
    toy, variant = toy_export.loaded.cfg, variant_export.loaded.cfg
    for option, values in [("norm", {"pre", "post"}), ("activation", {"relu", "gelu"}),
                           ("positions", {"sinusoidal", "learned"}), ("share_embeddings", {True, False}),
                           ("tie_output", {True, False})]:
        assert {getattr(toy.model, option), getattr(variant.model, option)} == values, option
    assert {toy.tokenizer.joint, variant.tokenizer.joint} == {True, False}  # shared and separate vocabularies


def test_greedy_output_and_scores_are_mt_s_on_every_line(model_export):
    lines = read_lines(model_export.test_src)
    compared = side_by_side(model_export, lines, beam=1)
    assert_meaningful(compared)
    assert_greedy_exact(compared)
    assert load_exported(model_export.folder).translate([""], beam=1)[0].text == ""  # empty in, empty out


def test_beam_5_output_is_mt_s_except_where_the_documented_differences_show(model_export):
    lines = read_lines(model_export.test_src)
    compared = side_by_side(model_export, lines, beam=5)
    assert_meaningful(compared)
    counts = assert_beam_exact(compared)
    assert counts["same"] >= 0.9 * len(compared), counts


def test_where_the_length_limit_stops_the_search_greedy_output_is_still_the_same(variant_export):
    """At the limit mt forces </s> (and counts it) where CTranslate2 just stops: same words, and
    CTranslate2's output ends exactly on the lines where mt's did before the limit."""
    loaded = variant_export.loaded
    short = dataclasses.replace(loaded.cfg.decoding, max_len_a=0.0, max_len_b=2)  # a limit most lines reach
    export = dataclasses.replace(variant_export, loaded=dataclasses.replace(
        loaded, cfg=dataclasses.replace(loaded.cfg, decoding=short)))
    model = load_exported(export.folder)
    model.settings["decoding"].update(max_len_a=0.0, max_len_b=2)
    compared = side_by_side(export, read_lines(export.test_src), beam=1, model=model)
    assert sum(line.mt_reached_limit for line in compared) > 10
    assert_greedy_exact(compared)


def test_int8_export_translates_the_trained_toy_model_nearly_the_same(toy_run, tmp_path):
    folder = export_run(toy_run / "run", tmp_path / "int8", quantization="int8")
    assert json.loads((folder / "mt_export.json").read_text())["quantization"] == "int8"
    lines = read_lines(toy_run / "data/test.src")
    loaded = load_for_inference(toy_run / "run", "best", "cpu")
    mine = loaded.tokenizer.decode_trg([t.hyps[0].tokens for t in translate_ids(loaded, fit_source(loaded, lines), 1)])
    same = sum(r.text == text for r, text in zip(load_exported(folder, "int8").translate(lines, beam=1), mine))
    assert same >= 0.9 * len(lines)


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------

def mt_command(monkeypatch, capsys, *args: str, stdin: Path | None = None) -> tuple[int, str, str]:
    """`mt ARGS` run in this process by mt's own entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["mt", *args])
    monkeypatch.delenv("MT_VERBOSE", raising=False)  # messages as users see them
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin.open(encoding="utf-8"))
    with pytest.raises(SystemExit) as exit_:
        main()
    if stdin is not None:
        sys.stdin.close()
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_trained_toy_model_export_then_both_commands_print_the_same_lines(toy_run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "toy_ct2"
    code, out, _ = mt_command(monkeypatch, capsys, "export", "--run-dir", str(toy_run / "run"), "--output", str(folder))
    assert code == 0 and out.strip() == str(folder)
    for name in ("model.bin", "config.json", "README.txt", "translate.py", "mt_export.json", "joint.model"):
        assert (folder / name).is_file(), name
    source = toy_run / "data/test.src"
    for beam in ("1", "5"):
        code, mine, _ = mt_command(monkeypatch, capsys, "translate", "--run-dir", str(toy_run / "run"),
                                   "--beam", beam, "--device", "cpu", stdin=source)
        # translate.py runs on its own, with ctranslate2 and sentencepiece only: a real process
        theirs = subprocess.run([sys.executable, str(folder / "translate.py"), "--beam", beam,
                                 "--compute-type", "float32"], input=source.read_text(), capture_output=True,
                                text=True, check=True)
        assert code == 0 and theirs.stdout.splitlines() == mine.splitlines()
    readme = (folder / "README.txt").read_text()
    assert "translate_batch" in readme and "</s>" in readme and "beam_size=1" in readme


def test_an_existing_folder_is_kept_without_force_and_only_an_export_is_replaced(toy_export, tmp_path, monkeypatch,
                                                                                    capsys):
    run = str(toy_export.run_dir)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    code, _, err = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(folder))
    assert_one_line_error(code, err, "--force")
    code, _, err = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(folder), "--force")
    assert_one_line_error(code, err, "not a folder made by mt export")
    assert [p.name for p in folder.iterdir()] == ["mine.txt"] and (folder / "mine.txt").read_text() == "keep me"
    earlier = tmp_path / "exported"
    shutil.copytree(toy_export.folder, earlier)  # an earlier export, float32
    float32 = (earlier / "model.bin").read_bytes()
    code, _, err = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(earlier))
    assert_one_line_error(code, err, "--force")
    code, _, _ = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(earlier), "--force",
                            "--quantization", "int8")
    assert code == 0 and (earlier / "model.bin").read_bytes() != float32
    assert json.loads((earlier / "mt_export.json").read_text())["quantization"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "out"]  # no temporary folders left


def test_bad_options_and_a_missing_ctranslate2_are_one_line_errors(toy_export, tmp_path, monkeypatch, capsys):
    run = str(toy_export.run_dir)
    for args, expected in [(["--format", "onnx"], "--format onnx"), (["--quantization", "int4"], "--quantization int4")]:
        code, _, err = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(tmp_path / "x"),
                                  *args)
        assert_one_line_error(code, err, expected)
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if the extra were not installed
    code, _, err = mt_command(monkeypatch, capsys, "export", "--run-dir", run, "--output", str(tmp_path / "y"))
    assert_one_line_error(code, err, "mt[export]")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_option_the_converter_does_not_know_is_refused_by_name(toy_export):
    with pytest.raises(MtError, match="model.activation = 'swish'"):
        check_architecture(dataclasses.replace(toy_export.loaded.cfg.model, activation="swish"))
