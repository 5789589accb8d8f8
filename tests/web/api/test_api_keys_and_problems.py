"""API keys (bearer, hashed, scoped, revocable, last use recorded) and RFC 9457 problems for every error,
over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import select

from apisite import ApiSite, problem, serve
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import ApiKey
from mailshot_core.web.api.keys import create_key, hash_key, revoke_key
from mailshot_core.web.api.routing import MAX_BODY


@pytest.fixture(scope="module")
def api_site(module_db_url: str) -> Iterator[ApiSite]:
    with serve(module_db_url) as site:
        yield site


def test_no_key_or_a_bad_key_is_401_with_a_bearer_challenge(api_site: ApiSite) -> None:
    """Without a key, with a malformed, unknown or altered key: 401, WWW-Authenticate: Bearer, nothing read."""
    good = api_site.keys["read"]
    altered = good[:-1] + ("A" if good[-1] != "A" else "B")
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {altered}"},
        {"Authorization": good},
    ):
        with api_site.client(None, **headers) as c:
            r = c.get("/lists")
        problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_scopes_are_ordered_and_a_refusal_is_403(api_site: ApiSite) -> None:
    """read may read, not write; subscribers may subscribe, not create sendings; admin may create lists."""
    with api_site.client("read") as c:
        assert c.get("/lists").status_code == 200
        body = problem(c.post("/subscribers", json={"email": "x@example.org", "lists": ["news"]}), 403)
        assert "'read'" in body["detail"] and "'subscribers'" in body["detail"]
    with api_site.client("subscribers") as c:
        problem(c.post("/sendings", json={"subject": "s", "html": "<p>x</p>", "lists": ["news"]}), 403)
    with api_site.client("send") as c:
        problem(c.post("/lists", json={"identifier": "by-send"}), 403)
    with api_site.client("admin") as c:
        assert c.post("/lists", json={"identifier": "by-admin"}).status_code == 201


def test_only_the_hash_is_stored_and_use_is_recorded(api_site: ApiSite) -> None:
    """The database holds the key's SHA-256, never the key; a request records the key's last use."""
    key = api_site.keys["send"]
    with api_site.client("send") as c:
        assert c.get("/sendings").status_code == 200
    with session_scope(api_site.engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.name == "key-send")).one()
        assert row.secret_hash == hash_key(key) and key not in (row.secret_hash, row.prefix)
        assert row.last_used_at is not None


def test_a_revoked_key_is_refused(api_site: ApiSite) -> None:
    with session_scope(api_site.engine) as session:
        _, key = create_key(session, "soon-gone", "read")
    with api_site.client(None, Authorization=f"Bearer {key}") as c:
        assert c.get("/lists").status_code == 200
        with session_scope(api_site.engine) as session:
            revoke_key(session, "soon-gone")
        problem(c.get("/lists"), 401)


def test_every_error_is_a_problem(api_site: ApiSite) -> None:
    """Unknown path 404, wrong method 405 (with every allowed method), too large 413, wrong media type 415,
    schema violation 422 (with where), domain refusal 422/404/409: all application/problem+json."""
    with api_site.client() as c:
        problem(c.get("/nothing-here"), 404)
        problem(c.get("/sendings/999999"), 404)
        r = c.delete("/lists/news")
        problem(r, 405)
        assert r.headers["allow"] == "GET, PATCH"
        problem(c.post("/lists", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"}), 413)
        problem(
            c.post("/lists", content=b"identifier=x", headers={"content-type": "application/x-www-form-urlencoded"}),
            415,
        )
        body = problem(c.post("/lists", json={"identifier": "ok", "open": 1}), 422)
        assert body["errors"][0]["loc"] == ["body", "open"]
        problem(c.post("/lists", json={"identifier": "news"}), 409)
        # A NUL reaching PostgreSQL was a 500 (found by schemathesis): refused by the schema first.
        problem(c.get("/subscribers", params={"list": "a\x00b"}), 422)
        problem(c.get("/lists/a%00b"), 422)
        problem(c.get("/subscribers/a%00b@example.org"), 422)
        problem(c.post("/subscribers", json={"email": "a@example.org", "lists": ["nope"]}), 404)
        problem(c.post("/sendings", json={"subject": "{{ broken", "html": "<p>x</p>", "lists": ["news"]}), 422)
        body = problem(
            c.post(
                "/lists",
                content=b'{"identifier": "x", "title": "\\ud800"}',
                headers={"content-type": "application/json"},
            ),
            422,
        )
        assert "body.title" in body["detail"]


def test_the_schema_and_docs_are_served(api_site: ApiSite) -> None:
    """OpenAPI 3.1 at /api/v1/openapi.json (with the bearer scheme and the create -> get links), docs at /api/v1/docs."""
    with httpx.Client(base_url=api_site.url) as c:
        schema = c.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.1")
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
        links = schema["paths"]["/sendings"]["post"]["responses"]["201"]["links"]
        assert links["GetSending"]["operationId"] == "getSending"
        assert c.get("/docs").status_code == 200
