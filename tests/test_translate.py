"""`mt translate` and `mt eval` on the model the toy config trains (search itself: test_search.py)."""

from __future__ import annotations

import io
import json
import re
import select
import subprocess
import sys

import pytest

from conftest import run_mt
from mt.files import read_lines
from mt.translate import read_chunks


@pytest.fixture(scope="module")
def sources(toy_run) -> list[str]:
    return read_lines(toy_run / "data/dev.src")[:40]


def test_every_input_line_gives_one_output_line_in_order(toy_run, sources, tmp_path):
    long_line = " ".join([sources[0]] * 4000)[:100_000]  # 100,000 characters, far past the maximum
    lines = [sources[0], "", "   ", long_line, "a\0b " + sources[1], sources[2], ""]
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), "--device", "cpu",
                    input="\n".join(lines) + "\n")
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == out[2] == out[6] == ""
    single = run_mt("translate", "--run-dir", str(toy_run / "run"), "--device", "cpu", input=sources[2] + "\n")
    assert out[5] == single.stdout.rstrip("\n") != ""
    assert "line 4" in result.stderr and "cut" in result.stderr  # the long line: warned, not dropped
    assert out[3] != ""


def test_a_last_line_without_newline_and_only_empty_lines(toy_run, sources):
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), input=sources[0])
    assert result.stdout.count("\n") == 1
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), input="\n\n\n")
    assert result.stdout == "\n\n\n"


def test_invalid_utf8_names_the_line_after_writing_the_lines_before(toy_run, sources):
    data = (sources[0] + "\n" + sources[1] + "\n").encode() + b"\xff\xfe bad\n" + b"more\n"
    result = subprocess.run([sys.executable, "-m", "mt", "translate", "--run-dir", str(toy_run / "run")],
                            input=data, capture_output=True)
    assert result.returncode != 0
    assert b"stdin:3: invalid UTF-8" in result.stderr and b"Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 2  # the lines before it are written


def test_read_chunks_keeps_every_line_and_bounds_chunk_size(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"line %d\r\n" % i for i in range(5001)) + b"a\rb")  # lone CR: not a line end
    with open(path, "rb") as f:
        chunks = list(read_chunks(f, max_lines=2000))
    with open(path, "rb") as f:
        in_memory = list(read_chunks(io.BytesIO(f.read()), max_lines=2000))
    for found in (chunks, in_memory):
        assert max(len(c) for c in found) <= 2000
        lines = [line for c in found for line in c]
        assert len(lines) == 5002 and lines[0] == b"line 0\r" and lines[-1] == b"a\rb"


def test_translation_streams_before_stdin_closes(toy_run, sources):
    process = subprocess.Popen([sys.executable, "-m", "mt", "translate", "--run-dir", str(toy_run / "run")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        process.stdin.write((sources[0] + "\n").encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "no output within 60 s while stdin was still open"
        first = process.stdout.readline()
        assert first.strip()
        process.stdin.write((sources[1] + "\n" + sources[2] + "\n").encode())
        process.stdin.close()
        rest = process.stdout.read().splitlines()
        assert len(rest) == 2
    finally:
        process.kill()
        process.wait()


def test_nbest_prints_n_ranked_lines_per_input(toy_run, sources):
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), "--beam", "4", "--nbest", "3",
                    input="\n".join(sources[:2]) + "\n")
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1]
    assert float(rows[0][2]) >= float(rows[1][2]) >= float(rows[2][2])


def test_nbest_with_alignments_puts_them_in_a_field_of_their_own(toy_run, sources):
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), "--beam", "3", "--nbest", "2",
                    "--alignments", input=sources[0] + "\n")
    for row in (line.split(" ||| ") for line in result.stdout.splitlines()):
        index, text, score, links = row  # the translation field holds no alignment
        assert "\t" not in text and float(score) <= 0
        assert all(re.fullmatch(r"\d+-\d+", link) for link in links.split())


