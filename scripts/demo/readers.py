"""The demo's readers: open, click and unsubscribe from the messages the local relay wrote, over HTTP,
as mail clients do (usage: readers.py DEMO_OUT BASE_URL)."""

from __future__ import annotations

import email
import email.policy
import re
import sys
from pathlib import Path

import httpx

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
APPLE_PROXY = "Mozilla/5.0"  # what Apple Mail Privacy Protection's image proxy sends


def main(out_dir: str, base_url: str) -> int:
    messages = []
    for path in sorted(Path(out_dir).glob("*.eml"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if str(msg["Subject"]).startswith("[TEST]"):
            continue
        html = str(msg.get_body(("html",)).get_content())  # type: ignore[union-attr]
        pixel = re.search(r'<img src="([^"]+/o/[^"]+)"', html)
        click = re.search(r'href="([^"]+/c/[^"]+)"', html)
        unsubscribe = str(msg["List-Unsubscribe"]).split(",")[0].strip().strip("<>")
        if pixel and click and unsubscribe.startswith(base_url):
            messages.append((pixel[1], click[1], unsubscribe))
    if len(messages) < 304:
        print(f"readers: only {len(messages)} tracked messages found in {out_dir}", file=sys.stderr)
        return 1
    with httpx.Client(timeout=10, headers={"User-Agent": BROWSER}) as client:
        for pixel, _, _ in messages[:300]:
            client.get(pixel).raise_for_status()
        for _, click, _ in messages[:100]:
            response = client.get(click)
            assert response.status_code == 302, response.text
        target = response.headers["location"]
        for _, _, unsubscribe in messages[300:303]:
            client.post(unsubscribe, files={"List-Unsubscribe": (None, "One-Click")}).raise_for_status()
        client.get(messages[303][0], headers={"User-Agent": APPLE_PROXY}).raise_for_status()
    print(f"readers: 300 opens, 100 clicks (redirected to {target}), 3 one-click unsubscriptions, 1 proxy open")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
