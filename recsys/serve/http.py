"""The HTTP API over a Recommender export (FastAPI; `pip install -e ".[serve]"`).

    app = create_app("outputs/run/export", event_log="events.jsonl", token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: python serve.py export=DIR

Reads: POST /recommend, /recommend/history, /similar/items, /similar/users; GET /items/{id},
/health, /ready, /metrics (Prometheus text). Writes, with `Authorization: Bearer TOKEN` (off, 403,
when no token is set): POST /events, /items, /admin/reload (also on SIGHUP). Errors are
{"error": "one line", "field": "users"} with a 4xx status, never a stack trace.
Scoring requests go through the micro-batcher (serve/batcher.py) into serve/service.py, which
scores them in a scoring process (serve/scorer.py; scoring_process=True) or in its own threads.
"""
from __future__ import annotations

import hmac
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Optional, Union

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StarletteJSON, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.serve.batcher import Batcher
from recsys.serve.metrics import Metrics
from recsys.serve.request import check_explain
from recsys.serve.scorer import error_line
from recsys.serve.service import MAX_ID_CHARS, ApiError, Service, conform

log = logging.getLogger(__name__)

TOKEN_ENV = "RECSYS_SERVE_TOKEN"


def dumps(obj) -> bytes:
    """The service's JSON (the front and FastAPI's routes alike): compact UTF-8; numpy arrays
    and scalars as numbers; NaN and infinities as null."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONResponse(_StarletteJSON):
    """FastAPI's JSON response written by dumps (the app's default response class)."""

    def render(self, content) -> bytes:
        return dumps(content)


# ids: 64-bit integers or strings of at most MAX_ID_CHARS characters; a 5,000-digit integer is a
# 400 naming the field, not a 500 from int-to-text limits or the JSON encoder
Id = Union[Annotated[int, Field(strict=True, ge=-(2 ** 63), lt=2 ** 63)],
           Annotated[str, Field(strict=True, max_length=MAX_ID_CHARS)]]
Value = Union[StrictStr, StrictInt, StrictFloat]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendBody(_Body):
    users: Union[Id, list[Id]] = Field(description="one user id or a list of user ids")
    k: StrictInt = 10
    exclude_seen: bool = True
    exclude: Optional[Union[list[Id], list[list[Id]]]] = Field(None, description="ids for every user, or one list per user")
    candidates: Optional[list[Id]] = Field(None, description="item ids: rank only these")
    items: Optional[list[Id]] = Field(None, description="the old name of candidates")
    where: Optional[dict[str, Union[Value, list[Value]]]] = Field(None, description='{"genres": "Comedy"}')
    diversity: Optional[dict[str, Any]] = Field(None, description='{"method": "mmr", "strength": 0.3}')
    explain: Union[bool, StrictInt] = False


class HistoryBody(_Body):
    history: Union[list[Id], list[list[Id]]] = Field(description="item ids, or one list of item ids per row")
    k: StrictInt = 10
    exclude_given: bool = True
    unknown: str = Field("error", description="error | ignore: item ids outside the catalog")
    exclude: Optional[Union[list[Id], list[list[Id]]]] = None
    candidates: Optional[list[Id]] = None
    where: Optional[dict[str, Union[Value, list[Value]]]] = None
    explain: Union[bool, StrictInt] = False


class SimilarItemsBody(_Body):
    items: Union[Id, list[Id]]
    k: StrictInt = 10
    space: Optional[str] = None
    exclude: Optional[Union[list[Id], list[list[Id]]]] = None
    candidates: Optional[list[Id]] = None
    where: Optional[dict[str, Union[Value, list[Value]]]] = None


class SimilarUsersBody(_Body):
    users: Union[Id, list[Id]]
    k: StrictInt = 10
    space: Optional[str] = None
    exclude: Optional[list[Id]] = None
    candidates: Optional[list[Id]] = None


class Event(_Body):
    user: Id
    item: Id
    ts: Optional[Union[StrictInt, StrictFloat]] = None


class EventsBody(_Body):
    events: list[Event]


class ItemsBody(_Body):
    items: list[dict[str, Any]] = Field(description='[{"item": 99001, "title": "...", "genres": "..."}]')


class ReloadBody(_Body):
    export: Optional[str] = Field(None, description="a new export directory (default: the served one again)")


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

    @asynccontextmanager
    async def lifespan(app):
        import asyncio
        batcher.start()
        loop = asyncio.get_running_loop()
        try:                       # SIGHUP: reload the served export (a thread; the loop keeps serving)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_logged))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        yield
        await batcher.stop()
        svc.close()

    def _reload_logged():
        try:
            log.info("SIGHUP: %s", svc.reload())
        except Exception:
            log.exception("SIGHUP reload failed; still serving the previous export")

    app = FastAPI(title="recsys", version="1", lifespan=lifespan, default_response_class=JSONResponse,
                  description="Recommendations over a recsys export: scores, live events, hot reload.")
    app.state.service, app.state.metrics = svc, metrics

    # -- errors: {"error", "field"}, never a stack trace -------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": e.message, "field": e.field}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return JSONResponse(invalid_body(e.errors()), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return JSONResponse({"error": str(e.detail), "field": None}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, e):
        log.exception("unhandled error")
        return JSONResponse({"error": f"internal error ({type(e).__name__})", "field": None}, status_code=500)

    # -- checks made on the event loop before a request joins a batch ----------------------------
    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise ApiError(400, f"k={k} must be between 1 and {max_k}", "k")
        return k

    def explain_arg(explain) -> int:
        try:
            return check_explain(explain)
        except ValueError as e:
            raise ApiError(400, str(e), "explain") from None

    def candidate_ids(candidates, items, vocab) -> list | None:
        """/recommend's candidates (or `items`, their old name; not both)."""
        if candidates is not None and items is not None:
            raise ApiError(400, "pass candidates only (items is its old name)", "items")
        which, ids = ("items", items) if items is not None else ("candidates", candidates)
        return None if ids is None else known_ids(ids, vocab, which)

    def check_count(n: int, what: str) -> None:
        if n < 1 or n > max_users:
            raise ApiError(400, f"{what}: {n} given, between 1 and {max_users} allowed per request", what)

    def known_ids(ids: list, vocab, what: str) -> list:
        ids = [conform(x, vocab) for x in ids]
        bad = [x for x in ids if x not in vocab][:5]
        if bad:
            raise ApiError(404, f"{what}: unknown id(s) {bad}", what)
        return ids

    def exclude_rows(exclude, n: int, vocab) -> list | None:
        if exclude is None:
            return None
        if exclude and all(isinstance(x, list) for x in exclude):
            if len(exclude) != n:
                raise ApiError(400, f"exclude: {len(exclude)} lists for {n} rows; give one list for all rows "
                                    "or one list per row", "exclude")
            return [known_ids(x, vocab, "exclude") for x in exclude]
        return [known_ids(exclude, vocab, "exclude")] * n

    def check_where(where, rec):
        if where is not None:
            bad = [a for a in where if a not in rec.attributes]
            if bad:
                raise ApiError(400, f"where: no item attribute {bad[0]!r} (kept: {sorted(rec.attributes)})", "where")
            if not where:
                raise ApiError(400, "where: give at least one {attribute: value(s)}", "where")
        return where

    async def run(kind: str, served, opts: dict, queries: list, ex_rows) -> list:
        key = (kind, id(served), orjson.dumps(opts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                                              default=str))
        res = await batcher.submit(key, (served, opts, queries, ex_rows), len(queries))
        if isinstance(res, ApiError):
            raise res
        return res

    # -- reads ---------------------------------------------------------------------------------
    async def recommend(body: RecommendBody) -> dict:
        """Top-k items per user; users with events are ranked from their live history."""
        s = svc.served
        rec = s.rec
        users = body.users if isinstance(body.users, list) else [body.users]
        check_count(len(users), "users")
        users = [conform(u, rec.users) for u in users]
        if svc.unknown == "error":
            bad = [u for u in users if u not in rec.users and u not in s.live][:5]
            if bad:
                raise ApiError(404, f"unknown user id(s) {bad}: not in the model and no events", "users")
        opts = {"k": check_k(body.k), "exclude_seen": body.exclude_seen, "where": check_where(body.where, rec),
                "candidates": candidate_ids(body.candidates, body.items, rec.items),
                "diversity": body.diversity, "explain": explain_arg(body.explain)}
        rows = await run("recommend", s, opts, users, exclude_rows(body.exclude, len(users), rec.items))
        return {"results": rows}

    async def recommend_history(body: HistoryBody) -> dict:
        """Top-k items for histories of item ids (users the model does not know)."""
        s = svc.served
        rec = s.rec
        hs = body.history
        hists = hs if hs and all(isinstance(h, list) for h in hs) else [hs]
        check_count(len(hists), "history")
        if body.unknown not in ("error", "ignore"):
            raise ApiError(400, f"unknown={body.unknown!r} must be 'error' or 'ignore'", "unknown")
        hists = [[conform(x, rec.items) for x in h] for h in hists]
        if body.unknown == "error":
            for h in hists:
                known_ids(h, rec.items, "history")
        for n, h in enumerate(hists):         # nothing known: refused, never a list of zeros
            if not any(x in rec.items for x in h):
                raise ApiError(400, f"{'history' if len(hists) == 1 else f'history[{n}]'}: no item of the catalog "
                               f"to rank from ({'every id in it is unknown' if h else 'it is empty'})", "history")
        opts = {"k": check_k(body.k), "exclude_given": body.exclude_given, "unknown": body.unknown,
                "where": check_where(body.where, rec), "explain": explain_arg(body.explain),
                "candidates": None if body.candidates is None else known_ids(body.candidates, rec.items, "candidates")}
        rows = await run("history", s, opts, hists, exclude_rows(body.exclude, len(hists), rec.items))
        return {"results": rows}

    async def similar(of: str, body, vocab_of, opts: dict) -> dict:
        """similar_items (of="items") or similar_users (of="users"): the query ids, known in
        the served model's vocabulary of `of`, and their exclusions."""
        s = svc.served
        vocab = vocab_of(s.rec)
        queries = getattr(body, of) if isinstance(getattr(body, of), list) else [getattr(body, of)]
        check_count(len(queries), of)
        queries = known_ids(queries, vocab, of)
        opts = {"k": check_k(body.k), "space": body.space, **opts}
        rows = await run(f"similar_{of}", s, opts, queries, exclude_rows(body.exclude, len(queries), vocab))
        return {"results": rows}

    async def similar_items(body: SimilarItemsBody) -> dict:
        """Items most similar to each query item (the query item left out)."""
        rec = svc.served.rec
        return await similar("items", body, lambda r: r.items, {
            "where": check_where(body.where, rec),
            "candidates": None if body.candidates is None else known_ids(body.candidates, rec.items, "candidates")})

    async def similar_users(body: SimilarUsersBody) -> dict:
        """Users most similar to each query user (the query user left out)."""
        users = svc.served.rec.users
        return await similar("users", body, lambda r: r.users, {
            "candidates": None if body.candidates is None else known_ids(body.candidates, users, "candidates")})

    # The scoring reads: FastAPI declares them (validation, OpenAPI docs); the front (_Front)
    # answers them directly, the same handler behind the same pydantic model, without
    # FastAPI's per-request machinery (about 1 ms of a 2-core machine's time per request).
    reads = {"/recommend": (RecommendBody, recommend), "/recommend/history": (HistoryBody, recommend_history),
             "/similar/items": (SimilarItemsBody, similar_items), "/similar/users": (SimilarUsersBody, similar_users)}
    for path, (model, handler) in reads.items():
        app.add_api_route(path, _route(model, handler), methods=["POST"], name=handler.__name__,
                          description=handler.__doc__)

    @app.get("/items/{item_id}")
    async def item(item_id: str):
        """An item's title and attributes."""
        return svc.item(item_id)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        s = svc.served
        child = s.scorer.info if s.scorer is not None and s.scorer.alive else None   # the scoring process's
        return {"ready": True, "export": s.export, "users": len(s.rec.users), "items": len(s.rec.items),
                "log_lines": s.lines, "events_through": s.events_through, "live_users": len(s.live.events),
                "reloads": svc.reloads, "loaded_at": s.loaded_at, "scoring_respawns": svc.respawns,
                "scoring": "server" if child is None else "process",
                "scoring_threads": None if child is None else child["threads"],
                "us_per_user": None if child is None else child["us_per_user"]}

    @app.get("/metrics")
    async def prometheus():
        s = svc.served
        metrics.set("items", len(s.rec.items))
        metrics.set("users", len(s.rec.users))
        metrics.set("live_users", len(s.live.events))
        metrics.set("event_log_lines", s.lines)
        metrics.set("reloads_total", svc.reloads)
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    # -- writes (sync: FastAPI runs them in a thread, so fsync and reloads leave the loop free) --
    def authorize(request: Request) -> None:
        if not token:
            raise ApiError(403, f"write endpoints are off: no token configured (set {TOKEN_ENV})", "Authorization")
        got = request.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(got[7:].encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token", "Authorization")

    @app.post("/events")
    def events(body: EventsBody, request: Request):
        """Append interactions; durable (fsync) before the answer, visible to the next request."""
        authorize(request)
        if not 1 <= len(body.events) <= max_events:
            raise ApiError(400, f"events: {len(body.events)} given, between 1 and {max_events} allowed", "events")
        return svc.add_events([(e.user, e.item, e.ts) for e in body.events])

    @app.post("/items")
    def items(body: ItemsBody, request: Request):
        """Add items to the catalog (Recommender.add_items rules); logged, replayed on restart."""
        authorize(request)
        if not 1 <= len(body.items) <= max_events:
            raise ApiError(400, f"items: {len(body.items)} given, between 1 and {max_events} allowed", "items")
        return svc.add_items([dict(r) for r in body.items])

    @app.post("/admin/reload")
    def reload(request: Request, body: Optional[ReloadBody] = None):
        """Load the export again (or another), re-apply the log after it, swap atomically."""
        authorize(request)
        export = body.export if body is not None else None
        if export is not None and not os.path.isdir(export):
            raise ApiError(404, f"export: no directory {export!r}", "export")
        try:
            return svc.reload(export)
        except ApiError:
            raise
        except Exception as e:
            log.exception("reload failed")
            raise ApiError(400 if export else 500,
                           f"reload failed, still serving the previous export: {error_line(e)}", "export") from None

    return _Front(app, metrics, max_body_bytes, reads if fast_reads else {})


def _route(model, handler):
    """A FastAPI endpoint of `handler` taking a `model` body (for routing without the front)."""
    async def endpoint(body):
        return JSONResponse(await handler(body))
    endpoint.__annotations__ = {"body": model}
    return endpoint


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
