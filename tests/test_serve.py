"""`mt serve`: a real uvicorn on 127.0.0.1 serving the toy model, spoken to over HTTP."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_mt
from mt.files import read_lines

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_server import Server, call  # noqa: E402  (after the skips: it needs nothing, but reads better here)


@pytest.fixture(scope="module")
def server(toy_run):
    server = Server(toy_run / "run")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def lines(toy_run) -> list[str]:
    return read_lines(toy_run / "data/dev.src")[:24] + ["", "   "]


def translate(server: Server, text: list[str], **options) -> list[dict]:
    status, answer = call(server.url, "/v1/translate", {"text": text, **options})
    assert status == 200, answer
    return answer["results"]


def test_translations_equal_mt_translate(server, toy_run, lines):
    stdin = "".join(line + "\n" for line in lines)
    cli = run_mt("translate", "--run-dir", str(toy_run / "run"), "--device", "cpu", "--alignments",
                 input=stdin).stdout.splitlines()
    results = translate(server, lines, alignments=True)
    assert [r["translation"] for r in results] == [line.split("\t")[0] for line in cli]
    assert [" ".join(f"{i}-{j}" for i, j in r["alignments"]) for r in results] == [line.split("\t")[1] for line in cli]
    assert results[-1] == {"translation": "", "score": 0.0, "alignments": [], "nbest": None, "attention": None}

    nbest = run_mt("translate", "--run-dir", str(toy_run / "run"), "--device", "cpu", "--beam", "3", "--nbest", "2",
                   input=stdin).stdout.splitlines()
    results = translate(server, lines, beam=3, nbest=2)
    got = [f"{k} ||| {h['translation']} ||| {h['score']:.4f}" for k, r in enumerate(results) for h in r["nbest"]]
    assert got == nbest
    assert any(f"POST /v1/translate 200 {len(lines)} lines" in line for line in server.stderr)


def test_attention_has_the_layout_of_mt_attention_json(server, toy_run, lines, tmp_path):
    run_mt("attention", "--run-dir", str(toy_run / "run"), "--device", "cpu", "--output", str(tmp_path),
           "--text", lines[0], "--json")
    expected = json.loads((tmp_path / "0001.json").read_text())
    (result,) = translate(server, [lines[0]], attention=True)
    assert result["translation"] == expected["translation"]
    for key in ("source_tokens", "target_tokens", "decoder_input_tokens", "attention"):
        assert result["attention"][key] == expected[key], key


def test_32_concurrent_clients_each_get_their_own_lines_in_order(server, lines):
    sentences = [line for line in lines if line.strip()]
    expected = dict(zip(sentences, (r["translation"] for r in translate(server, sentences))))
    searches_before = call(server.url, "/v1/health")[1]["searches"]
    start = threading.Barrier(32)

    def client(k: int) -> list[tuple[list[str], list[str]]]:
        mine = [sentences[(k + i) % len(sentences)] for i in range(1 + k % 3)]  # 1 to 3 lines
        start.wait()
        return [(mine, [r["translation"] for r in translate(server, mine)])]

    with ThreadPoolExecutor(32) as pool:
        answers = [a for client_answers in pool.map(client, range(32)) for a in client_answers]
    for sent, got in answers:
        assert got == [expected[s] for s in sent]
    searches = call(server.url, "/v1/health")[1]["searches"] - searches_before
    assert searches < len(answers)  # requests shared searches


BAD_REQUESTS = [  # (body, status, field named in the error)
    (b"this is not JSON", 422, "body"),
    (b'["a list", "not an object"]', 422, "body"),
    ({"beam": 2}, 422, "text"),
    ({"text": "a string, not a list"}, 422, "text"),
    ({"text": ["fine", 7]}, 422, "text[1]"),
    ({"text": ["x"], "beam": "5"}, 422, "beam"),
    ({"text": ["x"], "beam": 0}, 422, "beam"),
    ({"text": ["x"], "beam": 17}, 422, "beam"),
    ({"text": ["x"], "beam": 2, "nbest": 3}, 422, "nbest"),
    ({"text": ["x"], "attention": "yes"}, 422, "attention"),
    ({"text": ["x"], "checkpoint": "/etc/passwd"}, 422, "checkpoint"),
    ({"text": ["x"] * 65}, 413, "text"),
    ({"text": ["x", "y" * 1001]}, 413, "text[1]"),
    ({"text": ["two\nlines"]}, 422, "text[0]"),
    (b'{"text": ["x"], "\\ud800": 1}', 422, "body"),  # a field name that is a lone surrogate
    (b'{"text": ["' + b"z" * 800_000 + b'"]}', 413, "body"),
]


@pytest.mark.parametrize("body, status, field", BAD_REQUESTS, ids=[f"{s}-{f}-{k}" for k, (_, s, f) in enumerate(BAD_REQUESTS)])
def test_bad_request_is_a_4xx_naming_the_field_and_the_server_goes_on(server, body, status, field, lines):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = call(server.url, "/v1/translate", raw=raw)
    assert (got, answer["field"]) == (status, field), answer
    assert answer["error"].startswith(field)
    assert translate(server, lines[:1])[0]["translation"]


def test_a_line_longer_than_the_model_takes_is_refused_not_cut(server, lines):
    long_line = " ".join([lines[0]] * 40)
    status, answer = call(server.url, "/v1/translate", {"text": [lines[0], long_line]})
    assert (status, answer.get("field")) == (422, "text[1]"), answer
    max_pieces = call(server.url, "/v1/info")[1]["limits"]["max_pieces"]
    assert max_pieces == 63  # the toy model's max_len, less the source EOS
    assert f"the model takes at most {max_pieces}" in answer["error"]


def test_a_lone_surrogate_is_a_422_naming_the_line(server):
    status, answer = call(server.url, "/v1/translate", raw=b'{"text": ["fine", "a \\ud800 b"]}')
    assert (status, answer) == (422, {"error": "text[1]: not valid Unicode (a lone surrogate)", "field": "text[1]"})
    assert not any("Traceback" in line for line in server.stderr)


def test_any_request_within_the_limits_is_accepted_however_its_json_is_escaped(server):
    for line in ("ä" * 1000, "\U0001F600" * 1000):  # json.dumps sends 6 and 12 bytes a character
        for indent in (None, 4):
            raw = json.dumps({"text": [line] * 64}, indent=indent).encode()
            status, answer = call(server.url, "/v1/translate", raw=raw)
            assert status == 200, (len(raw), answer)
            assert len(answer["results"]) == 64


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(server, lines):
    """No Content-Length to check first: the server counts the bytes as they come."""
    chunk = b'"lodu ridu",' * 10_000  # 120 kB; 160 of them: 25 times the body limit

    def body():
        yield b'{"text": ['
        for _ in range(160):
            yield chunk
        yield b'"x"]}'

    connection = http.client.HTTPConnection(*server.url.removeprefix("http://").split(":"))
    peak_before = peak_memory_kb(server.process.pid)
    connection.request("POST", "/v1/translate", body=body(), headers={"Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert (response.status, answer["field"]) == (413, "body"), answer
    limit = call(server.url, "/v1/info")[1]["limits"]["max_body_bytes"]
    assert f"at most {limit}" in answer["error"]
    if peak_before is not None:  # the body was not held: the server's peak grew by far less than it
        assert peak_memory_kb(server.process.pid) - peak_before < len(chunk) * 160 // 1024 // 4
    connection.request("POST", "/v1/translate", body=json.dumps({"text": lines[:1]}),
                       headers={"Content-Type": "application/json"})  # the same connection goes on
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["results"][0]["translation"]


def test_a_body_refused_by_its_length_is_answered_after_the_client_has_sent_it(server):
    """A client that says `Connection: close` (as urllib does) and sends a body too large gets
    the 413, not a connection reset: the server reads and drops the body before it answers and
    closes. Before, it closed while the client was still sending."""
    body = b'{"text": ["' + b"z" * 800_000 + b'"]}'
    head = (f"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(tuple_of(server.url)) as client:
        client.sendall(head + body[:1000])
        time.sleep(0.5)  # time enough, on a quiet machine, for a server that does not wait to answer and close
        client.sendall(body[1000:])
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "body"


def tuple_of(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def peak_memory_kb(pid: int):
    """The process's peak resident memory (VmHWM), or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def test_health_info_page_and_docs(server):
    assert call(server.url, "/v1/health")[1]["status"] == "ok"
    info = call(server.url, "/v1/info")[1]
    assert (info["source_language"], info["target_language"]) == ("src", "trg")
    assert info["model"]["heads"] == 4 and info["checkpoint"]["file"] == "best.pt"
    assert info["checkpoint"]["step"] > 0 and info["decoding"]["beam"] == 1
    with urllib.request.urlopen(server.url + "/") as page:
        assert 'src="/static/page.js"' in page.read().decode()
    for path in ("/static/page.js", "/static/views.js", "/static/attention.js", "/static/page.css", "/docs"):
        with urllib.request.urlopen(server.url + path) as response:
            assert response.status == 200
    assert "/v1/translate" in call(server.url, "/openapi.json")[1]["paths"]
    assert call(server.url, "/no/such/page")[0] == 404


