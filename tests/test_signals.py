"""Ctrl-C and SIGTERM while training (issue 16): honoured at any point, a long validation
included, and a second signal exits as the first would have."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import make_toy_data, run_mt, toy_config
from mt.checkpoint import load_checkpoint

TINY = {"model__d_model": 32, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
        "model__ff_dim": 64, "training__log_every": 5, "decoding__batch_tokens": 2000}


def train_signalled(config: Path, when: str, signals: list[signal.Signals], then: str = "") -> tuple[int, str]:
    """`mt train`, sent `signals[0]` as soon as a line of its stderr holds `when`, and the rest
    (if any) as soon as one holds `then`; returns its exit status and stderr."""
    process = subprocess.Popen([sys.executable, "-m", "mt", "train", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, waiting_for = [], when
    for line in process.stderr:  # no time limit: a busy machine may be slow
        lines.append(line)
        if waiting_for and waiting_for in line:
            process.send_signal(signals.pop(0))
            waiting_for = then if signals else None
    return process.wait(), "".join(lines)


def validation_rows(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return [row for row in rows if "dev_loss" in row]


def test_sigterm_during_a_long_validation_abandons_it_and_saves_the_step(tmp_path):
    """2,000 dev sentences validate for seconds; the stop is honoured between two batches, the
    step saved without a row for the abandoned validation, which the resumed run does first."""
    data = make_toy_data(tmp_path / "data", train=600, dev=2000, test=20)
    # 4 batches an epoch: step 3's validation is the first
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=3,
                        training__validate_every=3, training__save_every=1000, **TINY)
    status, stderr = train_signalled(config, "step 3: validating on 2000 dev sentences", [signal.SIGTERM])
    assert status == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: abandoning the validation of step 3, then saving" in stderr
    assert "SIGTERM: saved step 3;" in stderr
    assert "Traceback" not in stderr
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step_0000003.pt"]
    assert load_checkpoint(tmp_path / "run/checkpoints/step_0000003.pt")["state"]["validation_due"] is True
    assert validation_rows(tmp_path / "run") == []
    resumed = run_mt("train", "--config", str(config))  # training is done: validates step 3, scores the tests
    assert "step 3: validating" in resumed.stderr.split("resuming")[1]
    assert [row["step"] for row in validation_rows(tmp_path / "run")] == [3]
    assert load_checkpoint(tmp_path / "run/checkpoints/best.pt")["step"] == 3
    # recorded as done: a later `mt train` does not validate step 3 (and rewrite best.pt) again
    assert load_checkpoint(tmp_path / "run/checkpoints/step_0000003.pt")["state"]["validation_due"] is False
    assert "validating" not in run_mt("train", "--config", str(config)).stderr


def test_a_second_sigterm_stops_at_once_without_saving_and_exits_143(tmp_path):
    """Each update here runs 200 batches (seconds), so the second SIGTERM, sent once the first
    is acknowledged, lands while the first still waits for the update to end."""
    data = make_toy_data(tmp_path / "data", train=600, dev=20, test=20)
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=5,
                        training__update_freq=200, **TINY)
    status, stderr = train_signalled(config, "training on cpu", [signal.SIGTERM, signal.SIGTERM],
                                     then="SIGTERM: finishing step 1")
    assert status == 128 + signal.SIGTERM, stderr
    assert "SIGTERM again: stopped without saving step 0 (no checkpoint saved yet)" in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert not list((tmp_path / "run/checkpoints").glob("*.pt"))
