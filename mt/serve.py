"""`mt serve`: a translation server (JSON API under /v1) and the attention page at /.

A face, like cli.py: a handler checks the request, hands its lines to the decoding worker
(serve_worker.py, which calls the same translate functions as `mt translate`) and shapes the
answer. The model is loaded once, before the server starts; the worker lives in the app's
lifespan. uvicorn owns the signals: Ctrl-C or SIGTERM stops accepting, lets the requests in
flight finish, and `mt serve` exits 0.

Bad requests get a 4xx whose JSON body names the field (`{"error": "beam: ...", "field":
"beam"}`), never a 500 or a traceback. Nothing in a request names a file: the request models
forbid unknown fields, and the checkpoint is chosen on the command line only.

FastAPI and uvicorn are an optional extra (`pip install 'mt[serve]'`), imported by this
command only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time
from importlib import resources
from typing import Optional

from mt.errors import MtError

try:
    import fastapi
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException
except ImportError as missing:
    raise MtError(f"mt serve needs FastAPI and uvicorn ({missing.name} is missing): "
                  "pip install 'mt[serve]'") from None

from mt.serve_worker import Batcher, Engine, Options

log = logging.getLogger(__name__)

MAX_BEAM = 16  # a request's beam and nbest: 1..MAX_BEAM
DRAIN_BYTES = 64 * 2**20  # the most of a refused body read and dropped so that its client sees the 413
STATIC = resources.files("mt") / "static"


@dataclasses.dataclass(frozen=True)
class Limits:
    max_lines: int = 64  # lines per request
    max_chars: int = 1000  # characters per line
    max_batch_tokens: Optional[int] = None  # source tokens searched together; None: decoding.batch_tokens
    max_wait_ms: float = 20.0  # how long the worker waits for company (only while fewer than last time)

    def max_body_bytes(self) -> int:
        """Room for any request within the line and character limits, however its JSON is
        written: escaped, one character can take 12 bytes (`\\ud83d\\ude00` is how Python's
        json.dumps sends an emoji), and each line has room for quotes, comma and indentation."""
        return self.max_lines * (self.max_chars * 12 + 64) + 4096


class TranslateRequest(BaseModel):
    """Lines to translate, and how."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: list[str] = Field(description="Source lines; one result per line, in order.",
                            examples=[["Ein Hund rennt über die Wiese."]])
    beam: Optional[int] = Field(None, ge=1, le=MAX_BEAM, description="Beam size (1 = greedy); default: the server's.")
    nbest: int = Field(1, ge=1, le=MAX_BEAM, description="Hypotheses per line, at most the beam size.")
    alignments: bool = Field(False, description="Word alignments (source word i, target word j) from cross-attention.")
    attention: bool = Field(False, description="Tokens and every attention weight, as `mt attention --json` writes them.")


class Hypothesis(BaseModel):
    translation: str
    score: float = Field(description="Log-probability, length-normalised as the beam ranks it (greedy: the sum).")
    alignments: Optional[list[list[int]]] = Field(None, description="[i, j] pairs: source word i, target word j.")


class LineResult(Hypothesis):
    nbest: Optional[list[Hypothesis]] = Field(None, description="With nbest > 1: the n best, best first.")
    attention: Optional[dict] = Field(
        None, description="source_tokens, target_tokens, decoder_input_tokens, and attention.{cross,encoder,decoder} "
                          "as [layer][head][query][key]; null for an empty line.")


class TranslateResponse(BaseModel):
    results: list[LineResult]


