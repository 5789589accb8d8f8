"""Screenshots of the Prefect UI as an operator of Mailshot sees it (`make prefect-screenshots`).

Starts a real `prefect server start` (UI on), the dev relay and `mailshot serve` on loopback, creates a
list of subscribers, sends one sending through the create-and-send/form deployment (with a test
address) and leaves a draft, then drives Debian's Chromium with Playwright and saves, under
docs/screenshots/:

- prefect-01-deployments.png   the deployments list (names that say what they do);
- prefect-02-run-form.png      create-and-send's run form, filled in (HTML in a text area, transport
                               drop-down, lists, cadence, test address);
- prefect-03-run-artifacts.png a finished send-mailshot run's Artifacts tab (counters, progress);
- prefect-04-sendings.png      the mailshot-sendings table artifact (ids, status, progress, links).

Everything runs in a temporary directory and is stopped at the end; nothing is needed but the
virtualenv and Chromium (`make system-deps`).  Not part of `make test`: pictures are for people.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from deployment_check import BIN, Processes, check_env, free_port, run, wait_http
from schedule_check import api, wait_for

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "screenshots"
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
SUBSCRIBERS = 300
HTML = """<h1>Issue 42: "Spring" at the festival</h1>
<p class="lead">Hello {{ nom }}, it's our 'spring' issue.</p>
<p><a href="https://example.org/programme">The programme</a></p>"""


def chromium() -> str:
    for path in CHROMIUM:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium not found: `make system-deps` installs Debian's package")
    return found


def main() -> int:
    from playwright.sync_api import expect, sync_playwright

    work = Path(tempfile.mkdtemp(prefix="mailshot-prefect-ui-"))
    port, relay_port = free_port(), free_port()
    ui, base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = check_env(
        work,
        port,
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="events,flow_runs",  # as the README advises
        MAILSHOT_SMTP_HOST="127.0.0.1",
        MAILSHOT_SMTP_PORT=str(relay_port),
        MAILSHOT_FROM_EMAIL="news@example.org",
        MAILSHOT_FROM_NAME="Example News",
        MAILSHOT_BASE_URL="http://127.0.0.1:8000",  # where `mailshot web` would be: the table's links
    )
    procs = Processes(env, work, work / "logs")
    start = procs.start

    mailshot = [sys.executable, "-m", "mailshot_core.cli"]
    try:
        start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        start("relay", [*mailshot, "relay", "--port", str(relay_port), "--out-dir", str(work / "out")])
        run([*mailshot, "lists", "create", "news", "--title", "Example News"], env, work)
        (work / "subs.csv").write_text(
            "email,nom\n" + "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(SUBSCRIBERS))
        )
        run([*mailshot, "subscribers", "import", "subs.csv", "--list", "news"], env, work)
        (work / "draft.html").write_text("<p>Next month, {{ nom }}</p>")
        run(
            [*mailshot, "create", "--subject", "May issue (draft)", "--html", "draft.html", "--list", "news"], env, work
        )
        wait_http(f"{base}/health", 120)
        start("serve", [*mailshot, "serve"])
        form = wait_for("serve registers create-and-send/form", lambda: _deployment(base, "create-and-send/form"), 120)
        tomorrow = time.strftime("%Y-%m-%dT08:00", time.gmtime(time.time() + 86400))
        scheduled = [
            "create",
            "--subject",
            "June issue",
            "--html",
            "draft.html",
            "--list",
            "news",
            "--start-at",
            tomorrow,
        ]
        run([*mailshot, *scheduled], env, work)
        api(
            base,
            "POST",
            f"/deployments/{form['id']}/create_flow_run",
            {
                "parameters": {
                    "subject": "Issue 42, {{ nom }}",
                    "html": HTML,
                    "lists": ["news"],
                    "test_address": "editor@example.org",
                }
            },
        )
        sent = wait_for("the form's sending ends and its run completes", lambda: _finished_send_run(base), 240)
        # A dispatcher tick publishes the sendings table as it is now (the form's run published it
        # while its sending was starting).
        sweep = _deployment(base, "dispatch-mailshots/sweep")
        assert sweep is not None
        tick = api(base, "POST", f"/deployments/{sweep['id']}/create_flow_run", {})
        wait_for("the dispatcher tick completes", lambda: _state(base, tick["id"]) == "COMPLETED", 120)

        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), headless=True)

            def page_of(height: int, width: int = 1440) -> Any:
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.set_default_timeout(30_000)
                return page

            page = page_of(1200)
            page.goto(f"{ui}/deployments")
            expect(page.get_by_text("control-mailshot").first).to_be_visible()
            # 10 per page by default: show all of them.  The select opens on Space (a synthetic click
            # opened and closed it at once).
            page.get_by_role("button", name="10", exact=True).focus()
            page.keyboard.press("Space")
            page.get_by_role("option", name="25", exact=True).click()
            expect(page.get_by_text("to-address").first).to_be_visible()
            page.wait_for_timeout(1500)  # the activity bars are filled in after the list
            shoot(page, "prefect-01-deployments")

            page = page_of(2300)  # the whole form without the UI's inner scrolling
            page.goto(f"{ui}/deployments/deployment/{form['id']}/run")
            fill_form(page, expect)
            shoot(page, "prefect-02-run-form")

            page = page_of(1000)
            mid = sent["parameters"]["mailshot_id"]
            page.goto(f"{ui}/runs/flow-run/{sent['id']}")
            page.get_by_text("Artifacts", exact=True).first.click()
            record = page.get_by_role("link", name=re.compile(rf"mailshot-{mid}-run"))
            expect(record).to_be_visible()
            expect(page.get_by_role("link", name=re.compile(rf"mailshot-{mid}-counters"))).to_be_visible()
            expect(page.get_by_text(f"mailshot:{mid}").first).to_be_visible()
            shoot(page, "prefect-03-run-artifacts")
            # The run's record (what this run sent, failed, retried, and how it ended) is one wide row:
            # a page wide enough to show all its columns.
            record_url = record.get_attribute("href")
            page = page_of(700, width=3000)
            page.goto(f"{ui}{record_url}")
            expect(page.get_by_text("sent by this run", exact=True)).to_be_visible()
            expect(page.get_by_text("sending status at the end", exact=True)).to_be_in_viewport()
            shoot(page, "prefect-04-run-record")
            page = page_of(1000)

            page.goto(f"{ui}/artifacts/key/mailshot-sendings")
            page.locator("a[href*='/artifacts/artifact/']").first.click()  # the latest version
            expect(page.get_by_text("May issue (draft)", exact=True)).to_be_visible()
            expect(page.get_by_text("finished", exact=True)).to_be_visible()
            shoot(page, "prefect-05-sendings")
            browser.close()
        print(f"screenshots in {OUT}: " + ", ".join(sorted(p.name for p in OUT.glob("prefect-*.png"))))
        return 0
    except Exception:
        procs.print_logs()
        raise
    finally:
        procs.stop()


def _deployment(base: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = api(base, "GET", f"/deployments/name/{name}")
    except urllib.request.HTTPError:
        return None
    return found


def _state(base: str, flow_run_id: str) -> str:
    state: str = api(base, "GET", f"/flow_runs/{flow_run_id}")["state_type"]
    return state


def shoot(page: Any, name: str) -> None:
    page.wait_for_timeout(500)  # transitions and fonts settle
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def _finished_send_run(base: str) -> dict[str, Any] | None:
    runs = api(
        base,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}, "name": {"like_": "mailshot-"}}},
    )
    return runs[0] if runs else None


def fill_form(page: Any, expect: Any) -> None:
    """Fill create-and-send's custom run form as an operator would (what the screenshot shows)."""
    expect(page.get_by_text("Subject line").first).to_be_visible()

    def field(name: str) -> Any:
        """The inputs of one parameter: the fieldset beside its label (innermost match: the last)."""
        label = page.locator("span.schema-form-property__label", has_text=re.compile(rf"^{name}( \(Optional\))?$"))
        return page.locator("div.schema-form-property", has=label).last.locator("fieldset").first

    field("subject").get_by_role("textbox").fill("Issue 42, {{ nom }}")
    html = field("html").get_by_role("textbox")
    html.fill(HTML)
    box = html.bounding_box()  # the text area is one line high: drag its corner, as an operator would
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + 110, steps=5)
    page.mouse.up()
    field("lists").get_by_role("button", name="Add item").click()
    field("lists").get_by_role("textbox").last.fill("news")
    field("test_address").get_by_role("textbox").fill("editor@example.org")
    field("rate_per_hour").get_by_role("spinbutton").fill("2000")
    # Last, the transport drop-down left open: the picture shows the choices (its button opens on Space;
    # a synthetic click opened and closed it at once).
    field("transport").locator("button.p-select-button__control").focus()
    page.keyboard.press("Space")
    expect(page.get_by_role("option", name="mailjet", exact=True)).to_be_visible()
    page.mouse.move(5, 5)  # no option highlighted by a resting pointer


if __name__ == "__main__":
    sys.exit(main())
