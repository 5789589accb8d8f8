"""A sending's life: creation and status machine (sendings.py), recipients and their claims
(claims.py), the batch pipeline (pipeline.py: connections.py, ledger.py, context.py), pace
(pacing.py), start/next/end of a run (lifecycle.py), test messages (one_message.py), the tracked
link table (tracked_links.py), the dispatcher's decisions (dispatch.py), archive/purge (archive.py).

Owns the exactly-once guarantees and the counters.  Imports transports, audience, content, store,
config; never feedback, legacy, web or prefect (the flows drive it).
"""
