"""The follow-up pages in a real headless Chromium (Debian's, driven by Playwright): what an operator
sees and clicks.  One browser and one site for the module; a screenshot of each page is kept under
artifacts/screenshots/ (``make screenshots`` copies them to docs/screenshots/).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest

from conftest import REPO, TEST_KEY
from pagesite import ADMIN_PASSWORD, ADMIN_USER, EVIL, EVIL_EMAIL, Site, page_site

playwright_api = pytest.importorskip("playwright.sync_api")

SHOTS = REPO / "artifacts" / "screenshots"
# Debian's package (make system-deps): the binary itself, not the /usr/bin wrapper script.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def _chromium() -> str:
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        raise RuntimeError("chromium not found: `make system-deps` installs Debian's package")
    pytest.skip("chromium not installed (make system-deps)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with page_site(tmp_path_factory.mktemp("browser")) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    executable = _chromium()
    for old in SHOTS.glob("*.png"):  # only this run's pages end up in artifacts/ (and docs/screenshots/)
        old.unlink()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


class Operator:
    """One browser tab; every alert()/confirm() it meets is recorded (none must ever appear)."""

    def __init__(self, browser: playwright_api.Browser, site: Site) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 800}, base_url=site.url)
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: playwright_api.Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        if self.page.locator("iframe.preview").count():
            # The sandboxed preview is its own (opaque-origin) frame: a full-page shot taken as soon as
            # its text is in the DOM still showed it blank, until it had been scrolled into view once.
            playwright_api.expect(self.page.frame_locator("iframe.preview").locator("body")).to_contain_text("Hello")
            self.page.locator("iframe.preview").scroll_into_view_if_needed()
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def log_in(self) -> None:
        self.page.fill("input[name=user]", ADMIN_USER)
        self.page.fill("input[name=password]", ADMIN_PASSWORD)
        self.page.click("button[type=submit]")


@pytest.fixture
def operator(browser: playwright_api.Browser, site: Site) -> Iterator[Operator]:
    op = Operator(browser, site)
    yield op
    op.context.close()


def test_operator_logs_in_follows_a_sending_searches_and_pauses_it(site: Site, operator: Operator) -> None:
    """Log in, see the list, open the sending in progress, search an address, pause it, see the status
    change, open a subscriber's page."""
    page, expect = operator.page, playwright_api.expect
    processing = site.ids["processing"]

    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=%2Fadmin%2F$"))
    operator.shot("01-login")
    operator.log_in()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.locator("section h2")).to_have_text(
        [re.compile(s) for s in ("Drafts", "Scheduled", "In progress", "Completed", "Archived")]
    )
    row = page.locator(f"tr.sending[data-id='{processing}']")
    expect(row.locator(".status")).to_have_text("sending")
    expect(row.locator("progress")).to_have_attribute("value", "20")
    operator.shot("02-sendings")

    row.get_by_role("link", name=f"Sending No. {processing}").click()
    expect(page.locator("h1")).to_contain_text(f"Sending No. {processing}")
    expect(page.locator("#subject")).to_have_text(f"{EVIL} Winter issue")
    expect(page.locator("iframe.preview")).to_have_attribute("sandbox", "")
    expect(page.frame_locator("iframe.preview").locator("body")).to_contain_text("Hello")
    expect(page.locator("#text-part")).to_contain_text("Unsubscribe")
    expect(page.get_by_role("link", name="Flow run in the Prefect UI")).to_have_attribute(
        "href", re.compile(r"/runs/flow-run/")
    )
    expect(page.locator("section.group h3").first).to_contain_text("To send")
    operator.shot("03-sending")

    page.fill("input[name=q]", "u2")
    page.press("input[name=q]", "Enter")
    expect(page).to_have_url(re.compile(r"[?&]q=u2"))
    addresses = page.locator("tr.recipient td:first-child").all_inner_texts()
    assert addresses and all("u2" in a for a in addresses)
    operator.shot("04-search")

    page.get_by_role("button", name="Pause").click()
    expect(page.locator("h1 .status")).to_have_text("paused")
    expect(page.locator("#reason")).to_contain_text("paused by the operator")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert site.status("processing") == "pause"
    operator.shot("05-paused")

    page.locator("tr.recipient a").first.click()
    expect(page.locator("h1")).to_have_text(re.compile(r"u2\d*@example\.com"))
    expect(page.locator("tr.outcome").first).to_contain_text(f"No. {processing}")
    operator.shot("06-subscriber")

    page.goto(f"/admin/sendings/{processing}")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("h1 .status")).to_have_text("sending")

    # A finished sending: opens, clicks and bounces in their groups; Archive is the only action.
    page.goto(f"/admin/sendings/{site.ids['ended']}")
    expect(page.locator("section.group h3")).to_have_text(
        [re.compile(g) for g in (r"Sent \(34\)", r"Opened \(4\)", r"Clicked \(2\)", r"Bounced \(1\)")]
    )
    expect(page.get_by_role("button", name=re.compile("Pause|Resume"))).to_have_count(0)
    expect(page.locator("summary", has_text="Archive")).to_be_visible()
    operator.shot("07-sending-ended")

    page.goto("/admin/sendings/999999")
    expect(page.locator("p.error")).to_have_text("no sending with id 999999")
    operator.shot("08-not-found")
    assert operator.dialogs == []


