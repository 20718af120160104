"""Loading a config takes bounded time and memory whatever the file holds, and every number has
a finite range: a mistake is one line naming the file, line and key, never a hang or a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mt.config import MAX_DEPTH, load_config
from mt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def toy_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "configs/toy.yaml").read_text(encoding="utf-8")
    assert old in text
    return write(tmp_path, text.replace(old, new))


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    # 780 bytes that expand to 9^8 (43 million) values: PyYAML alone would take minutes and gigabytes
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = write(tmp_path, "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: expands to more than"):
        load_config(path)


@pytest.mark.parametrize("text", ["a: " + "[" * 5000 + "]" * 5000,
                                  "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "x: 1\n"])
def test_a_config_nested_thousands_deep_is_an_error_not_a_recursion_crash(tmp_path, text):
    with pytest.raises(ConfigError, match=rf"c\.yaml:\d+: nested more than {MAX_DEPTH} levels deep"):
        load_config(write(tmp_path, text))


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    with pytest.raises(ConfigError, match="a config is at most"):
        load_config(write(tmp_path, "# " + "x" * 2_000_000 + "\n"))


def test_anchors_and_aliases_of_normal_size_still_work(tmp_path, monkeypatch):
    text = (ROOT / "configs/toy.yaml").read_text(encoding="utf-8")
    text = text.replace("  dev: {src: data/toy/dev.src, trg: data/toy/dev.trg}",
                        "  dev: &dev {src: data/toy/dev.src, trg: data/toy/dev.trg}")
    text = text.replace("    toy_test: {src: data/toy/test.src, trg: data/toy/test.trg}", "    again: *dev")
    path = write(tmp_path, text)
    (tmp_path / "data/toy").mkdir(parents=True)
    for name in ("train", "dev"):
        for side in ("src", "trg"):
            (tmp_path / f"data/toy/{name}.{side}").write_text("a\n")
    monkeypatch.chdir(tmp_path)  # the config's relative paths are read from the current folder
    cfg = load_config(path)
    assert cfg.data.test["again"].src == "data/toy/dev.src"


@pytest.mark.parametrize("old,new,message", [
    ("beam: 1", "beam: 1\n  max_len_a: .inf", "decoding.max_len_a: expected a finite number, got inf"),
    ("beam: 1", "beam: 1\n  max_len_a: 1e9", "decoding.max_len_a: expected a number >= 0 and <= 1000"),
    ("beam: 1", "beam: 1\n  max_len_b: 100000000000000000000", "decoding.max_len_b: expected an integer >= 0"),
    ("lr: 5.0e-3", "lr: .nan", "training.lr: expected a finite number, got nan"),
    ("seed: 1", "seed: 99999999999", "training.seed: expected an integer >= 0 and <= 4294967295"),
    ("seed: 1", "seed: -3", "training.seed: expected an integer >= 0"),
    ("beam: 1", "beam: 100000", "decoding.beam: expected an integer > 0 and <= 1000"),
])
def test_numbers_out_of_a_sensible_range_name_the_key_and_line(tmp_path, old, new, message):
    path = toy_with(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:")
    assert message in str(caught.value)


def test_a_fifo_or_device_as_config_or_data_file_says_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe\.yaml: a named pipe \(FIFO\), not a file"):
        load_config(fifo)  # not opened: reading a FIFO with no writer would hang
    with pytest.raises(ConfigError, match=r"/dev/null: a character device, not a file"):
        load_config("/dev/null")
    path = toy_with(tmp_path, "data/toy/train.src", "/dev/null")
    with pytest.raises(ConfigError, match=r"data\.train\.src: a character device, not a file: /dev/null"):
        load_config(path)
