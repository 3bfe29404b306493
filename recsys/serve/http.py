"""The HTTP API over a Recommender export (FastAPI; `pip install -e ".[serve]"`).

    app = create_app("outputs/run/export", event_log="events.jsonl", token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: python serve.py export=DIR

Reads: POST /recommend, /recommend/history, /similar/items, /similar/users; GET /items/{id},
/health, /ready, /metrics (Prometheus text). Writes, with `Authorization: Bearer TOKEN` (off, 403,
when no token is set): POST /events, /items, /admin/reload (also on SIGHUP). Errors are
{"error": "one line", "field": "users"} with a 4xx status, never a stack trace.
Scoring requests go through the micro-batcher (serve/batcher.py) into serve/service.py, which
scores them in a scoring process (serve/scorer.py; scoring_process=True) or in its own threads.
The routes are serve/routes.py's, the request bodies serve/bodies.py's; this module builds the
app, its error answers and the ASGI front.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StarletteJSON
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.serve.batcher import Batcher
from recsys.serve.metrics import Metrics
from recsys.serve.routes import READS, TOKEN_ENV, Api, router
from recsys.serve.service import ApiError, Service

log = logging.getLogger(__name__)


def dumps(obj) -> bytes:
    """The service's JSON (the front and FastAPI's routes alike): compact UTF-8; numpy arrays
    and scalars as numbers; NaN and infinities as null."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONResponse(_StarletteJSON):
    """FastAPI's JSON response written by dumps (the app's default response class)."""

    def render(self, content) -> bytes:
        return dumps(content)


def create_app(export_dir: str, event_log: str | None = None, token: str | None = None,
               unknown: str = "error", max_batch_wait_ms: float = 0.25, max_batch_users: int = 256,
               workers: int = 4, threads: int | None = 1, max_users: int = 1000, max_k: int = 1000,
               max_body_bytes: int = 1 << 20, max_events: int = 10000, device: str = "cpu",
               fast_reads: bool = True, scoring_process: bool = True, scoring_threads: int = 0) -> FastAPI:
    """The app over one export, with configs/serve.yaml's defaults (measured: benchmarks/README.md
    "Serving"). token: the bearer token of the write endpoints (default: the
    RECSYS_SERVE_TOKEN environment variable; none: writes answer 403). max_batch_users=1 turns
    micro-batching off. fast_reads=False leaves the scoring reads to FastAPI's routing (the same
    handlers; tests compare the two). scoring_process=True scores in a child process with its own
    copy of the model (recsys/serve/scorer.py), on scoring_threads threads (0: the child's choice,
    scorer.auto_threads). The export is loaded and the event log replayed before this returns."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    svc = Service(export_dir, event_log, unknown, threads, device, scoring_process, max_batch_users, scoring_threads)
    metrics = Metrics()
    batcher = Batcher(lambda key, payloads: svc.score(key[0], payloads[0][0], payloads[0][1],
                                                      [p[2:] for p in payloads]),
                      max_batch_wait_ms / 1000.0, max_batch_users, workers, on_batch=metrics.batch)
    api = Api(svc, batcher, metrics, token, max_users, max_k, max_events)
    app = FastAPI(title="recsys", version="1", lifespan=_lifespan, default_response_class=JSONResponse,
                  description="Recommendations over a recsys export: scores, live events, hot reload.")
    app.state.api, app.state.service, app.state.metrics = api, svc, metrics
    for exc, handler in ERROR_ANSWERS.items():
        app.add_exception_handler(exc, handler)
    for path, (model, handler) in READS.items():
        app.add_api_route(path, _route(model, handler), methods=["POST"], name=handler.__name__,
                          description=handler.__doc__)
    app.include_router(router)
    reads = {path: (model, _bound(handler, api)) for path, (model, handler) in READS.items()} if fast_reads else {}
    return _Front(app, metrics, max_body_bytes, reads)


@asynccontextmanager
async def _lifespan(app):
    api: Api = app.state.api
    api.batcher.start()
    loop = asyncio.get_running_loop()
    try:                       # SIGHUP: reload the served export (a thread; the loop keeps serving)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_logged, api.svc))
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    yield
    await api.batcher.stop()
    api.svc.close()


def _reload_logged(svc: Service) -> None:
    try:
        log.info("SIGHUP: %s", svc.reload())
    except Exception:
        log.exception("SIGHUP reload failed; still serving the previous export")


# --- errors: {"error", "field"}, never a stack trace -------------------------------------------------

async def _api_error(request, e: ApiError):
    return JSONResponse({"error": e.message, "field": e.field}, status_code=e.status)


async def _invalid(request, e: RequestValidationError):
    return JSONResponse(invalid_body(e.errors()), status_code=400)


async def _http(request, e):
    return JSONResponse({"error": str(e.detail), "field": None}, status_code=e.status_code)


async def _internal(request, e):
    log.exception("unhandled error")
    return JSONResponse({"error": f"internal error ({type(e).__name__})", "field": None}, status_code=500)


ERROR_ANSWERS = {ApiError: _api_error, RequestValidationError: _invalid, StarletteHTTPException: _http,
                 Exception: _internal}


def _route(model, handler):
    """A FastAPI endpoint of the read `handler` taking a `model` body (routing without the front)."""
    async def endpoint(body, request: Request):
        return JSONResponse(await handler(request.app.state.api, body))
    endpoint.__annotations__ = {"body": model, "request": Request}
    return endpoint


def _bound(handler, api: Api):
    """The read handler with its Api given: what the front calls with a validated body."""
    async def call(body):
        return await handler(api, body)
    return call


def invalid_body(errors: list) -> dict:
    """{"error", "field"} of pydantic's validation errors: the first one, its field named by
    its location without the "body" prefix and pydantic's union-branch labels."""
    # a value of the right type that breaks a bound (an id too long, an integer past 64 bits)
    # says more than the union's other branches' type mismatches
    mismatch = ("int_type", "string_type", "list_type", "dict_type", "float_type", "bool_type")
    err = next((e for e in errors if e.get("type") not in mismatch), errors[0] if errors else
               {"loc": (), "msg": "invalid request"})
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    fld = ".".join(x for x in loc if not x.startswith(("list[", "union[", "str", "int", "float", "dict[",
                                                       "constrained-"))) or "body"
    if err.get("type") == "json_invalid":
        fld = "body"
    return {"error": f"{fld}: {err.get('msg', 'invalid')}", "field": fld}


