"""A run dir that cannot be corrupted (issue 16): one writer at a time, only in folders mt made,
its tokenizer tied to its weights, no output option that overwrites an input or a run's records,
nothing half-written left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import error_line, run_mt, toy_config

HOLDER = """
import sys
from pathlib import Path
from mt.lock import hold
with hold(Path(sys.argv[1]), "mt train --config holder.yaml"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def holder(toy):
    """Another process holding the lock of the toy run dir until the test ends."""
    lock = toy.run_dir / ".mt-lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout.readline().strip() == "held"
    yield process
    process.stdin.close()
    process.wait()


def give_newest_checkpoint_another_tokenizer(run_dir: Path) -> Path:
    """Edit the run's newest step checkpoint to say another tokenizer trained it; return its path."""
    import torch

    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(newest, weights_only=False)
    state["tokenizer"] = {**state["tokenizer"], "models": {"joint.model": "0" * 64}}
    torch.save(state, newest)
    return newest


def test_a_second_train_on_a_held_run_dir_is_refused_naming_the_holder(toy, holder):
    result = toy.mt("train")
    assert result.returncode == 1
    line = error_line(result)
    assert f"pid {holder.pid}" in line and "`mt train --config holder.yaml`" in line
    assert not (toy.run_dir / "manifest.json").exists()  # refused before preparing anything


def test_prepare_on_a_held_run_dir_is_refused_too(toy, holder):
    result = toy.mt("prepare")
    assert result.returncode == 1 and f"pid {holder.pid}" in error_line(result)


def test_restart_on_a_folder_mt_did_not_make_deletes_nothing(toy):
    toy.run_dir.mkdir()
    (toy.run_dir / "thesis.tex").write_text("years of work\n", encoding="utf-8")
    (toy.run_dir / "metrics.jsonl").write_text("{\"mine\": 1}\n", encoding="utf-8")
    result = toy.mt("train", "--restart")
    assert result.returncode == 1
    line = error_line(result)
    assert str(toy.run_dir) in line and "mt did not make" in line
    assert sorted(p.name for p in toy.run_dir.iterdir()) == ["metrics.jsonl", "thesis.tex"]


def test_a_run_dir_mt_made_carries_the_marker_and_an_older_run_is_adopted(toy, caplog):
    from mt import rundir

    assert toy.mt("prepare").returncode == 0
    assert (toy.run_dir / ".mt-run").is_file()
    (toy.run_dir / ".mt-run").unlink()  # now it looks like a run dir of an older mt: prepared, no marker
    rundir.check_ours(toy.run_dir)
    with caplog.at_level("INFO", logger="mt.rundir"):
        rundir.claim(toy.run_dir)
    assert "a run dir of an older mt" in caplog.text and (toy.run_dir / ".mt-run").is_file()


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_writer(toy):
    assert toy.mt("prepare").returncode == 0
    (toy.run_dir / "checkpoints").mkdir()
    left = [toy.run_dir / "checkpoints" / ".step_0000010.pt.k3j_9x2a.tmp", toy.run_dir / ".manifest.json.a1b2c3d4.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    mine = toy.run_dir / ".notes.tmp"  # not a name atomic_write makes: kept
    mine.write_text("mine\n", encoding="utf-8")
    result = toy.mt("prepare")
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in left) and mine.is_file()
    assert "removed 2 temporary file(s)" in result.stderr


def test_restart_clears_a_symlinked_checkpoints_folder_and_keeps_the_link(tmp_path):
    from mt import rundir

    run_dir, elsewhere = tmp_path / "run", tmp_path / "scratch" / "ckpts"
    run_dir.mkdir()
    elsewhere.mkdir(parents=True)
    (run_dir / "checkpoints").symlink_to(elsewhere)
    for name in ("step_0000100.pt", "best.pt", "averaged.pt", ".step_0000200.pt.abcd1234.tmp"):
        (elsewhere / name).write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text("{\"step\": 100}\n", encoding="utf-8")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "test.best.beam5.txt").write_text("a hypothesis\n", encoding="utf-8")
    rundir.clear_training(run_dir)
    assert (run_dir / "checkpoints").is_symlink() and list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]


def test_restart_that_cannot_remove_the_old_run_stops_before_training(toy):
    assert toy.mt("prepare").returncode == 0
    (toy.run_dir / "checkpoints").symlink_to(toy.folder / "unmounted-disk")  # a link to nowhere
    (toy.run_dir / "metrics.jsonl").write_text("{\"step\": 100}\n", encoding="utf-8")
    result = toy.mt("train", "--restart")
    assert result.returncode == 1
    line = error_line(result)
    assert "--restart: cannot remove" in line and "checkpoints" in line


