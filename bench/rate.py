"""Real-time pace precision (not a test): configured vs achieved rate.

    .venv/bin/python bench/rate.py --per-minute 1200 --seconds 30

Sends a paced sending (MAILSHOT per-minute cap, i.e. 20 msg/s for 1200) to the local dev
relay for about SECONDS seconds, then prints the achieved rate, its deviation from the
configured one, and the fullest 1-second and 60-second windows.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import create, drive, seed
from mailshot_core.config import load_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.store.db import get_engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-minute", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    rate = args.per_minute / 60
    count = int(rate * args.seconds) + 1
    work = Path(tempfile.mkdtemp(prefix="mailshot-rate-"))
    with DevRelay() as relay:
        settings = load_settings(
            database_url=f"sqlite:///{work}/rate.db", smtp_port=relay.port, smtp_host=relay.host, smtp_connections=4
        )
        engine = get_engine(settings.database_url)
        seed(engine, work, count)
        mid = create(engine, settings, rate_per_minute=args.per_minute)
        drive(engine, settings, mid)
        stamps = sorted(m.received_at.timestamp() for m in relay.messages)
    span = stamps[-1] - stamps[0]
    achieved = (len(stamps) - 1) / span
    worst_1s = max(bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps))
    worst_60s = max(bisect.bisect_left(stamps, t + 60.0) - i for i, t in enumerate(stamps))
    print(
        f"configured {rate:.2f} msg/s ({args.per_minute}/min); achieved {achieved:.2f} msg/s over {span:.1f} s "
        f"({100 * (achieved - rate) / rate:+.2f}%); fullest 1 s window {worst_1s} (even spacing: {rate:.0f}), "
        f"fullest 60 s window {worst_60s} (budget {args.per_minute})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