def test_a_reader_that_leaves_early_is_not_an_error(toy_run, sources):
    """`mt translate < big | head -1`: exit 0 when the reader closes the pipe (pipefail-safe)."""
    process = subprocess.Popen([sys.executable, "-m", "mt", "translate", "--run-dir", str(toy_run / "run")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    _, stderr = process.communicate(("\n".join(sources * 50) + "\n").encode())
    assert process.returncode == 0, stderr.decode()[-2000:]


def test_eval_bleu_equals_the_sacrebleu_command(toy_run, tmp_path):
    hyp = tmp_path / "hyp.txt"
    run_mt("eval", "--run-dir", str(toy_run / "run"), "--src", str(toy_run / "data/test.src"),
           "--ref", str(toy_run / "data/test.trg"), "--output", str(hyp))
    ours = json.loads(run_mt("eval", "--hyp", str(hyp), "--ref", str(toy_run / "data/test.trg"), "--json").stdout)
    theirs = subprocess.run([sys.executable, "-m", "sacrebleu", str(toy_run / "data/test.trg"), "-i", str(hyp),
                             "-m", "bleu", "chrf", "-w", "2"], capture_output=True, text=True, check=True)
    bleu, chrf = json.loads(theirs.stdout)
    assert ours["bleu"] == pytest.approx(bleu["score"], abs=0.005)
    assert ours["chrf"] == pytest.approx(chrf["score"], abs=0.005)
    assert ours["bleu_signature"] == bleu["signature"] and ours["chrf_signature"] == chrf["signature"]
    assert ours["lines"] == 200


def test_eval_with_no_files_scores_every_test_set(toy_run):
    rows = [json.loads(line) for line in run_mt("eval", "--run-dir", str(toy_run / "run"), "--json").stdout.splitlines()]
    assert [r["name"] for r in rows] == ["toy_test"]
    assert rows[0]["bleu"] > 50 and set(rows[0]) >= {"name", "lines", "bleu", "chrf", "bleu_signature", "chrf_signature"}


def test_eval_line_count_mismatch_names_both_counts(toy_run, tmp_path):
    hyp = tmp_path / "short.txt"
    hyp.write_text("a\nb\n")
    result = run_mt("eval", "--hyp", str(hyp), "--ref", str(toy_run / "data/test.trg"), check=False)
    assert result.returncode != 0 and "2" in result.stderr and "200" in result.stderr


def test_eval_compares_two_systems_with_paired_bootstrap(toy_run, tmp_path):
    ref = toy_run / "data/test.trg"
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    refs = read_lines(ref)
    good.write_text("".join(r + "\n" for r in refs))
    bad.write_text("".join(" ".join(r.split()[:2]) + "\n" for r in refs))
    rows = [json.loads(x) for x in run_mt("eval", "--hyp", str(good), "--hyp", str(bad), "--ref", str(ref),
                                          "--json").stdout.splitlines()]
    assert rows[0]["bleu"] == 100.0 and rows[1]["bleu"] < rows[0]["bleu"]
    assert rows[1]["bleu_p"] < 0.05 and rows[1]["bleu_ci"] >= 0
    text = run_mt("eval", "--hyp", str(good), "--hyp", str(bad), "--ref", str(ref)).stdout
    header = text.splitlines()[0]  # a table: BLEU, its 95% interval and p-value against the first system
    assert "± 95%" in header and " p " in header and "BLEU signature:" in text


def test_alignments_match_the_monotone_task(toy_run, sources):
    """Map task: target word j translates source word j, so the true alignment is j-j."""
    result = run_mt("translate", "--run-dir", str(toy_run / "run"), "--alignments",
                    input="\n".join(sources) + "\n")
    right = total = 0
    for line in result.stdout.splitlines():
        text, pairs = line.split("\t")
        for pair in pairs.split():
            i, j = map(int, pair.split("-"))
            right += i == j
            total += 1
    assert total >= len(sources) * 3
    assert right / total >= 0.9, f"{right}/{total} alignment links right"