def test_eval_output_onto_its_own_source_or_reference_is_refused(tmp_path):
    src = tmp_path / "test.de"
    ref = tmp_path / "test.en"
    src.write_text("Der Hund sieht das Boot.\n", encoding="utf-8")
    ref.write_text("The dog sees the boat.\n", encoding="utf-8")
    for target, onto in ((tmp_path / "sub" / ".." / "test.de", src), (ref, ref)):
        result = run_mt("eval", "--run-dir", str(tmp_path / "run"), "--src", str(src), "--ref", str(ref),
                        "--output", str(target), check=False)
        assert result.returncode == 1 and f"that is {onto}" in error_line(result)
    assert src.read_text(encoding="utf-8") == "Der Hund sieht das Boot.\n"
    assert ref.read_text(encoding="utf-8") == "The dog sees the boat.\n"


def test_plot_output_onto_metrics_and_average_output_onto_a_checkpoint_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{\"step\": 1, \"loss\": 2.0}\n", encoding="utf-8")
    step = run_dir / "checkpoints" / "step_0000001.pt"
    step.write_bytes(b"weights")
    (tmp_path / "linked.pt").hardlink_to(step)  # another name of the same file
    result = run_mt("plot", "--run-dir", str(run_dir), "--output", str(run_dir / "metrics.jsonl"), check=False)
    assert result.returncode == 1 and "metrics.jsonl, which this command must not overwrite" in error_line(result)
    for output in (step, tmp_path / "linked.pt", run_dir / "checkpoints" / "best.pt"):
        result = run_mt("average", "--run-dir", str(run_dir), "--output", str(output), check=False)
        assert result.returncode == 1 and "must not overwrite" in error_line(result)
    assert step.read_bytes() == b"weights" and not (run_dir / "checkpoints" / "best.pt").exists()


def test_a_test_set_named_with_dots_cannot_write_outside_the_run_dir(tmp_path):
    from mt import rundir
    from mt.errors import MtError

    with pytest.raises(MtError, match="not a plain name"):
        rundir.eval_output(tmp_path / "run", "../../x", Path("best.pt"), 5)
    assert rundir.eval_output(tmp_path / "run", "newstest2014", Path("best.pt"), 5).parent == tmp_path / "run" / "eval"


ROWS = "{\"step\": 10, \"loss\": 3.0}\n{\"step\": 20, \"loss\": 2.5}\n"


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_and_repaired_on_resume(tmp_path, caplog):
    from mt import rundir

    (tmp_path / "metrics.jsonl").write_text(ROWS + "{\"step\": 30, \"lo", encoding="utf-8")
    with caplog.at_level("INFO", logger="mt.rundir"):
        rows = rundir.read_metrics(tmp_path, repair=True)
    assert [row["step"] for row in rows] == [10, 20]
    assert "metrics.jsonl:3: dropped a last line cut short" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text(encoding="utf-8") == ROWS


def test_a_foreign_row_in_metrics_is_an_error_naming_file_and_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for bad in ("not json at all", "[1, 2, 3]"):
        lines = ROWS.splitlines()
        (run_dir / "metrics.jsonl").write_text(f"{lines[0]}\n{bad}\n{lines[1]}\n", encoding="utf-8")
        result = run_mt("plot", "--run-dir", str(run_dir), check=False)
        assert result.returncode == 1
        assert error_line(result).startswith(f"{run_dir / 'metrics.jsonl'}:2: not a JSON object")


