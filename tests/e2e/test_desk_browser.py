"""The desk console in headless Chromium (Debian's, driven by Playwright): an officer signs in with a token, sees
a HIGH alert arrive live, opens the household card, acknowledges the alert and sees its state change.

Screenshots go to test-artifacts/desk/. `make test` installs chromium; without it this test fails, not skips."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from jinshui.kit.tokens import issue_token

CHROMIUM = os.environ.get("JINSHUI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "desk"
WAIT_MS = 30_000
ZHANG = "370502198001011239"  # a valid check digit (GB 11643)

pytestmark = pytest.mark.timeout(180)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not path:
        pytest.fail(
            f"no Chromium at {CHROMIUM} or on PATH: `make test` installs it (apt-get install -y chromium); "
            "set JINSHUI_CHROMIUM to use another build",
            pytrace=False,
        )
    return path


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_an_officer_sees_a_high_alert_opens_the_household_and_acknowledges_it(stack, service_env):
    browser_path = chromium()
    s = await stack(services=("registry", "risk", "gateway"))
    base = s.url("gateway")
    home = service_env["JINSHUI_HOME"]

    def auth(role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=home, role=role, sub=sub)}"}

    async with httpx.AsyncClient(base_url=base, timeout=30) as http, async_playwright() as pw:
        body = {"code": "D1", "address": "金水小区3-2-201", "grid": "G01", "beat": "B1"}
        r = await http.post("/v1/households", json=body, headers=auth("community_admin"))
        assert r.status_code == 201, r.text

        person = {"name": "张伟", "id_number": ZHANG, "phone": "13800138000"}
        arrival = {"household_code": "D1", "person": person, "kind": "tenant", "arrived_at": _now()}
        r = await http.post(
            "/v1/residents/arrivals",
            json={"arrivals": [arrival]},
            headers={**auth("grid_worker"), "Prefer": "wait=20"},
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text

        browser = await pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(
                viewport={"width": 1400, "height": 900}, locale="zh-CN", timezone_id="Europe/Berlin"
            )
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            elsewhere: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(base) else elsewhere.append(req.url))
            console_errors: list[str] = []
            page.on("pageerror", lambda e: console_errors.append(str(e)))

            await page.clock.install()  # the page's own clock, moved below to see a HIGH alert wait too long
            # Chinese by default, with the hint for getting a token in development.
            await page.goto(base + "/desk")
            await expect(page).to_have_title("金水 · 警务工作台")
            await expect(page.locator("#login")).to_contain_text("jinshui token --role police")
            await shot(page, "01-sign-in")

            await page.fill("#token", issue_token(home=home, role="police", sub="officer-7"))
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#feed-state")).to_have_attribute("data-state", "live")
            await expect(page.locator("#alerts-empty")).to_be_visible()

            # A grid worker reports an urgent concern: the HIGH alert appears live, in red, with its rule.
            visit = {"household_code": "D1", "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
            r = await http.post(
                "/v1/visits", json={"visits": [visit]}, headers={**auth("grid_worker"), "Prefer": "wait=20"}
            )
            assert r.status_code == 200 and r.json()["status"] == "applied", r.text
            alert = page.locator("li.alert.level-HIGH[data-status=raised]")
            await expect(alert).to_have_count(1)
            await expect(alert.locator(".rule")).to_have_text("urgent-visit")
            await expect(alert.locator(".explanation")).to_contain_text("D1")
            await expect(alert.locator(".badge.level")).to_have_text("高")
            await expect(page.locator("#glance")).to_contain_text("高 1")
            alert_id = await alert.get_attribute("data-alert-id")
            assert alert_id
            border = await alert.evaluate("e => getComputedStyle(e).borderLeftColor")
            assert border == "rgb(198, 40, 40)", border
            # The raised time is shown in Asia/Shanghai whatever the browser's own zone.
            raised = (await http.get(f"/v1/alerts/{alert_id}", headers=auth("police"))).json()["raised_at"]
            shown = datetime.fromisoformat(raised).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M:%S")
            await expect(alert.locator("time")).to_contain_text(shown)
            await expect(page.locator("body")).to_have_attribute("data-beeps", "1")
            await shot(page, "02-high-alert")
            await expect(alert.locator(".badge.overdue")).to_have_count(0)
            await page.clock.fast_forward("06:00")  # unacknowledged for over 5 minutes: marked
            await expect(alert.locator(".badge.overdue")).to_have_text("超时未签收")
            await expect(page.locator("#glance")).to_contain_text("超时未签收 1")
            await shot(page, "02b-waiting-too-long")

            # The household card, residents masked by default.
            await alert.locator(".act-hh").click()
            card = page.locator("article.household[data-code=D1]")
            await expect(card).to_be_visible()
            await expect(card).to_contain_text("金水小区3-2-201")
            await expect(card.locator("[data-personal-data]")).to_have_attribute("data-personal-data", "masked")
            await expect(card.locator("[data-field=visited_at]").first).to_be_visible()
            await expect(card).to_contain_text("urgent-visit")  # the household's risk alerts
            assert ZHANG not in await card.inner_text()
            await shot(page, "03-household-card")

            # An ID number whole, for a stated purpose: shown, and said to be audited.
            await card.locator(".act-reveal").click()
            await page.fill("#reason", "核查警情当事人身份")
            await page.click("#reason-ok")
            await expect(card.locator("[data-personal-data]")).to_have_attribute("data-personal-data", "whole")
            await expect(card.locator("[data-field=id_number]")).to_have_text(ZHANG)
            await expect(card.locator(".audited")).to_contain_text("核查警情当事人身份")
            await shot(page, "03b-id-number-revealed")

            # Acknowledge in the page, with a note: the state changes, here and at the owner.
            await alert.locator(".act-ack").click()
            await expect(page.locator("#reason-dialog")).to_be_visible()
            await page.fill("#reason", "已电话联系网格员，民警前往")
            await page.click("#reason-ok")
            done = page.locator(f"li.alert[data-alert-id='{alert_id}']")
            await expect(done).to_have_attribute("data-status", "acknowledged")
            await expect(done.locator(".badge.status")).to_have_text("已签收")
            await expect(done.locator(".act-ack")).to_have_count(0)
            await expect(done.locator(".act-resolve")).to_be_visible()
            await expect(card.locator("td[data-field=status]")).to_have_text("已签收")  # the card follows too
            detail = (await http.get(f"/v1/alerts/{alert_id}", headers=auth("police"))).json()
            assert detail["status"] == "acknowledged" and detail["acknowledged_by"] == "officer-7"
            await shot(page, "04-acknowledged")

            # English on request; the feed's own acknowledged event keeps the state (no flip back).
            await page.select_option("#lang", "en")
            await expect(page).to_have_title("Jinshui · Police desk")
            await expect(done.locator(".badge.status")).to_have_text("acknowledged")
            await shot(page, "05-english")

            # The API reference, rendered from /openapi.json with nothing from elsewhere.
            await page.goto(base + "/docs")
            await expect(page.locator("details", has_text="/v1/alerts/{alert_id}/acknowledge")).to_have_count(1)
            await expect(page.locator("#ops")).to_contain_text("Acknowledge an alert")
            await shot(page, "06-docs")

            assert not elsewhere, f"the desk fetched from elsewhere: {elsewhere}"
            assert not console_errors, console_errors
        finally:
            await browser.close()


def test_the_desk_page_is_public_and_self_contained():
    """No token needed for the page itself; its assets come only from the gateway."""
    from fastapi.testclient import TestClient

    from jinshui.gateway.main import build

    client = TestClient(build().app)
    start = time.monotonic()
    page = client.get("/desk")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("desk.js", "desk.css"):
        r = client.get(f"/desk/static/{asset}")
        assert r.status_code == 200 and "https://" not in r.text
    assert client.get("/desk/static/..%2Fdesk_routes.py").status_code == 404
    assert time.monotonic() - start < 10
