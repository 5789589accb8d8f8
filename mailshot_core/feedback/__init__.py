"""What comes back after sending: one pipeline from every source to recipient statuses and
unsubscriptions (STYLE §7).

- esp_events.py reads each provider's webhook payload; bounces.py parses bounce mail (DSN, ARF,
  VERP) and mailboxes.py reads the bounce mailbox (IMAPS, Maildir); tracking.py records our own
  opens and clicks; unsubscribe_links.py does what an unsubscribe link says.
- effects.py says what each event means (provider tables, precedence); inbox.py stores events
  (deduplicated) and applies them; fail_rule.py is the MAX_FAIL automatic unsubscription and the
  fail-ratio circuit breaker.

Imports sending, audience, content, store, config; never web, legacy or prefect.
"""