def test_sigterm_during_a_request_lets_it_finish_then_exits_0(toy_run, lines):
    server = Server(toy_run / "run")
    heavy = {"text": lines[:24], "beam": 4}
    expected = translate(server, heavy["text"], beam=4)
    for attempt in range(20):  # until SIGTERM lands while a request is being translated
        answer: list = []
        thread = threading.Thread(target=lambda: answer.append(call(server.url, "/v1/translate", heavy)))
        thread.start()
        while thread.is_alive() and call(server.url, "/v1/health")[1]["in_flight"] == 0:
            time.sleep(0.005)
        if thread.is_alive():
            server.process.send_signal(signal.SIGTERM)
            thread.join()
            break
        print(f"attempt {attempt}: the request was done before we saw it")
        thread.join()
    else:
        pytest.fail("never caught a request in flight")
    status, body = answer[0]
    assert status == 200
    assert [r["translation"] for r in body["results"]] == [r["translation"] for r in expected]
    assert server.process.wait() == 0
    assert "stopped" in server.stderr[-1]


def test_without_fastapi_it_names_the_extra_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['mt', 'serve', '--run-dir', 'x']; "
            "from mt.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "pip install 'mt[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_a_taken_port_is_a_one_line_error(server, toy_run):
    port = server.url.rsplit(":", 1)[1]
    result = run_mt("serve", "--run-dir", str(toy_run / "run"), "--port", port, "--device", "cpu", check=False)
    assert result.returncode == 1
    assert f"--port {port}: cannot listen there" in result.stderr.strip().splitlines()[-1]
