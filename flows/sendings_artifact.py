"""The "sendings" table artifact (key ``mailshot-sendings``): where an operator finds a sending's id
in the Prefect UI (Artifacts > mailshot-sendings) to fill control-mailshot's or send-test's form.

Published by the dispatcher's tick and after every create-and-send and control-mailshot run, only
when its rows changed: an idle site adds no artifact version every ten minutes.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.config import Settings
from mailshot_core.sending.overview import ROWS, sendings_table
from mailshot_core.store.models import utcnow

KEY = "mailshot-sendings"
EMPTY = [{"id": "—", "subject": "no sending yet: create one with create-and-send/form or `mailshot create`"}]


def _latest_table() -> Any:
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[KEY])), limit=1
        )
    if not latest or not isinstance(latest[0].data, str):
        return None
    try:
        return json.loads(latest[0].data)
    except ValueError:
        return None


def publish_sendings(engine: Engine, settings: Settings) -> bool:
    """Publish the table if it changed since the last version; True if a version was added."""
    # The follow-up page's link only when the operator said where the web app is: the default
    # (http://localhost:8000) would be a link to the operator's own machine.
    base_url = settings.base_url if "base_url" in settings.model_fields_set else None
    with Session(engine) as session:
        table: list[dict[str, str]] = sendings_table(session, base_url) or EMPTY
    if _latest_table() == table:
        return False
    create_table_artifact(
        key=KEY,
        table=table,
        description=(
            f"The {ROWS} most recent sendings, newest first, times in UTC (as of {utcnow():%Y-%m-%d %H:%M}). "
            "Use an id in control-mailshot/by-id (send, pause, resume, cancel) or send-test/to-address."
        ),
    )
    return True
