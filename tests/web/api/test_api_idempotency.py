"""Idempotency-Key on creates, over real HTTP on SQLite and PostgreSQL: a retry returns the first answer
and creates nothing more, even when the retries race; a key reused for another request is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select

from apisite import ApiSite, problem, serve
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import ApiKey, IdempotentRequest, Mailshot, utcnow
from mailshot_core.web.api.idempotency import claim, fingerprint

NEW = {"subject": "Hello {{ nom }}", "html": "<p>Hello {{ nom }}</p>", "lists": ["news"]}


@pytest.fixture(scope="module")
def api_site(module_db_url: str) -> Iterator[ApiSite]:
    with serve(module_db_url) as site:
        yield site


def _sendings(site: ApiSite) -> int:
    with session_scope(site.engine) as session:
        return int(session.exec(select(func.count()).select_from(Mailshot)).one())


def test_a_retried_create_creates_one_sending(api_site: ApiSite) -> None:
    """The same key and body twice: the same 201 answer, the second marked replayed, one sending."""
    before = _sendings(api_site)
    with api_site.client("send", **{"Idempotency-Key": "create-once"}) as c:
        first = c.post("/sendings", json=NEW)
        again = c.post("/sendings", json=NEW)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert _sendings(api_site) == before + 1
    with api_site.client("send") as c:  # without a key, each POST creates
        assert c.post("/sendings", json=NEW).json()["id"] != first.json()["id"]
    assert _sendings(api_site) == before + 2


def test_a_key_reused_for_another_request_is_refused(api_site: ApiSite) -> None:
    before = _sendings(api_site)
    with api_site.client("send", **{"Idempotency-Key": "reused"}) as c:
        assert c.post("/sendings", json=NEW).status_code == 201
        body = problem(c.post("/sendings", json={**NEW, "subject": "Another"}), 422)
    assert "another request" in body["detail"]
    assert _sendings(api_site) == before + 1


def test_a_failed_create_releases_its_key(api_site: ApiSite) -> None:
    """A refused request changed nothing: the same key works once the request is right."""
    with api_site.client("send", **{"Idempotency-Key": "fix-and-retry"}) as c:
        problem(c.post("/sendings", json={**NEW, "lists": ["missing"]}), 404)
        assert c.post("/sendings", json={**NEW, "lists": ["missing"]}).status_code == 404
    with session_scope(api_site.engine) as session:
        from mailshot_core.audience.lists import create_list

        create_list(session, "missing")
    with api_site.client("send", **{"Idempotency-Key": "fix-and-retry"}) as c:
        assert c.post("/sendings", json={**NEW, "lists": ["missing"]}).status_code == 201


def test_a_retry_while_the_first_runs_is_409(api_site: ApiSite) -> None:
    """The key is claimed before the work: a retry arriving meanwhile is told to wait, and creates nothing."""
    with session_scope(api_site.engine) as session:
        key_id = session.exec(select(ApiKey.id).where(ApiKey.name == "key-send")).one()
    body = httpx.Request("POST", "http://x/", json=NEW).content
    assert claim(api_site.engine, key_id, "in-flight", fingerprint("POST", "/api/v1/sendings", "", body)) is None
    before = _sendings(api_site)
    with api_site.client("send", **{"Idempotency-Key": "in-flight"}) as c:
        problem(c.post("/sendings", content=body, headers={"content-type": "application/json"}), 409)
    assert _sendings(api_site) == before


def test_racing_retries_create_one_sending(api_site: ApiSite) -> None:
    """Eight clients send the same create at once: one sending; each answer is its 201 or a 409 (in flight)."""
    before = _sendings(api_site)
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def post() -> None:
        with api_site.client("send", **{"Idempotency-Key": "race"}) as c:
            start.wait()
            answers.append(c.post("/sendings", json=NEW))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted({r.status_code for r in answers}) in ([201], [201, 409])
    assert len({r.json()["id"] for r in answers if r.status_code == 201}) == 1
    assert _sendings(api_site) == before + 1


def test_keys_are_forgotten_after_24_hours(api_site: ApiSite) -> None:
    """A key older than a day is purged when another is claimed: the same key then creates again."""
    with api_site.client("send", **{"Idempotency-Key": "yesterday"}) as c:
        first = c.post("/sendings", json=NEW).json()["id"]
    with session_scope(api_site.engine) as session:
        row = session.exec(select(IdempotentRequest).where(IdempotentRequest.key == "yesterday")).one()
        row.created_at = utcnow() - timedelta(hours=24, minutes=1)
        session.add(row)
    with api_site.client("send", **{"Idempotency-Key": "yesterday"}) as c:
        second = c.post("/sendings", json=NEW)
    assert second.status_code == 201 and "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first