class BadRequest(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def error_response(status: int, field: Optional[str], message: str) -> JSONResponse:
    field = field and printable(field)
    text = f"{field}: {printable(message)}" if field else printable(message)
    return JSONResponse({"error": text, "field": field}, status_code=status)


def printable(text: str) -> str:
    """`text` with lone surrogates (which JSON allows and UTF-8 cannot hold) written as \\udXXX."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # "\\ud800" in JSON: half of a surrogate pair, no character
        return False
    return True


def field_name(loc: tuple) -> str:
    """('body', 'text', 3) -> 'text[3]'; the request body itself is 'body'."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else f"{'.' if name else ''}{part}"
    return name or "body"


def validation_message(error: dict) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown field; expected one of {', '.join(TranslateRequest.model_fields)}"
    if kind == "json_invalid":
        return "not valid JSON"
    if kind == "string_unicode":  # a lone surrogate in a key: Pydantic's loc is then the body
        return "not valid Unicode (a lone surrogate)"
    if kind == "model_attributes_type":  # a JSON list or string, or a body sent as form data
        return 'expected a JSON object such as {"text": ["a line"]}, sent with Content-Type: application/json'
    return error.get("msg", "invalid")


def create_app(engine: Engine, limits: Limits, beam: int) -> FastAPI:
    """The app: routes, error handlers, the page, and the worker in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = Batcher(engine, limits.max_batch_tokens, limits.max_wait_ms)
        worker = asyncio.create_task(app.state.batcher.run())
        yield
        worker.cancel()  # uvicorn has finished every request by now
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    app = FastAPI(title="mt serve", version="1", lifespan=lifespan,
                  description="Translate with an mt model; see the attention at /.")
    add_error_handlers(app)
    app.add_middleware(RequestLog, max_body_bytes=limits.max_body_bytes())
    info = engine.info(beam)
    info["limits"] = dataclasses.asdict(limits) | {
        "max_beam": MAX_BEAM, "max_pieces": engine.max_pieces, "max_body_bytes": limits.max_body_bytes()}
    info["versions"] |= {"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__}

    @app.post("/v1/translate", response_model=TranslateResponse)
    async def translate(body: TranslateRequest, request: Request) -> dict:
        """One result per input line, in order; an empty line gives an empty translation."""
        request.state.lines = len(body.text)
        options = Options(body.beam or beam, body.nbest, body.alignments, body.attention)
        check_request(body, options, limits)
        sources = engine.encode(body.text)
        check_pieces(sources, engine.max_pieces)
        return {"results": await request.app.state.batcher.translate(sources, options)}

    @app.get("/v1/health")
    async def health(request: Request) -> dict:
        batcher = request.app.state.batcher
        return {"status": "ok", "in_flight": batcher.in_flight, "searches": batcher.searches}

    @app.get("/v1/info")
    async def get_info() -> dict:
        """Languages, model shape, checkpoint and step, decoding defaults, limits, versions."""
        return info

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def check_request(body: TranslateRequest, options: Options, limits: Limits) -> None:
    """What Pydantic cannot know: the server's limits, and nbest against the beam in force."""
    if len(body.text) > limits.max_lines:
        raise BadRequest(413, "text", f"{len(body.text)} lines; at most {limits.max_lines} per request")
    for k, line in enumerate(body.text):
        if len(line) > limits.max_chars:
            raise BadRequest(413, f"text[{k}]", f"{len(line)} characters; at most {limits.max_chars} per line")
        if not valid_unicode(line):
            raise BadRequest(422, f"text[{k}]", "not valid Unicode (a lone surrogate)")
        if "\n" in line or "\r" in line:
            raise BadRequest(422, f"text[{k}]", "a line break inside a line; send each line as its own item")
    if options.nbest > options.beam:
        raise BadRequest(422, "nbest", f"{options.nbest} is more than the beam size ({options.beam})")


def check_pieces(sources: list[list[int]], max_pieces: int) -> None:
    """A line longer than the model takes is refused: cut, its translation would be of its
    first part only, and the client would not know."""
    for k, ids in enumerate(sources):
        if len(ids) > max_pieces:
            raise BadRequest(422, f"text[{k}]", f"{len(ids)} pieces (subwords); the model takes at most "
                                                f"{max_pieces} a line: split it into sentences")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = "body" if first.get("type") == "json_invalid" else field_name(tuple(first.get("loc", ())))
        return error_response(422, field, validation_message(first))

    @app.exception_handler(BadRequest)
    async def bad(request: Request, exc: BadRequest) -> JSONResponse:
        return error_response(exc.status, exc.field, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, None, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, None, "internal error; the server log says more")


class RequestLog:
    """ASGI middleware: one line per request on stderr (method, path, status, lines, ms), and
    a 413 for a body larger than any valid request could be: at once from its Content-Length,
    else as soon as the bytes received pass the limit (a chunked body has no length), so that
    the rest of it is never held in memory (it is read and dropped: see `drain`)."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body, refused = await self._read_body(scope, receive)
            if refused:
                await drain(scope, receive)
                await error_response(413, "body", refused)(scope, receive, send_logged)
            elif body is not None:  # None: the client went away before it was sent
                await self.app(scope, replay(body, receive), send_logged)
        except Exception:
            status[0] = status[0] or 500  # answered by uvicorn's last-resort handler
            raise
        finally:
            self._log(scope, status[0], start)

    async def _read_body(self, scope, receive) -> tuple[Optional[bytes], Optional[str]]:
        """(the body, None), or (None, why it is refused) having read no more than the limit."""
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return None, f"{int(length)} bytes; at most {self.max_body_bytes}"
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_body_bytes:
                return None, f"more than {self.max_body_bytes} bytes; at most {self.max_body_bytes}"
            if not message.get("more_body"):
                return b"".join(chunks), None

    @staticmethod
    def _log(scope, status: int, start: float) -> None:
        lines = scope.get("state", {}).get("lines", "-")
        log.info("%s %s %d %s lines %.1f ms", scope["method"], scope["path"], status, lines,
                 (time.perf_counter() - start) * 1000)


async def drain(scope, receive) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_BYTES, a chunk at a time. A server
    that answers and closes (as it does for `Connection: close`) while its client is still
    sending resets the connection, and the client sees a broken pipe instead of the 413. A client
    waiting for `100 Continue` has sent nothing: reading would ask it to, so it is not read."""
    headers = dict(scope["headers"])
    length = headers.get(b"content-length", b"0")
    if headers.get(b"expect", b"").lower() == b"100-continue" or (length.isdigit() and int(length) > DRAIN_BYTES):
        return
    dropped = 0
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        dropped += len(message.get("body", b""))


def replay(body: bytes, receive):
    """An ASGI `receive` that gives the app the body already read, then what `receive` gives
    (the disconnect some responses wait for)."""
    given = False

    async def receive_again():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


def open_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a one-line error, and
    listening before the URL is printed, so that the URL works at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    except OSError as e:
        raise MtError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def serve_command(run_dir, checkpoint: str = "best", host: str = "127.0.0.1", port: int = 8000,
                  device: str = "auto", beam: Optional[int] = None, limits: Limits = Limits()) -> None:
    """Load the model, serve until Ctrl-C or SIGTERM, finish the requests in flight, return."""
    engine = Engine.load(run_dir, checkpoint, device)
    beam = beam or engine.loaded.cfg.decoding.beam
    if limits.max_batch_tokens is None:
        limits = dataclasses.replace(limits, max_batch_tokens=engine.loaded.cfg.decoding.batch_tokens)
    app = create_app(engine, limits, beam)
    sock = open_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("serving %s (%s, step %s) at http://%s:%d/  (API docs: /docs); Ctrl-C to stop", run_dir,
             engine.loaded.path.name, engine.step, shown, bound_port)
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it is done; a stop asked for is a clean exit
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    log.info("stopped")
