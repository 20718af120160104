"""The `mt` command's face: option checks that only the CLI makes, one-line errors, exit codes."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from conftest import ROOT, error_line, make_toy_data, run_mt


@pytest.mark.parametrize("args, expected", [
    (["--beam", "0"], "Invalid value for '--beam'"),
    (["--batch-tokens", "-5"], "Invalid value for '--batch-tokens'"),
    (["--nbest", "0"], "Invalid value for '--nbest'"),
])
def test_decoding_options_out_of_range_are_refused(toy_run, args, expected):
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), *args, input="x\n", check=False)
    assert result.returncode == 2 and expected in result.stderr and result.stdout == ""



def test_eval_refuses_empty_files_and_options_it_would_ignore(toy_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_mt("eval", "--hyp", str(empty), "--ref", str(empty), check=False)
    assert result.returncode == 1 and "error: " in result.stderr and "no lines to score" in result.stderr
    ref = str(toy_run / "data/test.trg")
    result = run_mt("eval", "--hyp", ref, "--ref", ref, "--run-dir", str(toy_run / "run"), check=False)
    assert result.returncode == 1 and "--run-dir: not used with --hyp" in result.stderr
    result = run_mt("eval", "--run-dir", str(toy_run / "run"), "--output", str(tmp_path / "o.txt"), check=False)
    assert result.returncode == 1 and "--output goes with --src" in result.stderr
    assert "Traceback" not in result.stderr



def test_a_precision_that_does_not_exist_is_refused(toy_run):
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), "--precision", "fp8", input="x\n", check=False)
    assert result.returncode == 2 and "Invalid value for '--precision'" in result.stderr and result.stdout == ""


def test_verbose_adds_the_traceback_to_an_error(tmp_path):
    quiet = run_mt("translate", "--run-dir", str(tmp_path), input="x\n", check=False)
    loud = run_mt("--verbose", "translate", "--run-dir", str(tmp_path), input="x\n", check=False)
    assert quiet.returncode == 1 and quiet.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not an mt run directory (no tokenizer/ in it; run mt train first)"]
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "MtError" in loud.stderr


def test_help_shows_flags_as_flags_a_version_and_examples():
    top = run_mt("--help").stdout
    assert "<bool>" not in top and "--verbose" in top
    for command in ("config", "prepare", "train", "translate", "eval", "average", "attention", "plot", "serve"):
        text = run_mt(command, "--help").stdout
        assert "<bool>" not in text and "Examples:" in text, command
    assert "mt train --config configs/multi30k_de_en_cpu.yaml" in run_mt("train", "--help").stdout
    from importlib.metadata import version
    assert run_mt("--version").stdout.strip() == f"mt {version('mt')}"


def test_hints_name_options_of_the_command_that_prints_them(toy_run, tmp_path):
    run_dir = toy_run / "run"
    nbest = run_mt("translate", "--run-dir", str(run_dir), "--nbest", "3", check=False, stdin="x\n")
    assert nbest.returncode == 1 and "--beam 3" in error_line(nbest)  # toy.yaml decodes with beam 1
    assert "loaded" not in nbest.stderr  # refused before the model was loaded
    force = run_mt("prepare", "--config", str(toy_run / "toy.yaml"), "--force", check=False)
    assert force.returncode == 1 and "holds checkpoints" in error_line(force)
    assert "--restart" not in force.stderr
    one = run_mt("translate", "--run-dir", str(run_dir), "--device", "cpu", stdin="x\n")
    assert "translated 1 line in" in one.stderr


def test_average_and_best_say_what_they_used(toy_run, tmp_path):
    steps = sorted(p.name for p in (toy_run / "run/checkpoints").glob("step*.pt"))
    averaged = run_mt("average", "--run-dir", str(toy_run / "run"), "--last", "5", "--output", str(tmp_path / "a.pt"))
    assert f"averaged {len(steps)} checkpoints" in averaged.stderr and "asked for 5" in averaged.stderr
    copy = tmp_path / "run"
    shutil.copytree(toy_run / "run", copy)
    (copy / "checkpoints/best.pt").unlink()
    fallback = run_mt("translate", "--run-dir", str(copy), "--device", "cpu", stdin="x\n")
    assert "no best checkpoint yet" in fallback.stderr and steps[-1] in fallback.stderr


def test_eval_prints_a_table_and_labelled_signatures_without_sacrebleu_chatter(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("the dog runs in the park .\na cat sleeps on the sofa .\n", encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("the dog runs in a park .\na cat sleeps on the sofa .\n", encoding="utf-8")
    one = run_mt("eval", "--hyp", str(hyp), "--ref", str(ref)).stdout.splitlines()
    assert one[0].split() == ["test", "set", "lines", "BLEU", "chrF"]
    assert one[2].startswith("BLEU signature: nrefs:1|") and one[3].startswith("chrF signature: nrefs:1|")
    both = run_mt("eval", "--hyp", str(ref), "--hyp", str(hyp), "--ref", str(ref))
    assert "baseline" in both.stdout.splitlines()[1]
    assert any(line.startswith("BLEU signature: ") and "bs:1000" in line for line in both.stdout.splitlines())
    assert "Pre-computing" not in both.stderr and both.stderr.strip() == ""


def test_readme_config_errors_are_what_mt_prints(tmp_path):
    """Each `$ mt config ...` sample in README's Configuration section, run as it says (from a
    repository root, here a copy of its configs with toy data), prints the error shown under it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("Mistakes are caught at load", 1)[1].split("```", 2)[1]
    samples = re.findall(r"^\$ mt (.+)\n(error: .+)$", block, re.M)
    assert len(samples) == 4, block
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    make_toy_data(tmp_path / "data/toy", train=20, dev=5, test=5)
    toy = (tmp_path / "configs/toy.yaml").read_text(encoding="utf-8")
    (tmp_path / "my.yaml").write_text(toy.replace("\ntraining:", "\ntrainig:"), encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("run_dir: [runs/x\n", encoding="utf-8")
    for command, expected in samples:
        result = run_mt(*shlex.split(command), check=False, cwd=tmp_path)
        assert "error: " + error_line(result).replace(str(tmp_path), "/home/me/mt") == expected, command


def test_a_folder_mt_did_not_make_is_refused_naming_the_option_that_gave_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")
    result = run_mt("average", "--run-dir", str(tmp_path), check=False)
    assert result.returncode == 1 and error_line(result).endswith("give --run-dir a run dir that mt train made")
    assert "run_dir" not in error_line(result).replace("--run-dir", "")  # mt average has no config key to set
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written there
