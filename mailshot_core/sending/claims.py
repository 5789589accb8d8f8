"""A sending's recipients and their claims: materialise once, claim a batch, workers and crash recovery.

- **Materialise** (:func:`materialise`): one ``INSERT .. SELECT`` of the lists' valid subscribers,
  never a Python loop over them; or chunk by chunk in subscriber id order (:func:`materialise_next`),
  so that the first batch is claimed before the last subscriber is read.
- **Claim** (:func:`claim`): one short transaction selects the next due rows, fewest tries first, and
  marks them ``claimed`` with the worker's token.  PostgreSQL uses ``FOR UPDATE SKIP LOCKED``; SQLite
  transactions start with ``BEGIN IMMEDIATE``, which serialises writers so the select-then-update is
  atomic.  The same step re-checks each recipient's subscriptions: gone -> ``kill``.
- **Recovery** (:func:`recover_dead_workers`): a dead worker's ``claimed`` rows go back to ``todo``,
  its ``sending`` rows become ``unknown`` (in doubt: never resent unless the operator asks,
  :func:`resend_unknown`).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, func, or_, text, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from mailshot_core.errors import InvalidInput, InvalidState
from mailshot_core.sending.runs import add_in_doubt
from mailshot_core.sending.sendings import apply_counter_deltas, counter_deltas, get, list_identifiers
from mailshot_core.store.models import (
    MailingList,
    Mailshot,
    MailshotStatus,
    Recipient,
    RecipientStatus,
    SendWorker,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

S = RecipientStatus
_RECIPIENT = Recipient.__table__  # type: ignore[attr-defined]
_SUBSCRIBER = Subscriber.__table__  # type: ignore[attr-defined]
_SUBSCRIPTION = Subscription.__table__  # type: ignore[attr-defined]
_MAILING_LIST = MailingList.__table__  # type: ignore[attr-defined]


def _list_ids(session: Session, mailshot: Mailshot) -> list[int]:
    return [
        m.id
        for m in session.exec(select(MailingList).where(col(MailingList.identifier).in_(list_identifiers(mailshot))))
        if m.id is not None
    ]


# The sending's audience: valid subscribers holding a valid subscription to one of its lists (a pending
# double opt-in subscription sends nothing), each once however many of the lists they are on.  Walks
# subscriber's primary key in order and probes subscription's primary key; never a Python loop.
_AUDIENCE = """
    FROM subscriber s
    WHERE s.status = 'valid' AND s.id > :after {upto}
      AND EXISTS (
        SELECT 1 FROM subscription sub
        WHERE sub.subscriber_id = s.id AND sub.status = 'valid' AND sub.list_id IN :list_ids
      )
