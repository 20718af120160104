"""`mt train`: a model that learns, checkpoints that resume exactly, and files that survive failure."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_toy_data, run_mt, toy_config
from mt.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from mt.errors import MtError
from mt.files import read_lines, write_text
from mt.translate import translate_lines

TINY = {"model__d_model": 32, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
        "model__ff_dim": 64, "model__dropout": 0.1, "training__validate_every": 10, "training__save_every": 10,
        "training__log_every": 5, "training__keep_checkpoints": 10, "decoding__batch_tokens": 2000}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("small") / "data", train=600, dev=40, test=20)


def parameters(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_toy_config_learns_the_task(toy_run):
    """The shipped toy config reaches >= 90% exact match (greedy) on its dev set."""
    loaded = load_for_inference(toy_run / "run", "best", "cpu")
    sources, refs = read_lines(toy_run / "data/dev.src"), read_lines(toy_run / "data/dev.trg")
    hyps = translate_lines(loaded, sources, beam=1)
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    assert exact >= 0.9, f"exact match {exact:.2f}"
    metrics = [json.loads(line) for line in (toy_run / "run/metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0] / 5  # and the training loss fell on the way there


def test_resume_continues_exactly(tmp_path, small_data):
    """30 steps straight == 15 steps, stop, 15 more (dropout on: RNG and data position restored)."""
    straight = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "a", training__max_steps=30, **TINY)
    run_mt("train", "--config", str(straight))
    first = toy_config(tmp_path / "b.yaml", small_data, tmp_path / "b", training__max_steps=15, **TINY)
    run_mt("train", "--config", str(first))
    assert len(list((tmp_path / "b/cache/plan").glob("*.order.npy"))) == 1  # the resumed run maps the batches saved
    second = toy_config(tmp_path / "b.yaml", small_data, tmp_path / "b", training__max_steps=30, **TINY)
    resumed = run_mt("train", "--config", str(second))
    assert "resuming" in resumed.stderr
    # stderr is not a terminal here: no bar redrawn with carriage returns, one plain line per log_every
    assert "\r" not in resumed.stderr
    assert any(line.startswith("step ") and " loss " in line for line in resumed.stderr.splitlines())
    a = parameters(tmp_path / "a/checkpoints/step_0000030.pt")
    b = parameters(tmp_path / "b/checkpoints/step_0000030.pt")
    assert max_difference(a, b) <= 1e-6


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path, small_data):
    steps = 150
    straight = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "a", training__max_steps=steps, **TINY)
    run_mt("train", "--config", str(straight))
    config = toy_config(tmp_path / "b.yaml", small_data, tmp_path / "b", training__max_steps=steps, **TINY)
    process = subprocess.Popen([sys.executable, "-m", "mt", "train", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "b/metrics.jsonl"
    while process.poll() is None and not (metrics.is_file() and "loss" in metrics.read_text()):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, stderr  # saved, not finished: 143, as a shell reports it
    assert "SIGTERM: saved step" in stderr
    assert any(line.startswith("SIGTERM: finishing step ") for line in stderr.splitlines())  # said at once
    stopped_at = int(stderr.split("SIGTERM: saved step ")[1].split(";")[0])
    assert 0 < stopped_at < steps
    assert (tmp_path / f"b/checkpoints/step_{stopped_at:07d}.pt").is_file()
    run_mt("train", "--config", str(config))
    a = parameters(tmp_path / f"a/checkpoints/step_{steps:07d}.pt")
    b = parameters(tmp_path / f"b/checkpoints/step_{steps:07d}.pt")
    assert max_difference(a, b) <= 1e-6


def test_writing_over_a_folder_is_an_error_naming_it_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MtError, match=f"^{tmp_path / 'out'}: cannot write: Is a directory"):
        write_text(tmp_path / "out", "text\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_run_dir_of_another_model_config_is_refused(tmp_path, small_data):
    first = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=5, **TINY)
    run_mt("train", "--config", str(first))
    other = toy_config(tmp_path / "b.yaml", small_data, tmp_path / "run", training__max_steps=5,
                       **{**TINY, "model__d_model": 48})
    result = run_mt("train", "--config", str(other), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "model" in result.stderr and "--restart" in result.stderr
    assert load_checkpoint(tmp_path / "run/checkpoints/step_0000005.pt")["config"]["model"]["d_model"] == 32


def test_prepare_refuses_to_retokenize_a_trained_run(tmp_path, small_data):
    """A new tokenizer would orphan the run's checkpoints: prepare refuses as train does."""
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=2, **TINY)
    run_mt("train", "--config", str(config))
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())}
    result = run_mt("prepare", "--config", str(config), "--set", "tokenizer.vocab_size=60", check=False)
    assert result.returncode != 0 and "another tokenizer config" in result.stderr, result.stderr[-2000:]
    assert "(tokenizer.vocab_size differs)" in result.stderr and "--restart" not in result.stderr  # prepare has none
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())} == before
    run_mt("translate", "--run-dir", str(tmp_path / "run"), input="x\n")  # its checkpoints still load


