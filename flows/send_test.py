"""`send-test`: one personalised message, subject prefixed ``[TEST] ``, to any address."""

from __future__ import annotations

from prefect import flow, get_run_logger

from mailshot_core.config import get_settings
from mailshot_core.sending.one_message import send_test as send_test_message
from mailshot_core.store.db import get_engine


@flow(name="send-test", flow_run_name="test-{mailshot_id}-{email}")
def send_test(mailshot_id: int, email: str) -> str:
    """Send a test of sending MAILSHOT_ID to EMAIL (a subscriber or not); returns its Message-ID.

    Args:
        mailshot_id: The sending to test.
        email: Any address; the subject is prefixed [TEST].
    """
    settings = get_settings()
    msg = send_test_message(get_engine(settings.database_url), settings, mailshot_id, email)
    get_run_logger().info("test of sending %s sent to %s (%s)", mailshot_id, msg.envelope_to, msg.message_id)
    return msg.message_id