class _Front:
    """ASGI front of the app: refuses bodies over max_body_bytes (413), answers the scoring
    reads (`reads`: path -> (pydantic model, handler)) directly, passes everything else to
    FastAPI, and records each request's status and latency by route in the metrics. Keeps
    `.state`, `.routes` etc. of the FastAPI app."""

    def __init__(self, app: FastAPI, metrics: Metrics, max_body_bytes: int, reads: dict):
        self.app, self.metrics, self.max_body, self.reads = app, metrics, max_body_bytes, reads

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._refuse(send, t0)
        read = self.reads.get(scope["path"]) if scope["method"] == "POST" else None
        if read is None and length is not None:
            return await self._to_app(scope, receive, send, t0)
        chunks, size, more = [], 0, True       # the whole body, within the limit
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max_body:
                return await self._refuse(send, t0)
        raw = b"".join(chunks)
        if read is None:                        # a chunked body for FastAPI: replay it
            buffered = [{"type": "http.request", "body": raw, "more_body": False}]

            async def receive_buffered():
                return buffered.pop() if buffered else await receive()
            return await self._to_app(scope, receive_buffered, send, t0)
        model, handler = read
        try:
            status, obj = 200, await handler(model.model_validate_json(raw))
        except ValidationError as e:
            status, obj = 400, invalid_body(e.errors())
        except ApiError as e:
            status, obj = e.status, {"error": e.message, "field": e.field}
        except Exception as e:
            log.exception("unhandled error")
            status, obj = 500, {"error": f"internal error ({type(e).__name__})", "field": None}
        await _send_json(send, status, obj)
        self.metrics.observe(scope["path"], status, time.perf_counter() - t0)

    async def _refuse(self, send, t0) -> None:
        await _send_json(send, 413, {"error": f"request body over {self.max_body} bytes", "field": "body"})
        self.metrics.observe("other", 413, time.perf_counter() - t0)

    async def _to_app(self, scope, receive, send, t0) -> None:
        if scope["method"] == "POST":
            scope = _json_scope(scope)
        status = [500]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        await self.app(scope, receive, send_status)
        route = scope.get("route")
        self.metrics.observe(getattr(route, "path", "other"), status[0], time.perf_counter() - t0)


def _json_scope(scope) -> dict:
    """Every body is JSON: `curl -d '{...}'` works without a Content-Type header."""
    if (b"content-type", b"application/json") in scope["headers"]:
        return scope
    return dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"content-type"]
                + [(b"content-type", b"application/json")])


async def _send_json(send, status: int, obj: dict) -> None:
    body = dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
