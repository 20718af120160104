"""config.py, as the user meets it through `mt prepare`: every mistake in a config file or a
--set override is one line naming the file, line, key and what was expected; exit code 2."""

from __future__ import annotations

import re

import pytest

from conftest import error_line
from mt.config import load_config


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
    ("vocab_size: 60", "vocab_size: 8", "6: tokenizer.vocab_size: expected an integer >= 16, got 8"),
    ("lr: 5e-4", "lr: fast", "8: training.lr: expected a number, got 'fast'"),
    ("lr: 5e-4", "lr: 0", "8: training.lr: expected a number > 0, got 0.0"),
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

