"""The HTTP API's routes, at module level, each with the served `Api` as a dependency (the
app's state: the Service, the micro-batcher, the metrics and the request limits).

Reads (POST /recommend, /recommend/history, /similar/items, /similar/users) are plain
`async def handler(api, body)` functions: FastAPI declares them (READS, registered by
http.create_app) and the front (http._Front) calls the same function directly. Every other
route is on `router` with `api: Api = Depends(api_of)`.
"""
from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from typing import Optional

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from recsys.serve.batcher import Batcher
from recsys.serve.bodies import (EventsBody, HistoryBody, ItemsBody, RecommendBody, ReloadBody, SimilarItemsBody,
                                 SimilarUsersBody)
from recsys.serve.metrics import Metrics
from recsys.serve.request import check_explain
from recsys.serve.scorer import error_line
from recsys.serve.service import ApiError, Service, conform

log = logging.getLogger(__name__)

TOKEN_ENV = "RECSYS_SERVE_TOKEN"


@dataclass
class Api:
    """What the routes need: the service, its batcher and metrics, the write token and the
    per-request limits; the checks made on the event loop before a request joins a batch."""
    svc: Service
    batcher: Batcher
    metrics: Metrics
    token: str | None
    max_users: int = 1000
    max_k: int = 1000
    max_events: int = 10000

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise ApiError(400, f"k={k} must be between 1 and {self.max_k}", "k")
        return k

    def check_count(self, n: int, what: str) -> None:
        if n < 1 or n > self.max_users:
            raise ApiError(400, f"{what}: {n} given, between 1 and {self.max_users} allowed per request", what)

    def authorize(self, request: Request) -> None:
        if not self.token:
            raise ApiError(403, f"write endpoints are off: no token configured (set {TOKEN_ENV})", "Authorization")
        got = request.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(got[7:].encode(), self.token.encode()):
            raise ApiError(401, "missing or wrong bearer token", "Authorization")

    async def run(self, kind: str, served, opts: dict, queries: list, ex_rows) -> list:
        """One request's queries through the micro-batcher (requests of equal options together)."""
        key = (kind, id(served), orjson.dumps(opts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                                              default=str))
        res = await self.batcher.submit(key, (served, opts, queries, ex_rows), len(queries))
        if isinstance(res, ApiError):
            raise res
        return res


def api_of(request: Request) -> Api:
    """The dependency of every route: the app's Api."""
    return request.app.state.api


# --- checks of request fields ------------------------------------------------------------------

def explain_arg(explain) -> int:
    try:
        return check_explain(explain)
    except ValueError as e:
        raise ApiError(400, str(e), "explain") from None


def known_ids(ids: list, vocab, what: str) -> list:
    ids = [conform(x, vocab) for x in ids]
    bad = [x for x in ids if x not in vocab][:5]
    if bad:
        raise ApiError(404, f"{what}: unknown id(s) {bad}", what)
    return ids


def candidate_ids(candidates, items, vocab) -> list | None:
    """/recommend's candidates (or `items`, their old name; not both)."""
    if candidates is not None and items is not None:
        raise ApiError(400, "pass candidates only (items is its old name)", "items")
    which, ids = ("items", items) if items is not None else ("candidates", candidates)
    return None if ids is None else known_ids(ids, vocab, which)


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


# --- reads ---------------------------------------------------------------------------------------

async def recommend(api: Api, body: RecommendBody) -> dict:
    """Top-k items per user; users with events are ranked from their live history."""
    s = api.svc.served
    rec = s.rec
    users = body.users if isinstance(body.users, list) else [body.users]
    api.check_count(len(users), "users")
    users = [conform(u, rec.users) for u in users]
    if api.svc.unknown == "error":
        bad = [u for u in users if u not in rec.users and u not in s.live][:5]
        if bad:
            raise ApiError(404, f"unknown user id(s) {bad}: not in the model and no events", "users")
    opts = {"k": api.check_k(body.k), "exclude_seen": body.exclude_seen, "where": check_where(body.where, rec),
            "candidates": candidate_ids(body.candidates, body.items, rec.items),
            "diversity": body.diversity, "explain": explain_arg(body.explain)}
    rows = await api.run("recommend", s, opts, users, exclude_rows(body.exclude, len(users), rec.items))
    return {"results": rows}


async def recommend_history(api: Api, body: HistoryBody) -> dict:
    """Top-k items for histories of item ids (users the model does not know)."""
    s = api.svc.served
    rec = s.rec
    hs = body.history
    hists = hs if hs and all(isinstance(h, list) for h in hs) else [hs]
    api.check_count(len(hists), "history")
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
    opts = {"k": api.check_k(body.k), "exclude_given": body.exclude_given, "unknown": body.unknown,
            "where": check_where(body.where, rec), "explain": explain_arg(body.explain),
            "candidates": None if body.candidates is None else known_ids(body.candidates, rec.items, "candidates")}
    rows = await api.run("history", s, opts, hists, exclude_rows(body.exclude, len(hists), rec.items))
    return {"results": rows}


