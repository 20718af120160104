"""The first steps' speed predicts a CPU run's length: hours away is said once, with what to use instead."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import make_toy_data, toy_config
from mt.config import load_config
from mt.meter import warn_if_slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")


def warning_for(caplog, config: str | Path, *overrides: str, device=CPU, planned=4000, step=10,
                seconds_per_step=40.0) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mt.meter"):
        warn_if_slow(load_config(CONFIGS / config, list(overrides)), device, planned, step, seconds_per_step)
    return "\n".join(record.getMessage() for record in caplog.records)


def test_the_gpu_sized_multi30k_model_on_a_cpu_points_to_the_cpu_config(caplog):
    message = warning_for(caplog, "multi30k_de_en.yaml")
    assert "about 44.3 hours away" in message and "3990 steps to go" in message
    assert "configs/multi30k_de_en_cpu.yaml is sized for a CPU" in message


def test_another_multi30k_pair_is_told_what_to_change_in_the_cpu_config(caplog):
    message = warning_for(caplog, "multi30k_fr_cs.yaml")
    assert "configs/multi30k_de_en_cpu.yaml" in message and "data.src_lang" in message and "fr, cs" in message


def test_own_data_is_told_to_shrink_the_model_or_cap_the_time(caplog, tmp_path):
    data = make_toy_data(tmp_path / "data", train=20, dev=5, test=5)
    message = warning_for(caplog, toy_config(tmp_path / "own.yaml", data, tmp_path / "run"))
    assert "hours away" in message and "--set training.max_minutes=60" in message


@pytest.mark.parametrize("case", ["an hour at most", "capped by max_minutes", "on a GPU", "no step limit"])
def test_no_warning_when_the_stop_is_within_the_hour_or_not_a_cpu(caplog, case):
    kwargs = {"an hour at most": {"seconds_per_step": 0.9},
              "capped by max_minutes": {},
              "on a GPU": {"device": torch.device("cuda")},
              "no step limit": {"planned": None}}[case]
    overrides = ["training.max_minutes=60"] if case == "capped by max_minutes" else []
    assert warning_for(caplog, "multi30k_de_en.yaml", *overrides, **kwargs) == ""
