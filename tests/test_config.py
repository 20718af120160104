"""config.py, as the user meets it through `mt prepare`: every mistake in a config file or a
--set override is one line naming the file, line, key and what was expected; exit code 2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import error_line
from mt.config import load_config
from mt.yaml_bounds import MAX_DEPTH
from mt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_syntax_error_names_file_line_and_column(toy):
    text = toy.config.read_text().replace("trg: ", "trg: [", 1)  # line 3: an unclosed list
    toy.write_config(text)
    result = toy.mt("prepare")
    assert result.returncode == 2
    assert re.fullmatch(rf"{re.escape(str(toy.config))}:\d+:\d+: YAML syntax error: .+", error_line(result))



def test_unknown_key_names_the_dotted_key_and_suggests_the_nearest(toy):
    toy.write_config(toy.config.read_text().replace("vocab_size:", "vocab_siz:"))
    result = toy.mt("prepare")
    assert result.returncode == 2
    assert error_line(result).startswith(f"{toy.config}:6: unknown key 'tokenizer.vocab_siz' "
                                         "(did you mean 'tokenizer.vocab_size'?)")



@pytest.mark.parametrize("old, new, expected", [
    ("vocab_size: 60", "vocab_size: lots", "6: tokenizer.vocab_size: expected an integer, got 'lots'"),
    ("vocab_size: 60", "vocab_size: 8", "6: tokenizer.vocab_size: expected an integer >= 16 and <= 1000000, got 8"),
    ("lr: 5e-4", "lr: fast", "8: training.lr: expected a number, got 'fast'"),
    ("lr: 5e-4", "lr: 0", "8: training.lr: expected a number > 0 and <= 1000000000000.0, got 0.0"),
    ("lr: 5e-4", "lr: 5e-4\n  label_smoothing: 1.5",
     "9: training.label_smoothing: expected a number >= 0 and < 1, got 1.5"),
], ids=["type", "below-minimum", "not-a-number", "not-positive", "over-maximum"])
def test_wrong_type_or_range_names_the_key_and_what_was_expected(toy, old, new, expected):
    toy.write_config(toy.config.read_text().replace(old, new))
    result = toy.mt("prepare")
    assert result.returncode == 2
    assert error_line(result) == f"{toy.config}:{expected}"



def test_missing_data_file_names_the_key_and_the_file(toy):
    toy.dev_trg.unlink()
    result = toy.mt("prepare")
    assert result.returncode == 2
    assert error_line(result) == f"{toy.config}:4: data.dev.trg: no such file: {toy.dev_trg}"
    assert not toy.run_dir.exists()



@pytest.mark.parametrize("override, expected", [
    ("model.d_model=abc", "--set model.d_model: model.d_model: expected an integer, got 'abc'"),
    ("training.lrr=1", "--set training.lrr: unknown key 'training.lrr' (did you mean 'training.lr'?)"),
    ("tokenizer.joint=maybe", "--set tokenizer.joint: tokenizer.joint: expected true or false, got 'maybe'"),
    ("training.lr", "--set 'training.lr': expected key=value"),
])
def test_bad_set_override_is_as_clear_as_a_bad_file(toy, override, expected):
    result = toy.mt("prepare", "--set", override)
    assert result.returncode == 2
    assert error_line(result).startswith(expected)
    assert not toy.run_dir.exists()



@pytest.mark.parametrize("override, expected", [
    ("trainig.lr=1", "--set trainig.lr: unknown key 'trainig' (did you mean 'training'?)"),
    ("data.train.src=", "--set data.train.src: data.train.src: expected a file path, got an empty one"),
    ("run_dir=", "--set run_dir: run_dir: expected a folder path, got an empty one"),
    ("training.max_steps=0", "--set training.max_steps: training.max_steps, max_epochs and max_minutes are all 0"),
], ids=["unknown-section", "empty-path", "empty-run-dir", "no-stop"])
def test_set_mistakes_name_the_set_option(toy, override, expected):
    result = toy.mt("config", "--set", override)
    assert result.returncode == 2
    assert error_line(result).startswith(expected)



def test_a_key_given_twice_is_an_error_not_a_silent_override(toy):
    toy.write_config(toy.config.read_text() + "tokenizer:\n  joint: false\n")  # line 9: tokenizer again
    result = toy.mt("config")
    assert result.returncode == 2
    assert error_line(result) == f"{toy.config}:9: tokenizer: given twice (first on line 5)"



def test_a_config_that_is_not_utf8_is_an_error(toy):
    toy.config.write_bytes(toy.config.read_bytes().replace(b"lr:", b"l\xffr:"))
    result = toy.mt("config")
    assert result.returncode == 2
    assert error_line(result).startswith(f"{toy.config}: not UTF-8 text (byte ")



def test_exponent_without_a_dot_is_a_number(toy):
    # YAML 1.1 reads 5e-4 as a string; the config (line 8) and --set must both take it as 0.0005
    assert load_config(toy.config).training.lr == 5e-4
    assert load_config(toy.config, ["training.lr=3E-3"]).training.lr == 3e-3
    result = toy.mt("prepare", "--set", "training.lr=5e-4")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.0005" in (toy.run_dir / "config.yaml").read_text()


# Loading takes bounded time and memory whatever the file holds; every number has a finite range.


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