def test_average_refuses_checkpoints_of_another_tokenizer_naming_them(toy_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(toy_run / "run", run_dir)
    newest = give_newest_checkpoint_another_tokenizer(run_dir)
    result = run_mt("average", "--run-dir", str(run_dir), "--last", "2", check=False)
    assert result.returncode == 1
    assert f"{newest.name} were trained with another tokenizer" in error_line(result)
    assert not (run_dir / "checkpoints" / "averaged.pt").exists()


def test_restart_removes_only_what_mt_made_in_checkpoints_and_eval_and_names_the_rest(tmp_path, caplog):
    from mt import rundir

    run_dir, shared = tmp_path / "run", tmp_path / "big-disk" / "ckpts"
    (run_dir / "eval").mkdir(parents=True)
    (shared / "other_run").mkdir(parents=True)
    (shared / "other_run" / "best.pt").write_bytes(b"another run's weights")
    (shared / "precious.txt").write_text("my notes\n", encoding="utf-8")
    for name in ("step_0000100.pt", "best.pt", "averaged.pt", ".best.pt.abcd1234.tmp"):
        (shared / name).write_bytes(b"weights")
    (run_dir / "checkpoints").symlink_to(shared)
    (run_dir / "eval" / "test.best.beam5.txt").write_text("a hypothesis\n", encoding="utf-8")
    (run_dir / "eval" / "my_analysis.ods").write_bytes(b"spreadsheet")
    with caplog.at_level("INFO"):
        rundir.clear_training(run_dir)
    assert (run_dir / "checkpoints").is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == ["other_run", "precious.txt"]
    assert (shared / "other_run" / "best.pt").read_bytes() == b"another run's weights"
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == ["my_analysis.ods"]
    assert "other_run" in caplog.text and "precious.txt" in caplog.text and "my_analysis.ods" in caplog.text

    plain = tmp_path / "plain"
    (plain / "checkpoints" / "my_export").mkdir(parents=True)
    (plain / "checkpoints" / "notes.txt").write_text("notes\n", encoding="utf-8")
    (plain / "checkpoints" / "step_0000002.pt").write_bytes(b"weights")
    rundir.clear_training(plain)
    assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == ["my_export", "notes.txt"]


def test_a_damaged_id_cache_is_encoded_again_with_the_runs_own_tokenizer(toy):
    assert toy.mt("prepare").returncode == 0
    model = toy.run_dir / "tokenizer" / "joint.model"
    before = model.read_bytes()
    tokens = toy.run_dir / "cache" / "train" / "src.tokens"
    tokens.write_bytes(b"hypotheses an --output wrote over the cache\n")
    shutil.rmtree(toy.run_dir / "cache" / "dev")
    from mt.errors import MtError
    from mt.idcache import load_ids

    with pytest.raises(MtError, match="run mt prepare with the run's config: it encodes the cache again"):
        load_ids(tokens.parent)
    result = toy.mt("prepare")  # what the error says to do; --force would retrain the tokenizer
    assert result.returncode == 0, result.stderr
    assert "encoding it again with the run's tokenizer" in result.stderr
    assert model.read_bytes() == before
    assert len(load_ids(tokens.parent).src) == 500 and len(load_ids(toy.run_dir / "cache" / "dev").src) > 0


# ----------------------------------------------------------------------------- the tokenizer belongs to the weights


def trained_copy(toy_run: Path, tmp_path: Path, data_name: str = "data") -> tuple[Path, Path]:
    """A copy of the session's trained toy run, its data in tmp_path/data_name; (config, run_dir)."""
    shutil.copytree(toy_run / "data", tmp_path / data_name)
    shutil.copytree(toy_run / "run", tmp_path / "run")
    return toy_config(tmp_path / "toy.yaml", tmp_path / data_name, tmp_path / "run"), tmp_path / "run"


def made_by_prepare(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """The tokenizer and id cache files: mtime and bytes."""
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.parent.name in ("tokenizer", "train", "dev")]
    assert files
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_training_data_changed_in_place_on_a_trained_run_is_refused(toy_run, tmp_path):
    config, run_dir = trained_copy(toy_run, tmp_path)
    train_src = tmp_path / "data/train.src"
    lines = train_src.read_text(encoding="utf-8").splitlines()
    train_src.write_text("".join(line + "\n" for line in reversed(lines)), encoding="utf-8")  # same size, new content
    before, steps = made_by_prepare(run_dir), sorted((run_dir / "checkpoints").iterdir())
    for command in ("prepare", "train"):
        result = run_mt(command, "--config", str(config), check=False)
        assert result.returncode == 1
        line = error_line(result)
        assert line.startswith(f"data.train.src ({train_src}): content changed"), line
        assert "new folder" in line and "`mt train --restart`" in line
    assert made_by_prepare(run_dir) == before
    assert sorted((run_dir / "checkpoints").iterdir()) == steps
    run_mt("train", "--config", str(config), "--restart", "--set", "training.max_steps=1")  # the way out offered
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["files"]["train"]["src"]["sha256"] == hashlib.sha256(train_src.read_bytes()).hexdigest()
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*.pt")] == ["step_0000001.pt"]


def test_the_same_data_moved_with_a_test_set_added_resumes_and_scores_it(toy_run, tmp_path):
    config, run_dir = trained_copy(toy_run, tmp_path, data_name="moved")
    data = tmp_path / "moved"
    for side in ("src", "trg"):
        lines = (data / f"test.{side}").read_text(encoding="utf-8").splitlines()[:50]
        (data / f"extra.{side}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["test"]["extra"] = {"src": str(data / "extra.src"), "trg": str(data / "extra.trg")}
    config.write_text(yaml.safe_dump(cfg))
    before, steps = made_by_prepare(run_dir), sorted((run_dir / "checkpoints").glob("step_*.pt"))
    result = run_mt("train", "--config", str(config))  # resumes at its last step: only scores the test sets
    assert [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("extra ")] == [["extra", "50"]]
    assert made_by_prepare(run_dir) == before  # tokenizer and id caches untouched: bytes and mtime
    assert sorted((run_dir / "checkpoints").glob("step_*.pt")) == steps
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["files"]["train"]["src"]["path"] == str(data / "train.src")
    assert manifest["files"]["test"]["extra"]["trg"]["path"] == str(data / "extra.trg")
    assert "extra" in yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["test"]


def test_resume_refuses_a_checkpoint_of_another_tokenizer(toy_run, tmp_path):
    config, run_dir = trained_copy(toy_run, tmp_path)
    newest = give_newest_checkpoint_another_tokenizer(run_dir)
    result = run_mt("train", "--config", str(config), "--set", "training.max_steps=900", check=False)
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"{newest}: this checkpoint was trained with another tokenizer") and "--restart" in line
    assert sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1] == newest