def test_html_and_script_in_data_never_run(site: Site, operator: Operator) -> None:
    """A subscriber named <script>alert(1)</script>, a subject holding it and a newsletter whose HTML
    runs a script: shown as text or in the sandboxed preview, no dialog ever opens."""
    page, expect = operator.page, playwright_api.expect
    page.goto("/admin/login")
    operator.log_in()
    page.goto(f"/admin/subscriber?email={EVIL_EMAIL}")
    expect(page.locator("#nom")).to_have_text(EVIL)
    operator.shot("09-subscriber-escaped")
    page.goto("/admin/")
    expect(page.get_by_text(f"{EVIL} Winter issue")).to_be_visible()
    page.goto(f"/admin/sendings/{site.ids['processing']}")
    expect(page.locator("iframe.preview")).to_have_attribute("srcdoc", re.compile(r"<script>alert\('preview'\)"))
    expect(page.frame_locator("iframe.preview").locator("body")).to_contain_text("Hello")
    page.wait_for_timeout(300)  # a script would have run by now
    assert operator.dialogs == []


def test_a_subscriber_unsubscribes_from_the_link_s_page(site: Site, operator: Operator) -> None:
    """The public page behind a message's unsubscribe link: asks first, then leaves the chosen list."""
    from sqlmodel import Session, select

    from conftest import engine_for
    from mailshot_core.content.tokens import UNSUBSCRIBE, make_token
    from mailshot_core.store.models import Subscriber

    page, expect = operator.page, playwright_api.expect
    with Session(engine_for(site.settings)) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == "u10@example.com")).one()
    assert subscriber.id is not None
    token = make_token(TEST_KEY.encode(), UNSUBSCRIBE, site.ids["ended"], subscriber.id)
    page.goto(f"/u/{token}")
    expect(page.locator("h1")).to_have_text("Unsubscribe")
    expect(page.locator("main")).to_contain_text("u10@example.com")
    expect(page.get_by_label("Leave the list “News”")).to_be_checked()
    operator.shot("10-unsubscribe")
    page.get_by_label("Leave all our lists").check()
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    expect(page.locator("main")).to_contain_text("has left all our lists")
    operator.shot("11-unsubscribed")
    with Session(engine_for(site.settings)) as session:
        assert session.get(Subscriber, subscriber.id).status == "unsubscribed"  # type: ignore[union-attr]
    assert operator.dialogs == []


def test_a_draft_is_sent_from_its_page(site: Site, operator: Operator) -> None:
    """A draft shows as such, with Send (behind a confirmation), a test form and Cancel; Send starts it."""
    page, expect = operator.page, playwright_api.expect
    draft = site.ids["draft"]
    page.goto("/admin/login")
    operator.log_in()
    page.goto("/admin/")
    row = page.locator(f"#drafts tr.sending[data-id='{draft}']")
    expect(row.locator(".status")).to_have_text("draft")
    row.get_by_role("link", name=f"Sending No. {draft}").click()
    expect(page.locator("h1 .status")).to_have_text("draft")
    expect(page.get_by_label("Test address")).to_be_visible()
    expect(page.get_by_text("Cancel the sending…")).to_be_visible()
    page.get_by_text("Send now…").click()
    operator.shot("12-draft")
    page.get_by_role("button", name=f"Yes, send sending No. {draft} now").click()
    expect(page.locator("h1 .status")).to_have_text("sending")
    expect(page.get_by_text("Send now…")).to_have_count(0)
    assert site.status("draft") == "processing"
    assert operator.dialogs == []


def test_a_visitor_subscribes_confirms_and_chooses_lists(site: Site, operator: Operator) -> None:
    """The public pages as a visitor sees them: the form (the linked list checked), "check your inbox",
    the confirmation page's button, the confirmed page, and the preferences page it links to."""
    from conftest import engine_for
    from mailshot_core.audience import lists, subscribers
    from mailshot_core.sending import confirmations
    from mailshot_core.store.db import session_scope

    page, expect = operator.page, playwright_api.expect
    engine = engine_for(site.settings)
    with session_scope(engine) as session:
        lists.create_list(session, "weekly", "Weekly news", open=True, description="Every Friday, the week's articles.")
        lists.create_list(session, "agenda", "Events & agenda", open=True, description="Concerts and talks, monthly.")
    page.goto("/subscribe?list=weekly")
    expect(page.get_by_role("checkbox", name="Weekly news")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Events & agenda")).not_to_be_checked()
    page.get_by_label("Email address").fill("reader@example.com")
    page.get_by_label("Name (optional)").fill("Rea Der")
    operator.shot("13-subscribe")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("h1")).to_have_text("Check your inbox")
    expect(page.locator("main")).to_contain_text("reader@example.com")
    operator.shot("14-check-your-inbox")

    with session_scope(engine) as session:
        reader = subscribers.get_subscriber(session, "reader@example.com")
        assert reader.id is not None and reader.status == "pending"
    page.goto(confirmations.link_for(site.settings, reader.id))
    expect(page.locator("h1")).to_have_text("Confirm your subscription")
    operator.shot("15-confirm")
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.locator("h1")).to_have_text("You are subscribed")
    expect(page.locator("main")).to_contain_text("Weekly news")
    operator.shot("16-confirmed")

    page.get_by_role("link", name="Choose which lists you receive").click()
    expect(page.locator("h1")).to_have_text("Your lists")
    page.get_by_role("checkbox", name=re.compile("Events & agenda")).check()
    page.get_by_role("button", name="Save my choices").click()
    expect(page.locator("main")).to_contain_text("Your choices are saved")
    expect(page.get_by_role("checkbox", name=re.compile("Events & agenda"))).to_be_checked()
    operator.shot("17-preferences")
    with session_scope(engine) as session:
        states = {name: state for name, state, _ in subscribers.history(session, "reader@example.com").subscriptions}
    assert states == {"weekly": "valid", "agenda": "valid"}
    assert operator.dialogs == []