def test_a_run_holding_only_best_pt_keeps_its_tokenizer_too(tmp_path, small_data):
    """Step checkpoints deleted to save disk: best.pt still ties the run's tokenizer."""
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=2,
                        **{**TINY, "training__validate_every": 2})
    run_mt("train", "--config", str(config))
    for step in (tmp_path / "run/checkpoints").glob("step_*.pt"):
        step.unlink()
    assert (tmp_path / "run/checkpoints/best.pt").is_file()
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())}
    for change in (["--force"], ["--set", "tokenizer.vocab_size=60"]):
        result = run_mt("prepare", "--config", str(config), *change, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())} == before
    run_mt("translate", "--run-dir", str(tmp_path / "run"), input="x\n")


def test_a_trained_run_that_lost_its_records_is_not_prepared_over(tmp_path, small_data):
    """config.yaml lost: written again. manifest.json lost: refused, since preparing afresh would
    train a new tokenizer over the one the checkpoints need."""
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=2, **TINY)
    run_mt("train", "--config", str(config))
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())}
    (tmp_path / "run/config.yaml").unlink()
    run_mt("prepare", "--config", str(config))
    assert (tmp_path / "run/config.yaml").is_file()
    (tmp_path / "run/manifest.json").unlink()
    result = run_mt("prepare", "--config", str(config), check=False)
    assert result.returncode == 1 and "manifest.json is missing" in result.stderr, result.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "run/tokenizer").iterdir())} == before


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_an_error(tmp_path, small_data):
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=2, **TINY)
    run_mt("train", "--config", str(config))
    state = load_checkpoint(tmp_path / "run/checkpoints/step_0000002.pt")
    state["model"].pop(next(iter(state["model"])))
    save_checkpoint(tmp_path / "edited.pt", state)
    result = run_mt("translate", "--run-dir", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "edited.pt"),
                    input="x\n", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {tmp_path / 'edited.pt'}: its weights do not fit the model" in result.stderr


def test_a_loss_that_turns_nan_stops_training_with_the_last_good_checkpoint(tmp_path, small_data):
    """A huge learning rate blows the weights up; updates with a non-finite loss are skipped
    and counted, and after training.max_bad_steps in a row training stops with a clear message."""
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=200,
                        training__lr=1e12, training__warmup_steps=1, training__clip_norm=0.0,
                        training__max_bad_steps=3, training__save_every=1, **{k: v for k, v in TINY.items()
                                                                               if k != "training__save_every"})
    result = run_mt("train", "--config", str(config), check=False)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "NaN or inf" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("not finite; update skipped") >= 3
    saved = sorted((tmp_path / "run/checkpoints").glob("step_*.pt"))
    assert saved  # the steps before the blow-up are kept, and load
    assert all(torch.isfinite(t).all() for t in parameters(saved[-1]).values() if t.is_floating_point())


