"""Attention you can see: recorded weights, `mt attention` heatmaps and JSON, `mt plot` curves.

One toy model (the word-mapping task, 200 steps: enough for shapes, not for good translations)
is trained once for this module by the real `mt train`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mt.checkpoint import load_for_inference
from mt.errors import MtError
from mt.plot import (DPI, CheckpointLabel, SentenceAttention, Selection, attention_command, draw_attention,
                     draw_curves, figure_size, plot_curves, save_figure)
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID

from conftest import run_mt

image = pytest.importorskip("matplotlib.image")
PIL_Image = pytest.importorskip("PIL.Image")  # matplotlib needs Pillow: PNG metadata

ROOT = Path(__file__).resolve().parents[1]


def mt(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run_mt(*args, check=False, stdin=stdin, cwd=ROOT)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A run dir with a toy model trained by `mt train` on CPU."""
    tmp = tmp_path_factory.mktemp("toy_attention")
    data = tmp / "data"
    subprocess.run([sys.executable, "scripts/make_toy_task.py", "--out", str(data), "--task", "map",
                    "--train", "2000", "--dev", "50", "--test", "5"], cwd=ROOT, check=True, capture_output=True)
    cfg = yaml.safe_load((ROOT / "configs/toy.yaml").read_text(encoding="utf-8"))
    cfg["run_dir"] = str(tmp / "run")
    cfg["data"].update(train={"src": str(data / "train.src"), "trg": str(data / "train.trg")},
                       dev={"src": str(data / "dev.src"), "trg": str(data / "dev.trg")},
                       test={"toy_test": {"src": str(data / "test.src"), "trg": str(data / "test.trg")}})
    cfg["training"].update(max_steps=200, validate_every=100, save_every=100, log_every=20)
    (tmp / "toy.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = mt("train", "--config", str(tmp / "toy.yaml"), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "run"


@pytest.fixture(scope="session")
def toy_loaded(toy_run):
    return load_for_inference(toy_run, "best", "cpu")


@pytest.fixture(scope="session")
def toy_lines(toy_run) -> list[str]:
    """Three dev sentences of different lengths."""
    lines = (toy_run.parent / "data/dev.src").read_text(encoding="utf-8").splitlines()
    by_length = sorted(lines, key=lambda line: len(line.split()))
    return [by_length[-1], by_length[0], by_length[len(by_length) // 2]]


def padded(rows: list[list[int]]) -> torch.Tensor:
    tensor = torch.full((len(rows), max(map(len, rows))), PAD_ID)
    for k, row in enumerate(rows):
        tensor[k, : len(row)] = torch.tensor(row)
    return tensor


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG that decodes."""
    height, width = image.imread(path).shape[:2]
    return width, height


def expected_size(n_rows: int, n_cols: int, queries: int, keys: int) -> tuple[int, int]:
    width, height = figure_size(n_rows, n_cols, queries, keys)
    return round(width * DPI), round(height * DPI)


def assert_size(path: Path, expected: tuple[int, int]) -> None:
    width, height = png_size(path)
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1, (path, (width, height), expected)


def test_recorded_weights_have_shapes_rows_summing_to_one_and_none_on_padding(toy_loaded, toy_lines):
    tok, m = toy_loaded.tokenizer, toy_loaded.cfg.model
    long, short = toy_lines[0], toy_lines[1]
    src = padded([ids + [EOS_ID] for ids in tok.encode_src([long, short])])  # (2, src_len)
    trg_in = padded([[BOS_ID] + ids for ids in tok.encode_trg([long.upper(), short.upper()])])  # (2, trg_len)
    short_len = len(tok.encode_src([short])[0]) + 1
    assert short_len < src.size(1)
    with torch.inference_mode():
        _, weights = toy_loaded.model.forward_with_attention(src, trg_in)
    src_len, trg_len = src.size(1), trg_in.size(1)
    assert [w.shape for w in weights.encoder] == [(2, m.heads, src_len, src_len)] * m.encoder_layers
    assert [w.shape for w in weights.decoder_self] == [(2, m.heads, trg_len, trg_len)] * m.decoder_layers
    assert [w.shape for w in weights.cross] == [(2, m.heads, trg_len, src_len)] * m.decoder_layers
    for w in weights.encoder + weights.decoder_self + weights.cross:
        torch.testing.assert_close(w.sum(dim=-1), torch.ones(w.shape[:-1]), atol=1e-4, rtol=0)
    for w in weights.encoder + weights.cross:  # the short sentence's padding gets no attention
        assert (w[1, ..., short_len:] == 0).all()
    for w in weights.decoder_self:  # nor does the future
        assert (w.triu(diagonal=1) == 0).all()


def test_attention_writes_one_heatmap_per_line(toy_run, toy_lines, tmp_path):
    result = mt("attention", "--run-dir", str(toy_run), "--output", str(tmp_path / "out"), "--device", "cpu",
                "--json", stdin="".join(line + "\n" for line in toy_lines))
    assert result.returncode == 0, result.stderr
    names = [f"{n:04d}.{ext}" for n in (1, 2, 3) for ext in ("png", "json")]
    assert result.stdout.split() == [str(tmp_path / "out" / name) for name in names]
    for n in (1, 2, 3):
        written = json.loads((tmp_path / "out" / f"{n:04d}.json").read_text(encoding="utf-8"))
        assert written["source"] == toy_lines[n - 1]
        assert written["source_tokens"][-1] == "</s>" and written["target_tokens"][-1] == "</s>"
        queries, keys = len(written["target_tokens"]), len(written["source_tokens"])
        assert_size(tmp_path / "out" / f"{n:04d}.png", expected_size(1, 1, queries, keys))


def test_json_holds_every_layer_and_head_with_rows_summing_to_one(toy_loaded, toy_run, toy_lines, tmp_path):
    [png, path] = attention_command(toy_run, toy_lines[2:], tmp_path, as_json=True, device="cpu")
    written = json.loads(path.read_text(encoding="utf-8"))
    src, out, dec_in = (written[k] for k in ("source_tokens", "target_tokens", "decoder_input_tokens"))
    assert dec_in == ["<s>"] + out[:-1]
    m = toy_loaded.cfg.model
    for kind, layers, queries, keys in (("encoder", m.encoder_layers, src, src),
                                        ("decoder", m.decoder_layers, out, dec_in),
                                        ("cross", m.decoder_layers, out, src)):
        weights = torch.tensor(written["attention"][kind])
        assert weights.shape == (layers, m.heads, len(queries), len(keys)), kind
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1], dtype=weights.dtype),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("options, grid", [
    (["--layer", "all", "--head", "0"], (1, 2)),  # a row of layers
    (["--layer", "all"], (1, 2)),  # the mean of heads, a row of layers
    (["--layer", "all", "--head", "all"], (2, 4)),  # layers down, heads across
    (["--layer", "0", "--head", "-1", "--kind", "encoder"], (1, 1)),
    (["--kind", "decoder", "--head", "all"], (1, 4)),
])
def test_attention_options_choose_layers_heads_and_kind(toy_run, toy_lines, tmp_path, options, grid):
    opts = dict(zip((o.lstrip("-") for o in options[::2]), options[1::2]))
    [png, path] = attention_command(toy_run, toy_lines[1:2], tmp_path, as_json=True, device="cpu", **opts)
    assert png == tmp_path / "0001.png"
    written = json.loads(path.read_text(encoding="utf-8"))
    kind = opts.get("kind", "cross")
    queries = written["source_tokens" if kind == "encoder" else "target_tokens"]
    keys = written["decoder_input_tokens" if kind == "decoder" else "source_tokens"]
    assert_size(png, expected_size(*grid, len(queries), len(keys)))


def test_empty_lines_are_skipped_but_keep_their_number(toy_run, toy_lines, tmp_path):
    written = list(attention_command(toy_run, [toy_lines[1], "  ", toy_lines[2]], tmp_path, device="cpu"))
    assert written == [tmp_path / "0001.png", tmp_path / "0003.png"]


def test_stdin_lines_are_numbered_as_translate_numbers_them(toy_run, toy_lines, tmp_path):
    """Only LF ends a line (a form feed inside one does not), and invalid UTF-8 names its line."""
    stdin = f"{toy_lines[0]}\x0c{toy_lines[1]}\r\n{toy_lines[2]}\n"
    result = mt("attention", "--run-dir", str(toy_run), "--output", str(tmp_path / "a"), stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["0001.png", "0002.png"]
    result = subprocess.run([sys.executable, "-m", "mt", "attention", "--run-dir", str(toy_run),
                             "--output", str(tmp_path / "b")], input=b"dumi\n\xff\n", capture_output=True)
    assert result.returncode == 1 and b"error: stdin:2: invalid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr


def test_labels_draw_umlauts_and_the_word_marker(tmp_path):
    src, out = ["\u2581Mädchen", "\u2581Größe", "n", "</s>"], ["\u2581girl", "\u2581ÄÖÜß", "</s>"]
    sentence = SentenceAttention(1, "Mädchen Größen", "girl ÄÖÜß", src, out, ["<s>"] + out[:-1],
                                 {"cross": torch.full((1, 2, 3, 4), 0.25)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about each glyph its font lacks
        save_figure(draw_attention(sentence, "cross", Selection([0], [None])), tmp_path / "labels.png")
    assert_size(tmp_path / "labels.png", expected_size(1, 1, 3, 4))


@pytest.mark.parametrize("option, value, message", [
    ("layer", "2", "--layer 2: out of range; this model has 2 decoder layers: use 0 to 1, -2 to -1 or 'all'"),
    ("head", "first", "--head first: not a number; this model has 4 heads"),
    ("kind", "self", "--kind self: expected one of cross, encoder, decoder"),
])
def test_bad_options_name_the_option_and_valid_range(toy_run, tmp_path, option, value, message):
    with pytest.raises(MtError, match="^" + re.escape(message)):
        list(attention_command(toy_run, ["kalo"], tmp_path, device="cpu", **{option: value}))


def test_bad_layer_on_the_command_line_is_a_one_line_error(toy_run, tmp_path):
    result = mt("attention", "--run-dir", str(toy_run), "--output", str(tmp_path), "--layer", "-3",
                "--text", "kalo", "--device", "cpu")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --layer -3: out of range")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_plot_draws_curves_of_the_run(toy_run):
    result = mt("plot", "--run-dir", str(toy_run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(toy_run / "curves.png")
    assert png_size(toy_run / "curves.png") == (8 * DPI, 6 * DPI)


def test_plot_marks_the_best_checkpoints_step(toy_run):
    best_step = torch.load(toy_run / "checkpoints/best.pt", weights_only=True)["step"]
    fig = draw_curves(read_toy_metrics(toy_run), best_step, "toy")
    for ax in fig.axes:
        marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [best_step, best_step]]
        assert len(marks) == 1 and marks[0].get_label() == f"best.pt (step {best_step})"
    plot_curves(toy_run, toy_run / "marked.png")
    assert PIL_Image.open(toy_run / "marked.png").text["Title"] == str(toy_run)


def read_toy_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_plot_before_the_first_validation_says_so_and_lists_only_drawn_series():
    rows = [{"step": step, "loss": 9.0 - step} for step in (1, 2, 3)]  # three log rows, no validation
    fig = draw_curves(rows, None, "early")
    loss_ax, bleu_ax = fig.axes
    assert [text.get_text() for text in loss_ax.get_legend().get_texts()] == ["training loss"]
    assert bleu_ax.get_legend() is None and not bleu_ax.get_lines()
    assert [text.get_text() for text in bleu_ax.texts] == ["no validation yet"]
    ticks = [t for t in bleu_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_plot_without_metrics_says_so(tmp_path):
    with pytest.raises(MtError, match="metrics.jsonl: no such file"):
        plot_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(MtError, match="no training or validation rows"):
        plot_curves(tmp_path)


# --------------------------------------------------------------------------- pictures worth keeping


def test_heatmap_and_json_name_the_checkpoint_and_its_step(toy_run, toy_lines, tmp_path):
    best_step = torch.load(toy_run / "checkpoints/best.pt", weights_only=True)["step"]
    for checkpoint, name, step in (("best", "best.pt", best_step), ("last", "step_0000200.pt", 200)):
        [png, path] = attention_command(toy_run, toy_lines[1:2], tmp_path / checkpoint, checkpoint=checkpoint,
                                        as_json=True, device="cpu")
        written = json.loads(path.read_text(encoding="utf-8"))
        assert (written["checkpoint"], written["step"]) == (name, step)
        assert PIL_Image.open(png).text["Title"] == f"line 1: cross attention, {name} (step {step})"


def many_layer_sentence(pieces: int, layers: int = 6, heads: int = 4, spread: float = 0.3) -> SentenceAttention:
    """A made-up sentence for a Multi30k-sized model (6 layers x 4 heads): thinly spread
    self-attention (every weight well below 0.5) and peaked cross-attention."""
    torch.manual_seed(0)
    src = [f"\u2581Wort{k}" for k in range(pieces - 1)] + ["</s>"]
    out = [f"\u2581word{k}" for k in range(pieces - 1)] + ["</s>"]
    return SentenceAttention(1, " ".join(src), " ".join(out), src, out, ["<s>"] + out[:-1], {
        "cross": (torch.randn(layers, heads, pieces, pieces) * 4).softmax(-1),
        "encoder": (torch.randn(layers, heads, pieces, pieces) * spread).softmax(-1)})


def test_all_layers_and_heads_of_a_large_model_fit_a_screen_with_readable_labels(tmp_path):
    sentence = many_layer_sentence(20)
    fig = draw_attention(sentence, "cross", Selection(list(range(6)), list(range(4))), CheckpointLabel("best.pt", 9))
    save_figure(fig, tmp_path / "grid.png")
    width, height = png_size(tmp_path / "grid.png")
    assert width <= 2000 and height <= 2000, (width, height)  # today's 6x4 grid: 1220 x 3880 and more
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(heatmaps) == 24
    labelled = [ax for ax in heatmaps if any(t.get_text() for t in ax.get_yticklabels())]
    assert len(labelled) == 6  # the left column carries the pieces; the others show the same ones
    assert all(t.get_fontsize() >= 6 for ax in labelled for t in ax.get_yticklabels())


def test_each_panel_is_coloured_on_its_own_range_with_its_scale_printed():
    sentence = many_layer_sentence(12, layers=2, heads=2)
    fig = draw_attention(sentence, "encoder", Selection([0, 1], [0, 1]))
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    for ax, (layer, head) in zip(heatmaps, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        top = float(sentence.weights["encoder"][layer, head].max())
        assert top < 0.5  # on a fixed 0..1 scale such a panel would be uniformly dark
        assert ax.images[0].get_clim() == pytest.approx((0.0, top))
        colorbar = ax.images[0].colorbar  # its own bar, so the scale stays printed
        assert colorbar is not None and list(colorbar.get_ticks()) == pytest.approx([0.0, top])


def test_decoder_panels_are_not_darkened_by_the_first_row_that_can_only_see_bos():
    spread = (torch.randn(1, 1, 10, 10) * 0.3).masked_fill(torch.ones(10, 10).triu(1).bool(), -1e9).softmax(-1)
    assert float(spread[0, 0, 0, 0]) == 1.0 and float(spread[0, 0, 1:].max()) < 0.7
    out = [f"\u2581w{k}" for k in range(9)] + ["</s>"]
    sentence = SentenceAttention(1, "x", "y", ["x", "</s>"], out, ["<s>"] + out[:-1], {"decoder": spread})
    fig = draw_attention(sentence, "decoder", Selection([0], [0]))
    [ax] = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert ax.images[0].get_clim() == pytest.approx((0.0, float(spread[0, 0, 1:].max())))

