"""`send-mailshot/dask`: fast mode whose batch workers run on a Dask cluster (extra `mailshot[dask]`).

The same flow as send_mailshot.py; only the task runner differs.  `MAILSHOT_DASK_ADDRESS` names
the scheduler (``tcp://host:8786``: workers on several machines, each with the MAILSHOT_* settings
of the sending), or ``local`` for a local cluster of one single-threaded process per core.  Every
worker claims from the mailshot database, so the guarantees do not depend on Dask (DESIGN §4).
"""

from __future__ import annotations

import os

from prefect_dask.task_runners import DaskTaskRunner

from flows.send_mailshot import send_mailshot
from mailshot_core.config import get_settings


def dask_runner() -> DaskTaskRunner:
    address = get_settings().dask_address
    if address and address != "local":
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        # Processes, one thread each: rendering and SMTP are CPU-bound Python (the GIL).
        cluster_kwargs={"n_workers": os.cpu_count() or 2, "threads_per_worker": 1, "processes": True},
    )


send_mailshot_dask = send_mailshot.with_options(task_runner=dask_runner())  # type: ignore[arg-type]
