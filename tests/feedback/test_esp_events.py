"""Webhook payload readers on arbitrary input: a list of events or a MalformedPayload, never a crash
(which the web app would turn into a 500 and the provider into hours of retries)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshot_core.feedback import esp_events
from mailshot_core.feedback.esp_events import MalformedPayload

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Objects with the fields the readers look at, holding any JSON value: the likeliest shapes of bad input.
FIELDS = [
    "event",
    "email",
    "type",
    "event_id",
    "msys",
    "msg",
    "metadata",
    "Payload",
    "CustomID",
    "rcpt_meta",
    "tags",
    "X-Mailin-custom",
    "time",
    "ts",
]
near_events = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(near_events, max_size=3).map(lambda v: json.dumps(v).encode()),
    st.lists(
        st.fixed_dictionaries({"msys": st.dictionaries(st.text(max_size=6), near_events, max_size=2)}), max_size=2
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)


def _check(reader: Any, body: bytes) -> None:
    try:
        events = reader(body)
    except MalformedPayload as exc:
        assert str(exc)  # says what is wrong
        return
    assert isinstance(events, list)


@pytest.mark.parametrize("provider", list(esp_events.READERS))
@settings(max_examples=40, deadline=None)
@given(body=bodies)
def test_readers_accept_or_explain(provider: str, body: bytes) -> None:
    """Any body: events, or MalformedPayload with a reason."""
    _check(esp_events.READERS[provider], body)


@settings(max_examples=40, deadline=None)
@given(events=st.lists(near_events, max_size=3))
def test_mandrill_form_accepts_or_explains(events: list[dict[str, Any]]) -> None:
    from urllib.parse import urlencode

    _check(esp_events.mandrill, urlencode({"mandrill_events": json.dumps(events)}).encode())


@settings(max_examples=40, deadline=None)
@given(
    message=json_values,
    record=st.dictionaries(st.sampled_from(["eventType", "mail", "bounce", "notificationType"]), json_values),
)
def test_ses_records_accept_or_explain(message: Any, record: dict[str, Any]) -> None:
    for m in (message, json.dumps(record)):
        try:
            esp_events.ses_event({"MessageId": "x", "Message": m if isinstance(m, str) else json.dumps(m)})
        except MalformedPayload as exc:
            assert str(exc)


@settings(max_examples=60, deadline=None)
@given(
    source=st.sampled_from(["mailjet", "sparkpost", "mandrill", "brevo", "ses", "smtp"]),
    kind=st.sampled_from(["bounce", "out_of_band", "Bounce", "Complaint", "open", "weird"]),
    event=st.dictionaries(st.sampled_from(["bounce_class", "hard_bounce", "bounce", "complaint"]), json_values),
)
def test_the_mapping_never_fails_on_an_odd_event(source: str, kind: str, event: dict[str, Any]) -> None:
    """apply-feedback maps any stored event to an effect (an odd one to "ignore"): no poison event."""
    from mailshot_core.feedback.effects import Effect, classify

    assert isinstance(classify(source, kind, json.dumps(event)), Effect)