def test_a_checkpoint_of_another_vocabulary_is_refused(tmp_path, small_data):
    first = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "a", training__max_steps=2, **TINY)
    run_mt("train", "--config", str(first))
    other = toy_config(tmp_path / "b.yaml", small_data, tmp_path / "b", training__max_steps=2,
                       tokenizer__vocab_size=60, **TINY)
    run_mt("train", "--config", str(other))
    result = run_mt("translate", "--run-dir", str(tmp_path / "b"), "--checkpoint",
                    str(tmp_path / "a/checkpoints/step_0000002.pt"), input="kalo\n", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "another tokenizer/vocabulary" in result.stderr and "step_0000002.pt" in result.stderr


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc and RLIMIT_AS")
def test_a_batch_that_does_not_fit_in_memory_is_skipped_and_training_goes_on(tmp_path):
    """A real allocation failure. The process's address space is capped 500 MB above what it
    uses once everything is imported (a normal toy run grows by about 50 MB). One training pair
    of 12,000 words makes a batch of 16,383 subwords whose attention weights alone take 2 GB
    (attention dropout keeps PyTorch on the attention path that materialises them). That
    batch is skipped with a warning, and training reaches max_steps."""
    data = make_toy_data(tmp_path / "data", train=300, dev=20, test=10)
    giant = " ".join(read_lines(data / "train.src")[0].split()[:1] * 12_000)
    for side in ("src", "trg"):
        with open(data / f"train.{side}", "a", encoding="utf-8") as f:
            f.write(giant + "\n")
    steps = 12
    config = toy_config(tmp_path / "c.yaml", data, tmp_path / "run", **{
        **TINY, "training__max_steps": steps, "training__batch_tokens": 512, "data__filter": {"max_words": 0},
        "model__max_len": 16_384, "model__attention_dropout": 0.1})
    run_mt("prepare", "--config", str(config))
    def train_capped(*args: str) -> subprocess.CompletedProcess:
        capped = f"""
import re, resource, sys
import torch
torch.set_num_threads(1)
import torch._dynamo  # imported lazily by the optimizer: tens of MB
import mt.cli, mt.train, mt.translate, mt.evaluate, sacrebleu, sentencepiece, tqdm
used = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + 500 * 2**20, resource.RLIM_INFINITY))
sys.argv = ["mt", "train", "--config", {str(config)!r}, "--device", "cpu", *{list(args)!r}]
mt.cli.main()
"""
        # one malloc arena: glibc would otherwise reserve 64 MB of address space per thread
        env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", capped], capture_output=True, text=True, env=env)

    result = train_capped()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert re.search(r"step \d+: a batch did not fit in cpu memory; skipped it", result.stderr), result.stderr[-3000:]
    assert (tmp_path / f"run/checkpoints/step_{steps:07d}.pt").is_file()
    # a batch size that never fits would skip forever: training.max_bad_steps in a row stop it
    result = train_capped("--restart", "--set", "training.max_bad_steps=1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "1 updates in a row did not fit in cpu memory" in result.stderr, result.stderr[-3000:]
    # the steps done before it are saved, and the next run continues from them
    stopped_at = int(re.search(r"memory \(training.max_bad_steps\); step (\d+) is saved", result.stderr).group(1))
    assert (tmp_path / f"run/checkpoints/step_{stopped_at:07d}.pt").is_file()
    result = train_capped()
    assert result.returncode == 0 and f"step {stopped_at}," in result.stderr and "resuming" in result.stderr
    assert (tmp_path / f"run/checkpoints/step_{steps:07d}.pt").is_file()


def test_the_progress_bar_counts_to_the_max_epochs_stop(tmp_path, small_data):
    """With only training.max_epochs set, the bar's total (and so its ETA) is that stop's step."""
    config = toy_config(tmp_path / "a.yaml", small_data, tmp_path / "run", training__max_steps=0,
                        training__max_epochs=2, **TINY)
    result = run_mt("train", "--config", str(config))
    per_epoch = int(re.search(r"(\d+) batches per epoch", result.stderr).group(1))
    # stderr is not a terminal here: plain progress lines, "step N/TOTAL ..."
    assert re.search(rf"^step \d+/{2 * per_epoch} ", result.stderr, re.M), result.stderr
    assert (tmp_path / f"run/checkpoints/step_{2 * per_epoch:07d}.pt").is_file()


def test_a_changed_early_stopping_metric_starts_its_comparison_afresh(tmp_path, small_data):
    """A best BLEU is no bar for a loss: resumed with another training.early_stopping.metric, the
    comparison starts afresh with a note, and best.pt is replaced at the next validation (not
    every validation "worse" than a number of another kind, an early stop, a stale best.pt)."""
    def train(metric: str, steps: int, patience: int = 2) -> str:
        config = toy_config(tmp_path / f"{metric}.yaml", small_data, tmp_path / "run", training__max_steps=steps,
                            training__early_stopping={"metric": metric, "patience": patience}, **TINY)
        return run_mt("train", "--config", str(config)).stderr

    train("bleu", 20, patience=0)
    newest = tmp_path / "run/checkpoints/step_0000020.pt"
    old = load_checkpoint(newest)  # as an older mt wrote it: which metric is only in its config
    old["state"].pop("best_metric", None)
    save_checkpoint(newest, old)
    stderr = train("loss", 30)
    assert "training.early_stopping.metric changed from bleu to loss: the best so far and the patience count " \
           "start afresh" in stderr
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert best["step"] > 20 and best["state"]["best_metric"] == "loss"
    assert "training.early_stopping.metric changed from loss to bleu" in train("bleu", 40)
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert best["step"] > 30 and best["state"]["best_metric"] == "bleu"


def test_a_cpu_run_hours_from_its_stop_says_so_once(tmp_path, small_data):
    config = toy_config(tmp_path / "slow.yaml", small_data, tmp_path / "slow", training__max_steps=10**9, **TINY)
    process = subprocess.Popen([sys.executable, "-m", "mt", "train", "--config", str(config), "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # read until the estimate appears, or 30 steps passed without it
        lines.append(line)
        if "hours away" in line or line.startswith("step 30/"):
            break
    process.send_signal(signal.SIGTERM)
    process.communicate()
    [warning] = [line for line in lines if "hours away" in line]
    assert "configs/multi30k_de_en_cpu.yaml" in warning


def test_validation_lines_go_to_stderr_and_train_log_and_stdout_holds_only_the_scores(tmp_path, small_data):
    config = toy_config(tmp_path / "v.yaml", small_data, tmp_path / "run", training__max_steps=10, **TINY)
    result = run_mt("train", "--config", str(config))
    assert re.search(r"^step 10: dev loss [\d.]+, ppl [\d.]+, BLEU [\d.]+", result.stderr, re.M), result.stderr
    assert "step 10: dev loss" in (tmp_path / "run/train.log").read_text(encoding="utf-8")
    assert "dev loss" not in result.stdout
    assert result.stdout.splitlines()[0].split() == ["test", "set", "lines", "BLEU", "chrF"]
