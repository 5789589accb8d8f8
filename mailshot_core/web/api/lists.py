"""``/lists``: list, look up, create, update (SPIP's ``lists``), through audience/lists.py: the CLI's rules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailshot_core.audience import lists
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailingList
from mailshot_core.web.api import fields, idempotency, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.context import context

router = APIRouter(tags=["lists"])
# content/confirmation.check_template: a list's own confirmation text carries the link to confirm.
CONFIRM_TEXT_PATTERN = r"^$|^[^\x00]*\{\{ *url_confirm *\}\}[^\x00]*$"
ListName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=lists.LIST_NAME_LENGTH,
        pattern=fields.LIST_PATTERN,
        description="The list's identifier.",
    ),
]


class ListOut(BaseModel):
    identifier: str
    title: str
    description: str
    open: bool  # visitors may subscribe themselves
    from_name: str
    from_email: str  # empty: the sending's sender or MAILSHOT_FROM_EMAIL
    double_optin: bool
    lang: str
    confirm_subject: str | None  # None: the default confirmation message in the list's language
    confirm_text: str | None
    subscribers: int  # valid subscriptions
    pending: int  # waiting for their confirmation

    @classmethod
    def of(cls, mlist: MailingList, subscribers: int, pending: int) -> ListOut:
        fields = {name: getattr(mlist, name) for name in lists.FIELDS}
        return cls(identifier=mlist.identifier, subscribers=subscribers, pending=pending, **fields)


class ListFields(BaseModel):
    """Absent or null: unchanged (at creation, the default); see audience/lists.py for each rule."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"description": "News of the week, every Monday.", "open": True}]},
    )

    title: Annotated[str, fields.line(lists.TITLE_LENGTH)] | None = None
    description: Annotated[str, fields.text(lists.DESCRIPTION_LENGTH)] | None = None
    open: fields.Flag | None = None
    from_name: Annotated[str, fields.line(lists.FROM_NAME_LENGTH)] | None = None
    from_email: fields.OptionalEmail | None = None
    double_optin: fields.Flag | None = None
    lang: fields.Lang | None = None
    confirm_subject: Annotated[str, fields.line(lists.CONFIRM_SUBJECT_LENGTH)] | None = Field(
        None, description="A template ({{ nom }}, {{ lists }} ...); empty: the default subject."
    )
    confirm_text: Annotated[str, Field(max_length=lists.CONFIRM_TEXT_LENGTH, pattern=CONFIRM_TEXT_PATTERN)] | None = (
        Field(None, description="A template with the link {{ url_confirm }}; empty: the default text.")
    )


class NewList(ListFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"identifier": "news", "title": "Weekly news", "open": True, "lang": "en"}]},
    )

    identifier: fields.ListName


def _out(session: Session, mlist: MailingList) -> ListOut:
    counts = dict((m.id, n) for m, n in lists.list_lists(session))
    return ListOut.of(mlist, counts.get(mlist.id, 0), lists.pending_counts(session).get(mlist.id or 0, 0))


def _fields(body: ListFields) -> dict[str, Any]:
    return body.model_dump(exclude={"identifier"}, exclude_none=True)


@router.get("/lists", operation_id="listLists", response_model=list[ListOut])
def list_lists(request: Request, caller: Annotated[Caller, Depends(require("read"))]) -> list[ListOut]:
    """Every list with its numbers of subscribers and of pending subscriptions."""
    with Session(context(request).engine) as session:
        pending = lists.pending_counts(session)
        return [ListOut.of(m, n, pending.get(m.id or 0, 0)) for m, n in lists.list_lists(session)]


@router.get("/lists/{identifier}", operation_id="getList", response_model=ListOut)
def get_list(request: Request, identifier: ListName, caller: Annotated[Caller, Depends(require("read"))]) -> ListOut:
    with Session(context(request).engine) as session:
        return _out(session, lists.get_list(session, identifier))


_GET_LINK = {"GetList": {"operationId": "getList", "parameters": {"identifier": "$response.body#/identifier"}}}


@idempotency.creating(
    router,
    "/lists",
    operation_id="createList",
    response_model=ListOut,
    link=_GET_LINK,
    problems=problems.responses(409),
)
async def create_list(
    request: Request, body: NewList, caller: Annotated[Caller, Depends(require("admin"))]
) -> Response:
    """A new list (closed, double opt-in and without a sender of its own unless said)."""

    def work() -> ListOut:
        with session_scope(context(request).engine) as session:
            title = body.title or ""
            fields = {k: v for k, v in _fields(body).items() if k != "title"}
            return _out(session, lists.create_list(session, body.identifier, title, **fields))

    return await idempotency.respond(request, caller, 201, work)


@router.patch(
    "/lists/{identifier}", operation_id="updateList", response_model=ListOut, responses={200: {"links": _GET_LINK}}
)
async def update_list(
    request: Request, identifier: ListName, body: ListFields, caller: Annotated[Caller, Depends(require("admin"))]
) -> ListOut:
    """Change the given fields; an empty from_email/from_name removes the list's own sender, an empty
    confirmation subject or text brings back the default message."""

    def work() -> ListOut:
        with session_scope(context(request).engine) as session:
            return _out(session, lists.update_list(session, identifier, **_fields(body)))

    return await run_in_threadpool(work)
