"""`mt export` to CTranslate2: the exported model translates exactly as `mt translate` does.

Exactness needs no trained model: models of every architecture option are built with mt's own
code (random weights, written as a checkpoint into a prepared run dir), nudged towards ending
sentences so that searches finish before the length limit, where mt and CTranslate2 are meant
to agree on every line. The real trained toy model is checked too, through both commands.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ctranslate2")

from conftest import make_toy_data, run_mt, toy_config  # noqa: E402
from mt.checkpoint import build_model, load_for_inference, make_checkpoint, save_checkpoint  # noqa: E402
from mt.config import load_config  # noqa: E402
from mt.errors import MtError  # noqa: E402
from mt.export import check_architecture, export_run  # noqa: E402
from mt.files import read_lines  # noqa: E402
from mt.prepare import prepare  # noqa: E402
from mt.rundir import checkpoint_dir  # noqa: E402
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer  # noqa: E402
from mt.translate import fit_source, translate_ids  # noqa: E402

# Every architecture option mt trains, each value in at least one model.
ARCHITECTURES = {
    "pre-relu-sinusoidal-shared-tied": dict(norm="pre", activation="relu", positions="sinusoidal", joint=True,
                                            share_embeddings=True, tie_output=True),
    "post-gelu-learned-separate-untied": dict(norm="post", activation="gelu", positions="learned", joint=False,
                                              share_embeddings=False, tie_output=False),
    "post-relu-sinusoidal-joint-unshared-tied": dict(norm="post", activation="relu", positions="sinusoidal",
                                                     joint=True, share_embeddings=False, tie_output=True),
    "pre-gelu-learned-separate-tied": dict(norm="pre", activation="gelu", positions="learned", joint=False,
                                           share_embeddings=False, tie_output=True),
}
# A random model's logits are flat, and a tied one's first step predicts BOS: mt never outputs
# PAD or BOS, CTranslate2 would if they were among its best candidates. Like a trained model's,
# the test models' logits are sharpened, PAD and BOS are pushed down, and EOS gets a lift so
# that some sentences end before the length limit.
SHARPEN = 4.0
EOS_NUDGE = 8.0
SPECIAL_DROP = -40.0


def load_exported(folder: Path):
    """The translate.py that `mt export` wrote into the folder, imported from there."""
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(folder))}", folder / "translate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ExportedModel(folder, device="cpu", compute_type="float32")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("export_data") / "data", train=400, dev=60, test=60)


def random_run(base: Path, data: Path, options: dict) -> Path:
    """A prepared run dir whose best.pt holds an untrained model with these options."""
    overrides = {f"model__{k}": v for k, v in options.items() if k != "joint"}
    config = toy_config(base / "cfg.yaml", data, base / "run", tokenizer__joint=options["joint"],
                        tokenizer__vocab_size=40, model__d_model=32, model__ff_dim=64, **overrides)
    cfg = load_config(config)
    prepare(cfg)
    tokenizer = Tokenizer.load(base / "run/tokenizer")
    torch.manual_seed(3)
    model = build_model(cfg, tokenizer)
    with torch.no_grad():  # the decoder's last norm makes the logits: sharpen them, and favour EOS
        last_norm = model.decoder_norm if options["norm"] == "pre" else model.decoder_layers[-1].ff_res.norm
        last_norm.weight *= SHARPEN
        for token, lift in ((EOS_ID, EOS_NUDGE), (BOS_ID, SPECIAL_DROP), (PAD_ID, SPECIAL_DROP)):
            row = model.output.weight[token]
            if row.any():  # a tied PAD row is zero: its logit is 0, far below the best ones
                last_norm.bias += lift * row / row.dot(row)
    checkpoint_dir(base / "run").mkdir(exist_ok=True)
    save_checkpoint(checkpoint_dir(base / "run") / "best.pt", make_checkpoint(model, cfg, tokenizer, {"step": 0}))
    return base / "run"


def mt_results(run_dir: Path, lines: list[str], beam: int) -> list[tuple[str, float, float]]:
    """What `mt translate` prints for each line, with the hypothesis' score and ranking score."""
    loaded = load_for_inference(run_dir, "best", "cpu")
    found = translate_ids(loaded, fit_source(loaded, lines), beam=beam)
    texts = loaded.tokenizer.decode_trg([t.hyps[0].tokens for t in found])
    return [(text, t.hyps[0].score, t.hyps[0].normalized) for text, t in zip(texts, found)]


def limit(run_dir: Path, line: str) -> int:
    """mt's output length limit for this line (search.max_output_lengths)."""
    loaded = load_for_inference(run_dir, "best", "cpu")
    dec, pieces = loaded.cfg.decoding, len(fit_source(loaded, [line])[0])
    return min(max(int(dec.max_len_a * pieces + dec.max_len_b), 1), loaded.cfg.model.max_len - 1)


def assert_same_output(mine: list[tuple[str, float, float]], exported: list, must_agree: list[bool]) -> None:
    """Equal text on every line that must agree; equal scores where the output ended with </s>."""
    for (text, score, normalized), r, agree in zip(mine, exported, must_agree):
        if agree:
            assert r.text == text
        if agree and r.ended:
            assert r.score == pytest.approx(score, abs=1e-3)
            assert r.normalized == pytest.approx(normalized, abs=1e-3)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_translates_greedily_exactly_as_mt(name, toy_data, tmp_path):
    run_dir = random_run(tmp_path, toy_data, ARCHITECTURES[name])
    folder = export_run(run_dir, tmp_path / "exported")
    lines = read_lines(toy_data / "dev.src") + [""]  # an empty line gives an empty line
    mine = mt_results(run_dir, lines, beam=1)
    assert len({text for text, _, _ in mine}) > 10, "the test model should say different things"
    assert_same_output(mine, load_exported(folder).translate(lines, beam=1), [True] * len(lines))


