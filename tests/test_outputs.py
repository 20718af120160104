"""`--output` of eval, plot, average and attention (issue 16: nothing destroyed that mt did not
make): refused inside the run's own parts, onto a file mt did not make, or where it cannot be
written, all before the model loads."""

from __future__ import annotations

import pytest

from conftest import error_line, run_mt
from mt.errors import MtError
from mt.outputs import check_output

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


@pytest.fixture
def run_dir(tmp_path):
    """The parts of a run dir the checks look at (no model: every check comes before loading one)."""
    run = tmp_path / "run"
    for part in ("cache/train", "tokenizer", "checkpoints"):
        (run / part).mkdir(parents=True)
    (run / "cache" / "train" / "src.tokens").write_bytes(b"\1\0\0\0" * 8)
    (run / "checkpoints" / "step_0000100.pt").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text("{\"step\": 1, \"loss\": 2.0}\n", encoding="utf-8")
    return run


def test_outputs_inside_the_runs_cache_tokenizer_or_checkpoints_are_refused(run_dir, tmp_path):
    src, ref = tmp_path / "test.de", tmp_path / "test.en"
    src.write_text("Ein Hund.\n", encoding="utf-8")
    ref.write_text("A dog.\n", encoding="utf-8")
    cache_file = run_dir / "cache" / "train" / "src.tokens"
    result = run_mt("eval", "--run-dir", str(run_dir), "--src", str(src), "--ref", str(ref),
                    "--output", str(cache_file), check=False)
    assert result.returncode == 1
    assert error_line(result).startswith(f"--output {cache_file}: inside {run_dir / 'cache'}")
    assert cache_file.read_bytes() == b"\1\0\0\0" * 8
    for output, kind in ((run_dir / "cache" / "dev" / "index.json", "picture"),
                         (run_dir / "tokenizer" / "joint.png", "picture"),
                         (run_dir / "checkpoints" / "curves.png", "picture"),
                         (run_dir / "checkpoints" / "sub" / "avg.pt", "checkpoint"),
                         (run_dir / "checkpoints" / "step_0000200.pt", "checkpoint")):
        with pytest.raises(MtError, match="inside"):
            check_output("--output", output, run_dir, kind)
    check_output("--output", run_dir / "checkpoints" / "averaged_last3.pt", run_dir, "checkpoint")  # mt average's own


def test_an_output_inside_another_run_dir_is_refused_there_too(run_dir, tmp_path):
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / ".mt-run").write_text("", encoding="utf-8")
    for name in ("best.pt", "averaged.pt"):  # run b's own checkpoints, not run_dir's to add to
        with pytest.raises(MtError, match="must not overwrite|inside .*other/checkpoints"):
            check_output("--output", other / "checkpoints" / name, run_dir, "checkpoint")
    with pytest.raises(MtError, match="must not overwrite"):
        check_output("--output", other / "metrics.jsonl", run_dir, "picture")
    check_output("--output", other / "curves.png", run_dir, "picture")  # beside its records is fine


def test_a_link_to_a_folder_that_does_not_exist_is_refused_before_the_work(run_dir, tmp_path):
    link = tmp_path / "curves.png"
    link.symlink_to(tmp_path / "gone" / "curves.png")
    with pytest.raises(MtError, match="a symlink to .*gone/curves.png, whose folder does not exist"):
        check_output("--output", link, run_dir, "picture")


def test_an_existing_file_mt_did_not_make_is_not_overwritten(run_dir, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text("run_dir: runs/base\n", encoding="utf-8")
    result = run_mt("plot", "--run-dir", str(run_dir), "--output", str(config), check=False)
    assert result.returncode == 1
    line = error_line(result)
    assert f"--output {config}: a file mt did not make" in line and "toy.2.yaml" in line
    assert config.read_text(encoding="utf-8") == "run_dir: runs/base\n"
    (tmp_path / "old.png").write_bytes(PNG)
    check_output("--output", tmp_path / "old.png", run_dir, "picture")  # an earlier picture: replaced
    with pytest.raises(MtError, match="not an mt checkpoint"):
        check_output("--output", tmp_path / "toy.yaml", run_dir, "checkpoint")

    src = tmp_path / "test.de"
    src.write_text("Ein Hund.\nEine Katze.\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("A dog.\nA cat.\n", encoding="utf-8")  # an earlier mt eval of it
    check_output("--output", tmp_path / "hyp.txt", run_dir, "hypotheses", [src])
    (tmp_path / "notes.txt").write_text("three\nlines\nhere\n", encoding="utf-8")
    with pytest.raises(MtError, match="not hypotheses of this source"):
        check_output("--output", tmp_path / "notes.txt", run_dir, "hypotheses", [src])


def test_attention_does_not_overwrite_a_picture_folder_of_the_users(run_dir, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "0001.png").write_text("my own picture\n", encoding="utf-8")
    result = run_mt("attention", "--run-dir", str(run_dir), "--output", str(pics), "--text", "lodu ridu",
                    check=False)
    assert result.returncode == 1 and f"{pics / '0001.png'} is there and mt did not make it" in error_line(result)
    assert (pics / "0001.png").read_text(encoding="utf-8") == "my own picture\n"


def test_eval_output_is_checked_before_anything_is_translated(run_dir, tmp_path):
    src, ref = tmp_path / "test.de", tmp_path / "test.en"
    src.write_text("Ein Hund.\n", encoding="utf-8")
    ref.write_text("A dog.\n", encoding="utf-8")
    (tmp_path / "outdir").mkdir()
    result = run_mt("eval", "--run-dir", str(run_dir), "--src", str(src), "--ref", str(ref),
                    "--output", str(tmp_path / "outdir"), check=False)
    assert result.returncode == 1  # this run has no model: the output was checked before loading one
    assert error_line(result) == f"--output {tmp_path / 'outdir'}: a directory; give a file name"