"""


def _insert_audience(session: Session, mailshot_id: int, list_ids: list[int], after: int, upto: int | None) -> int:
    """INSERT .. SELECT of the audience with ``after < subscriber id <= upto``; returns the rows added.

    ``ON CONFLICT DO NOTHING`` on (mailshot_id, email) makes a re-run (after a crash during
    materialisation, or two runs materialising together) add only what is missing.
    """
    dialect = session.get_bind().dialect.name
    conflict = "ON CONFLICT (mailshot_id, email) DO NOTHING" if dialect in ("sqlite", "postgresql") else ""
    audience = _AUDIENCE.format(upto="" if upto is None else "AND s.id <= :upto")
    stmt = text(
        f"INSERT INTO recipient (mailshot_id, email, subscriber_id, status, tries) "
        f"SELECT :mailshot_id, s.email, s.id, 'todo', 0 {audience} ORDER BY s.id {conflict}"
    ).bindparams(bindparam("list_ids", expanding=True))
    params: dict[str, object] = {"mailshot_id": mailshot_id, "list_ids": list_ids, "after": after}
    if upto is not None:
        params["upto"] = upto
    return int(session.execute(stmt, params).rowcount)  # type: ignore[attr-defined]


def _mark_materialised(session: Session, mailshot: Mailshot) -> None:
    """Every recipient is in: ``total`` is their count (only todo rows were added: nothing else moves)."""
    total = session.exec(select(func.count()).select_from(Recipient).where(Recipient.mailshot_id == mailshot.id)).one()
    mailshot.total = int(total)
    mailshot.materialised = True
    mailshot.updated_at = utcnow()
    session.add(mailshot)
    session.flush()


def materialise(session: Session, mailshot: Mailshot) -> int:
    """Freeze the whole recipient list: one set-based INSERT .. SELECT, deduplicated across lists."""
    assert mailshot.id is not None
    _insert_audience(session, mailshot.id, _list_ids(session, mailshot), 0, None)
    _mark_materialised(session, mailshot)
    return mailshot.total


def materialised_up_to(session: Session, mailshot_id: int) -> int:
    """Where a streamed materialisation goes on: chunks are committed in subscriber id order, so the
    highest subscriber already in the sending is where an interrupted run stopped (0: from the start)."""
    last = session.exec(select(func.max(Recipient.subscriber_id)).where(Recipient.mailshot_id == mailshot_id)).one()
    return int(last or 0)


def materialise_next(session: Session, mailshot: Mailshot, after: int, limit: int) -> int | None:
    """Add the next ``limit`` subscribers of the audience after subscriber id ``after``: recipients are
    claimable while the rest is still being read (issue 16).  Returns the last subscriber id taken, or
    None when the audience is exhausted (then the sending is marked materialised, ``total`` recounted).

    Each chunk raises ``total`` by what it added in the same transaction, so the counters stay
    derivable from the rows at every commit.  The caller holds the sending's row (``lock=True``) and
    checks it is still processing: a cancel between chunks must not get new ``todo`` rows.
    """
    assert mailshot.id is not None
    list_ids = _list_ids(session, mailshot)
    upto = session.execute(
        text(
            f"SELECT max(id) FROM (SELECT s.id {_AUDIENCE.format(upto='')} ORDER BY s.id LIMIT :limit) AS chunk"
        ).bindparams(bindparam("list_ids", expanding=True)),
        {"list_ids": list_ids, "after": after, "limit": limit},
    ).scalar()
    if upto is None:
        _mark_materialised(session, mailshot)
        return None
    added = _insert_audience(session, mailshot.id, list_ids, after, int(upto))
    if added:
        apply_counter_deltas(session, mailshot.id, {"total": added})
    return int(upto)


@dataclass(frozen=True)
class ClaimedRecipient:
    id: int
    email: str
    tries: int
    throttled: int
    nom: str
    lang: str
    status: str
    listes: tuple[str, ...]
    subscriber_id: int


def unclaimed_at_least(session: Session, mailshot_id: int, n: int) -> bool:
    """Whether ``n`` never-claimed rows wait (a bounded scan of ix_recipient_claim, not a count of all)."""
    waiting = (
        select(Recipient.id)
        .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.status) == S.TODO)
        .offset(n - 1)
        .limit(1)
    )
    return session.exec(waiting).first() is not None


def claim(
    session: Session, mailshot: Mailshot, token: str, limit: int, now: datetime
) -> tuple[list[ClaimedRecipient], int]:
    """Reserve up to ``limit`` due recipients for this worker; returns (sendable, killed).

    Fewest tries first (never-tried addresses before retries: the original's retry-at-end rule),
    then by id.  On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several workers claim in parallel
    without waiting on each other; on SQLite the transaction holds the write lock from BEGIN
    IMMEDIATE (db.py), which makes the select-then-update atomic.  Uses ix_recipient_claim.

    Recipients whose subscriber left the sending's lists since materialisation are re-checked here
    (DESIGN §4.4) and become ``kill`` instead of being sent.
    """
    assert mailshot.id is not None
    # Core statements on the session's connection, each selecting this claim by its token: ORM loading
    # and 2,000-parameter IN lists cost ~13 us per recipient, 9 % of a message's CPU (bench/RESULTS.md).
    r, sub, subn, ml = _RECIPIENT, _SUBSCRIBER, _SUBSCRIPTION, _MAILING_LIST
    due = (
        sa_select(r.c.id)
        .where(
            r.c.mailshot_id == mailshot.id,
            r.c.status == S.TODO,
            or_(r.c.next_attempt_at.is_(None), r.c.next_attempt_at <= now),
        )
        .order_by(r.c.tries, r.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    conn = session.connection()
    taken = conn.execute(
        update(r).where(r.c.id.in_(due)).values(status=S.CLAIMED, claim_token=token, claimed_at=now)
    ).rowcount
    if not taken:
        return [], 0
    # This claim's rows only: a batch that tops its queue up claims again with the same token while
    # rows of its earlier claims still wait for a connection (connections.Supply).
    mine = and_(r.c.claim_token == token, r.c.status == S.CLAIMED, r.c.claimed_at == now)
    rows = conn.execute(
        sa_select(r.c.id, r.c.email, r.c.tries, r.c.throttled, sub.c.nom, sub.c.lang, sub.c.status, sub.c.id)
        .select_from(r.outerjoin(sub, sub.c.id == r.c.subscriber_id))
        .where(mine)
        .order_by(r.c.tries, r.c.id)
    ).all()
    names = list_identifiers(mailshot)
    memberships: dict[int, list[str]] = {}
    for sub_id, identifier in conn.execute(
        sa_select(subn.c.subscriber_id, ml.c.identifier)
        .select_from(subn.join(ml, ml.c.id == subn.c.list_id))
        .where(
            subn.c.subscriber_id.in_(sa_select(r.c.subscriber_id).where(mine)),
            subn.c.status == SubscriptionStatus.VALID,
            ml.c.identifier.in_(names),
        )
    ).all():
        memberships.setdefault(sub_id, []).append(identifier)
    sendable: list[ClaimedRecipient] = []
    gone: list[int] = []
    for rid, email, tries, throttled, nom, lang, status, sub_id in rows:
        listes = memberships.get(sub_id, []) if sub_id is not None else []
        if status != SubscriberStatus.VALID or not listes:
            gone.append(rid)
            continue
        ordered = tuple(n for n in names if n in listes)
        sendable.append(ClaimedRecipient(rid, email, tries, throttled, nom or "", lang or "", status, ordered, sub_id))
    if gone:
        session.execute(
            update(Recipient)
            .where(col(Recipient.id).in_(gone))
            .values(status=S.KILL, claim_token=None, last_error="unsubscribed before sending")
        )
        apply_counter_deltas(session, mailshot.id, counter_deltas((S.CLAIMED, S.KILL) for _ in gone))
    return sendable, len(gone)


def release(session: Session, mailshot_id: int, token: str) -> int:
    """Give back this worker's claimed (not yet attempted) rows; they stay due, no try consumed."""
    result = session.execute(
        update(Recipient)
        .where(col(Recipient.claim_token) == token, col(Recipient.status) == S.CLAIMED)
        .values(status=S.TODO, claim_token=None, claimed_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- workers and crash recovery ---------------------------------------------------------------------


def new_worker_token() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def register_worker(session: Session, mailshot_id: int, token: str, now: datetime, run_id: str | None = None) -> None:
    """``run_id``: the send run the worker's batch belongs to, whose record gets its in-doubt messages."""
    hostname, pid, _ = token.rsplit(":", 2)
    session.add(
        SendWorker(
            token=token,
            mailshot_id=mailshot_id,
            hostname=hostname,
            pid=int(pid),
            started_at=now,
            heartbeat_at=now,
            run_id=run_id,
        )
    )
    session.flush()


def heartbeat(session: Session, token: str, now: datetime) -> None:
    session.execute(update(SendWorker).where(col(SendWorker.token) == token).values(heartbeat_at=now))


def unregister_worker(session: Session, mailshot_id: int, token: str) -> None:
    release(session, mailshot_id, token)
    worker = session.get(SendWorker, token)
    if worker is not None:
        session.delete(worker)
    session.flush()


def workers_besides(session: Session, mailshot_id: int, pid: int) -> int:
    """Registered workers of the sending in other processes than ``pid`` (fast mode's pool is up)."""
    others = or_(col(SendWorker.pid) != pid, col(SendWorker.hostname) != socket.gethostname()[:40])
    query = select(func.count()).select_from(SendWorker).where(col(SendWorker.mailshot_id) == mailshot_id, others)
    return int(session.exec(query).one())


def _is_dead(worker: SendWorker, now: datetime, lease: timedelta) -> bool:
    if worker.heartbeat_at < now - lease:
        return True
    if worker.hostname == socket.gethostname()[:40]:
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def recover_dead_workers(session: Session, mailshot_id: int, now: datetime, lease: timedelta) -> tuple[int, int]:
    """Take back the claims of workers that died; returns (released, in_doubt).

    A dead worker's ``claimed`` rows were never attempted: back to ``todo``.  Its ``sending`` rows
    were handed to the transport and their fate is unknown (SMTP has no idempotency key): they
    become ``unknown``, are reported, and are not resent unless the operator asks
    (:func:`resend_unknown`).  A worker is dead when its heartbeat is older than the lease, or at
    once when it ran on this host and its process no longer exists.
    """
    released = in_doubt = 0
    workers = session.exec(select(SendWorker).where(SendWorker.mailshot_id == mailshot_id)).all()
    for worker in workers:
        if not _is_dead(worker, now, lease):
            continue
        released += int(
            session.execute(
                update(Recipient)
                .where(col(Recipient.claim_token) == worker.token, col(Recipient.status) == S.CLAIMED)
                .values(status=S.TODO, claim_token=None, claimed_at=None)
            ).rowcount  # type: ignore[attr-defined]
        )
        n = int(
            session.execute(
                update(Recipient)
                .where(col(Recipient.claim_token) == worker.token, col(Recipient.status) == S.SENDING)
                .values(
                    status=S.UNKNOWN, claim_token=None, last_error="in flight when its worker died: maybe delivered"
                )
            ).rowcount  # type: ignore[attr-defined]
        )
        apply_counter_deltas(session, mailshot_id, counter_deltas((S.SENDING, S.UNKNOWN) for _ in range(n)))
        add_in_doubt(session, worker.run_id, n)
        in_doubt += n
        session.delete(worker)
    # Rows claimed by a token with no worker row at all (registration lost): same treatment.
    orphan = and_(
        col(Recipient.mailshot_id) == mailshot_id,
        col(Recipient.status).in_([S.CLAIMED, S.SENDING]),
        ~col(Recipient.claim_token).in_(select(SendWorker.token).where(SendWorker.mailshot_id == mailshot_id)),
    )
    orphans = session.exec(select(Recipient.status, func.count()).where(orphan).group_by(col(Recipient.status))).all()
    if orphans:
        session.execute(
            update(Recipient).where(orphan, col(Recipient.status) == S.CLAIMED).values(status=S.TODO, claim_token=None)
        )
        session.execute(
            update(Recipient)
            .where(orphan, col(Recipient.status) == S.SENDING)
            .values(status=S.UNKNOWN, claim_token=None, last_error="in flight when its worker died: maybe delivered")
        )
        for status, n in orphans:
            if status == S.SENDING:
                apply_counter_deltas(session, mailshot_id, counter_deltas((S.SENDING, S.UNKNOWN) for _ in range(n)))
                in_doubt += n
            else:
                released += n
    session.flush()
    return released, in_doubt


def resend_unknown(session: Session, mailshot_id: int) -> int:
    """Operator's choice: put the in-doubt recipients back in the queue (they may get it twice)."""
    mailshot = get(session, mailshot_id)
    n = int(
        session.execute(
            update(Recipient)
            .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.status) == S.UNKNOWN)
            .values(
                status=S.TODO, claim_token=None, next_attempt_at=None, last_error="resent at the operator's request"
            )
        ).rowcount  # type: ignore[attr-defined]
    )
    return _queued_again(session, mailshot, S.UNKNOWN, n)


def requeue_failed(session: Session, mailshot_id: int, reason: str) -> int:
    """Operator's repair after a mistake of theirs (a wrong setting failed recipients): the sending's
    ``fail`` rows go back to the queue with their tries reset and the reason kept in their last error.
    Bounces (the address is bad) and rows in doubt (``mailshot resend-unknown``) are not touched; an
    ended sending goes back to ``processing``, a paused one stays paused until resumed."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("say why the failed recipients are queued again (--reason)")
    mailshot = get(session, mailshot_id, lock=True)
    if mailshot.status in (MailshotStatus.ARCHIVE, MailshotStatus.CANCEL, MailshotStatus.DRAFT):
        raise InvalidState(f"sending {mailshot_id} is '{mailshot.status}': nothing to requeue")
    n = int(
        session.execute(
            update(Recipient)
            .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.status) == S.FAIL)
            .values(
                status=S.TODO,
                tries=0,
                throttled=0,
                claim_token=None,
                next_attempt_at=None,
                last_error=f"requeued by the operator: {reason}"[:1000],
            )
        ).rowcount  # type: ignore[attr-defined]
    )
    return _queued_again(session, mailshot, S.FAIL, n)


def _queued_again(session: Session, mailshot: Mailshot, was: str, n: int) -> int:
    """Counters of ``n`` rows moved from ``was`` back to the queue; an ended sending has work again."""
    assert mailshot.id is not None
    apply_counter_deltas(session, mailshot.id, counter_deltas((was, S.TODO) for _ in range(n)))
    if n and mailshot.status == MailshotStatus.END:
        mailshot.status = MailshotStatus.PROCESSING
        mailshot.ended_at = None
        session.add(mailshot)
    session.flush()
    return n


def unknown_recipients(session: Session, mailshot_id: int) -> list[str]:
    return list(
        session.exec(
            select(Recipient.email)
            .where(Recipient.mailshot_id == mailshot_id, col(Recipient.status) == S.UNKNOWN)
            .order_by(col(Recipient.id))
        ).all()
    )