def test_the_trained_toy_model_translates_exactly_as_mt_greedy_and_beam_5(toy_run, tmp_path):
    """Beam search agrees on every line whose search ends before its length limit (where mt
    forces </s> and CTranslate2 stops without it): nearly every line for a trained model."""
    base = toy_run
    run_dir = base / "run"
    folder = export_run(run_dir, tmp_path / "exported")
    exported = load_exported(folder)
    lines = read_lines(base / "data/test.src")[:60]
    limits = [limit(run_dir, line) for line in lines]
    for beam in (1, 5):
        mine = mt_results(run_dir, lines, beam)
        theirs = exported.translate(lines, beam=beam)
        pieces = load_for_inference(run_dir, "best", "cpu").tokenizer.encode_trg([t for t, _, _ in mine])
        must_agree = [len(p) < n and r.ended for p, r, n in zip(pieces, theirs, limits)]
        assert sum(must_agree) >= 0.9 * len(lines)
        assert_same_output(mine, theirs, must_agree if beam > 1 else [True] * len(lines))


def test_greedy_tokens_agree_where_the_length_limit_stops_the_search(toy_data, tmp_path):
    """At the limit mt forces </s> (and counts it) where CTranslate2 just stops: same words."""
    options = dict(ARCHITECTURES["pre-relu-sinusoidal-shared-tied"])
    run_dir = random_run(tmp_path, toy_data, options)
    loaded_cfg = load_for_inference(run_dir, "best", "cpu").cfg
    assert loaded_cfg.decoding.max_len_b > 0
    folder = export_run(run_dir, tmp_path / "exported")
    exported = load_exported(folder)
    exported.settings["decoding"].update(max_len_a=0.0, max_len_b=2)  # a limit most sentences reach
    lines = read_lines(toy_data / "dev.src")
    results = exported.translate(lines, beam=1)
    assert sum(not r.ended for r in results) > 10
    for r in results:
        assert r.ended or len(r.text.split()) <= 2


def test_trained_toy_model_export_then_both_commands_print_the_same_lines(toy_run, tmp_path):
    folder = tmp_path / "toy_ct2"
    run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(folder))
    for name in ("model.bin", "config.json", "README.txt", "translate.py", "mt_export.json", "joint.model"):
        assert (folder / name).is_file(), name
    source = (toy_run / "data/test.src").read_text()
    for beam in ("1", "5"):
        mine = run_mt("translate", "--run-dir", str(toy_run / "run"), "--beam", beam, "--device", "cpu", input=source)
        theirs = subprocess.run([sys.executable, str(folder / "translate.py"), "--beam", beam,
                                 "--compute-type", "float32"], input=source, capture_output=True, text=True,
                                check=True)
        assert theirs.stdout.splitlines() == mine.stdout.splitlines()
    readme = (folder / "README.txt").read_text()
    assert "translate_batch" in readme and "</s>" in readme and "beam_size=1" in readme


def test_int8_export_translates_the_trained_toy_model_nearly_the_same(toy_run, tmp_path):
    folder = export_run(toy_run / "run", tmp_path / "int8", quantization="int8")
    lines = read_lines(toy_run / "data/test.src")
    exported = load_exported(folder)
    exported.translator = type(exported.translator)(str(folder), device="cpu", compute_type="int8")
    same = sum(r.text == text for r, (text, _, _) in zip(exported.translate(lines, beam=1),
                                                           mt_results(toy_run / "run", lines, 1)))
    assert same >= 0.9 * len(lines)


def test_an_existing_folder_is_kept_without_force_and_only_an_export_is_replaced(toy_run, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    result = run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(folder), check=False)
    assert result.returncode == 1 and "--force" in result.stderr and "Traceback" not in result.stderr
    result = run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(folder), "--force", check=False)
    assert result.returncode == 1 and "not a folder made by mt export" in result.stderr
    assert (folder / "mine.txt").read_text() == "keep me"
    exported = tmp_path / "exported"
    run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(exported))
    first = (exported / "model.bin").stat().st_mtime_ns
    run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(exported), "--force",
           "--quantization", "int8")
    assert (exported / "model.bin").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "out"]  # no temporary folders left


def test_bad_options_and_a_missing_ctranslate2_are_one_line_errors(toy_run, tmp_path):
    run = str(toy_run / "run")
    for args, expected in [(["--format", "onnx"], "--format onnx"), (["--quantization", "int4"], "--quantization int4")]:
        result = run_mt("export", "--run-dir", run, "--output", str(tmp_path / "x"), *args, check=False)
        assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr
    hide = ("import sys; sys.modules['ctranslate2'] = None; sys.argv = ['mt', 'export', '--run-dir', sys.argv[1], "
            "'--output', sys.argv[2]]; from mt.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", hide, run, str(tmp_path / "y")], capture_output=True, text=True)
    assert result.returncode == 1 and "mt[export]" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_option_the_converter_does_not_know_is_refused_by_name(toy_run):
    cfg = load_for_inference(toy_run / "run", "best", "cpu").cfg.model
    with pytest.raises(MtError, match="model.activation = 'swish'"):
        check_architecture(dataclasses.replace(cfg, activation="swish"))
