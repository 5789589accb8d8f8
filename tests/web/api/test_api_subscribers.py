"""Subscribers through the API, over real HTTP on SQLite and PostgreSQL: subscribe (double opt-in unless
forced, graceful), look up, unsubscribe, erase (counters kept), bulk import with per-row errors (the CLI's
code), cursor paging with a count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import select

from apisite import ApiSite, problem, serve
from helpers import drive
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, IdempotentRequest, Recipient, Subscriber


@pytest.fixture(scope="module")
def api_site(module_db_url: str) -> Iterator[ApiSite]:
    with serve(module_db_url) as site:
        with site.client() as c:
            assert (
                c.post("/lists", json={"identifier": "club", "title": "Club", "double_optin": True}).status_code == 201
            )
        yield site


def test_subscribe_waits_for_confirmation_unless_forced(api_site: ApiSite) -> None:
    """A double opt-in list leaves the address pending and the confirmation link goes to the relay; forced, it
    is subscribed at once; the trail says it came from the API key."""
    before = len(api_site.relay.messages)
    with api_site.client("subscribers") as c:
        r = c.post("/subscribers", json={"email": "Zoe@Example.com", "lists": ["club"], "nom": "Zoé"})
        assert r.status_code == 200, r.text
        assert r.json() | {"pending": ["club"], "confirmation_sent": True, "status": "pending"} == r.json()
        confirmation = api_site.relay.messages[before]
        assert confirmation.rcpt_tos == ["zoe@example.com"] and b"/confirm/" in confirmation.data
        forced = c.post("/subscribers", json={"email": "zoe@example.com", "lists": ["news"], "force": True}).json()
        assert forced["subscribed"] == ["news"] and forced["status"] == "valid"
        got = c.get("/subscribers/ZOE@example.com").json()
    assert {s["list"]: s["status"] for s in got["lists"]} == {"club": "pending", "news": "valid"}
    assert got["nom"] == "Zoé" and {t["client"] for t in got["trail"]} == {"key-subscribers"}


def test_unsubscribe_then_graceful_subscribe_changes_nothing(api_site: ApiSite) -> None:
    with api_site.client("subscribers") as c:
        c.post("/subscribers", json={"email": "leaver@example.com", "lists": ["news"], "force": True})
        left = c.post("/subscribers/leaver@example.com/unsubscribe", json={"reason": "asked by phone"}).json()
        assert left == {"email": "leaver@example.com", "status": "unsubscribed", "changed": 1}
        again = c.post("/subscribers", json={"email": "leaver@example.com", "lists": ["news"], "graceful": True}).json()
        assert again["kept_unsubscribed"] == ["news"] and again["status"] == "unsubscribed"
        got = c.get("/subscribers/leaver@example.com").json()
        assert got["unsubscribe_reason"] == "asked by phone"
        problem(c.post("/subscribers/nobody@example.com/unsubscribe", json={}), 404)


def test_erase_removes_the_address_and_keeps_the_counters(api_site: ApiSite) -> None:
    """After a sending reached it, the address is erased: not found any more, nowhere in the recipient rows,
    the events nor the API's kept answers, and the sending's counters still equal their recount."""
    with api_site.client("admin", **{"Idempotency-Key": "gone"}) as c:
        c.post("/subscribers", json={"email": "gone@example.com", "lists": ["news"], "force": True})
    with session_scope(api_site.engine) as session:  # the answer kept for a retry names the address
        assert "gone@example.com" in (session.exec(select(IdempotentRequest.body)).one() or "")
    with api_site.client("admin") as c:
        sending = c.post(
            "/sendings", json={"subject": "s", "html": "<p>x</p>", "lists": ["news"], "send": True}
        ).json()["id"]
        drive(api_site.engine, api_site.settings, sending)
        c.post("/feedback", json={"sending_id": sending, "email": "gone@example.com", "kind": "read"})
        api_site.web.settle()
        before = c.get(f"/sendings/{sending}").json()["counters"]
        assert c.delete("/subscribers/gone@example.com").status_code == 204
        problem(c.get("/subscribers/gone@example.com"), 404)
        problem(c.delete("/subscribers/gone@example.com"), 404)
        assert c.get(f"/sendings/{sending}").json()["counters"] == before
    with session_scope(api_site.engine) as session:
        assert session.exec(select(Subscriber).where(Subscriber.email == "gone@example.com")).first() is None
        emails = session.exec(select(Recipient.email).where(Recipient.mailshot_id == sending)).all()
        assert "gone@example.com" not in emails and any(e.endswith("@erased.invalid") for e in emails)
        assert session.exec(select(FeedbackEvent).where(FeedbackEvent.email == "gone@example.com")).first() is None
        assert session.exec(select(IdempotentRequest)).first() is None
        assert sendings.recount(session, sending) == sendings.stored_counters(sendings.get(session, sending))


def test_import_reports_bad_rows_and_imports_the_rest(api_site: ApiSite) -> None:
    """CSV or JSON: each bad row reported by line or position, the others subscribed, a re-import changes nothing."""
    csv = "email,nom\ncsv1@example.com,One\nnot-an-address,Two\ncsv2@example.com,Three\n"
    with api_site.client("subscribers") as c:
        r = c.post("/subscribers/import", params={"list": "club"}, content=csv, headers={"content-type": "text/csv"})
        body = r.json()
        assert body["new_subscriptions"] == 2 and [e["line"] for e in body["errors"]] == [3]
        again = c.post(
            "/subscribers/import", params={"list": "club"}, content=csv, headers={"content-type": "text/csv"}
        )
        assert again.json()["new_subscriptions"] == 0 and again.json()["already_subscribed"] == 2
        rows = [{"email": "json1@example.com"}, {"email": 5}, "x", {"email": "json2@example.com", "lang": "de"}]
        body = c.post("/subscribers/import", params={"list": "club"}, json=rows).json()
        assert body["new_subscriptions"] == 2 and [e["line"] for e in body["errors"]] == [2, 3]
        problem(
            c.post(
                "/subscribers/import", params={"list": "club"}, content="nom\nx\n", headers={"content-type": "text/csv"}
            ),
            422,
        )
        problem(c.post("/subscribers/import", params={"list": "club"}, json={"email": "a@example.com"}), 422)
        # The API's CSV is the schema's: quotes, semicolons or tabs are refused whole (JSON carries such values).
        semicolons = "email;nom\nsemi@example.com;Semi\n"
        body = problem(
            c.post(
                "/subscribers/import", params={"list": "club"}, content=semicolons, headers={"content-type": "text/csv"}
            ),
            422,
        )
        assert "JSON" in body["detail"]
        # A lone CR ends a line, as in a file the CLI reads (schemathesis found it failed the whole body).
        old_mac = "email\rcr1@example.com\rcr2@example.com\r"
        r = c.post(
            "/subscribers/import", params={"list": "club"}, content=old_mac, headers={"content-type": "text/csv"}
        )
        assert r.json()["new_subscriptions"] == 2
        problem(c.post("/subscribers/import", params={"list": "nope"}, json=[]), 404)


def test_subscribers_page_through_with_a_count(api_site: ApiSite) -> None:
    rows = [{"email": f"page{i}@example.com"} for i in range(7)]
    with api_site.client("admin") as c:
        c.post("/lists", json={"identifier": "paged"})
        c.post("/subscribers/import", params={"list": "paged"}, json=rows)
    with api_site.client("read") as c:
        seen, cursor = [], None
        while True:
            params = {"list": "paged", "limit": 3, **({"cursor": cursor} if cursor else {})}
            page = c.get("/subscribers", params=params).json()
            assert page["count"] == 7
            seen += [s["email"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [r["email"] for r in rows]
        assert c.get("/subscribers", params={"list": "paged", "status": "refused"}).json() == {
            "items": [],
            "next_cursor": None,
            "count": 0,
        }
        problem(c.get("/subscribers", params={"cursor": "not a cursor!"}), 422)


def test_import_rows_with_a_nul_are_bad_rows(api_site: ApiSite) -> None:
    """A NUL in a name (PostgreSQL cannot store it) makes that row a reported error, not a 500."""
    rows = [{"email": "nul1@example.com", "nom": "A\x00B"}, {"email": "nul2@example.com"}]
    with api_site.client("subscribers") as c:
        body = c.post("/subscribers/import", params={"list": "club"}, json=rows).json()
    assert body["new_subscriptions"] == 1 and [e["line"] for e in body["errors"]] == [1]
    assert "NUL" in body["errors"][0]["error"]


def test_an_address_with_a_slash_is_found_at_its_own_url(api_site: ApiSite) -> None:
    """RFC 5322 allows '/' in a local part: the address created by POST is read, unsubscribed and erased at
    /subscribers/{email} with the '/' percent-encoded (it arrives decoded; it was a 404); a GET of the
    unsubscribe action's path is still a 405, not a lookup of an address ending in "/unsubscribe"."""
    with api_site.client("subscribers") as c:
        made = c.post("/subscribers", json={"email": "dept/sales@example.com", "lists": ["news"], "force": True})
        assert made.status_code == 200, made.text
        got = c.get("/subscribers/dept%2Fsales@example.com")
        assert got.status_code == 200 and got.json()["email"] == "dept/sales@example.com", got.text
        left = c.post("/subscribers/dept%2Fsales@example.com/unsubscribe", json={}).json()
        assert left["email"] == "dept/sales@example.com" and left["changed"] == 1
        problem(c.get("/subscribers/dept%2Fsales@example.com/unsubscribe"), 405)
        assert c.delete("/subscribers/dept%2Fsales@example.com").status_code == 204
        problem(c.get("/subscribers/dept%2Fsales@example.com"), 404)
