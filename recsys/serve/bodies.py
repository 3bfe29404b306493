"""The HTTP API's request bodies (pydantic models: types, bounds, no unknown fields)."""
from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from recsys.serve.service import MAX_ID_CHARS

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