async def _similar(api: Api, of: str, body, vocab_of, opts: dict) -> dict:
    """similar_items (of="items") or similar_users (of="users"): the query ids, known in
    the served model's vocabulary of `of`, and their exclusions."""
    s = api.svc.served
    vocab = vocab_of(s.rec)
    queries = getattr(body, of) if isinstance(getattr(body, of), list) else [getattr(body, of)]
    api.check_count(len(queries), of)
    queries = known_ids(queries, vocab, of)
    opts = {"k": api.check_k(body.k), "space": body.space, **opts}
    rows = await api.run(f"similar_{of}", s, opts, queries, exclude_rows(body.exclude, len(queries), vocab))
    return {"results": rows}


async def similar_items(api: Api, body: SimilarItemsBody) -> dict:
    """Items most similar to each query item (the query item left out)."""
    rec = api.svc.served.rec
    return await _similar(api, "items", body, lambda r: r.items, {
        "where": check_where(body.where, rec),
        "candidates": None if body.candidates is None else known_ids(body.candidates, rec.items, "candidates")})


async def similar_users(api: Api, body: SimilarUsersBody) -> dict:
    """Users most similar to each query user (the query user left out)."""
    users = api.svc.served.rec.users
    return await _similar(api, "users", body, lambda r: r.users, {
        "candidates": None if body.candidates is None else known_ids(body.candidates, users, "candidates")})


# path -> (body model, handler): FastAPI declares them (validation, OpenAPI docs); the front
# answers them directly, without FastAPI's per-request machinery (about 1 ms of a 2-core
# machine's time per request)
READS = {"/recommend": (RecommendBody, recommend), "/recommend/history": (HistoryBody, recommend_history),
         "/similar/items": (SimilarItemsBody, similar_items), "/similar/users": (SimilarUsersBody, similar_users)}


# --- the other routes ------------------------------------------------------------------------------

router = APIRouter()


@router.get("/items/{item_id}")
async def item(item_id: str, api: Api = Depends(api_of)):
    """An item's title and attributes."""
    return api.svc.item(item_id)


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(api: Api = Depends(api_of)):
    svc = api.svc
    s = svc.served
    child = s.scorer.info if s.scorer is not None and s.scorer.alive else None   # the scoring process's
    return {"ready": True, "export": s.export, "users": len(s.rec.users), "items": len(s.rec.items),
            "log_lines": s.lines, "events_through": s.events_through, "live_users": len(s.live.events),
            "reloads": svc.reloads, "loaded_at": s.loaded_at, "scoring_respawns": svc.respawns,
            "scoring": "server" if child is None else "process",
            "scoring_threads": None if child is None else child["threads"],
            "us_per_user": None if child is None else child["us_per_user"]}


@router.get("/metrics")
async def prometheus(api: Api = Depends(api_of)):
    s, metrics = api.svc.served, api.metrics
    metrics.set("items", len(s.rec.items))
    metrics.set("users", len(s.rec.users))
    metrics.set("live_users", len(s.live.events))
    metrics.set("event_log_lines", s.lines)
    metrics.set("reloads_total", api.svc.reloads)
    return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")


# writes: sync, so FastAPI runs them in a thread (fsync and reloads leave the loop free)

@router.post("/events")
def events(body: EventsBody, request: Request, api: Api = Depends(api_of)):
    """Append interactions; durable (fsync) before the answer, visible to the next request."""
    api.authorize(request)
    if not 1 <= len(body.events) <= api.max_events:
        raise ApiError(400, f"events: {len(body.events)} given, between 1 and {api.max_events} allowed", "events")
    return api.svc.add_events([(e.user, e.item, e.ts) for e in body.events])


@router.post("/items")
def items(body: ItemsBody, request: Request, api: Api = Depends(api_of)):
    """Add items to the catalog (Recommender.add_items rules); logged, replayed on restart."""
    api.authorize(request)
    if not 1 <= len(body.items) <= api.max_events:
        raise ApiError(400, f"items: {len(body.items)} given, between 1 and {api.max_events} allowed", "items")
    return api.svc.add_items([dict(r) for r in body.items])


@router.post("/admin/reload")
def reload(request: Request, body: Optional[ReloadBody] = None, api: Api = Depends(api_of)):
    """Load the export again (or another), re-apply the log after it, swap atomically."""
    api.authorize(request)
    export = body.export if body is not None else None
    if export is not None and not os.path.isdir(export):
        raise ApiError(404, f"export: no directory {export!r}", "export")
    try:
        return api.svc.reload(export)
    except ApiError:
        raise
    except Exception as e:
        log.exception("reload failed")
        raise ApiError(400 if export else 500,
                       f"reload failed, still serving the previous export: {error_line(e)}", "export") from None
