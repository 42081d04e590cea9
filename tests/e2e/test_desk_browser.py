"""The desk console in headless Chromium (Debian's, driven by Playwright): an officer signs in with a token, sees
a HIGH alert arrive live, opens the household card, acknowledges the alert and sees its state change.

Screenshots go to test-artifacts/desk/. `make test` installs chromium; without it this test fails, not skips."""

from __future__ import annotations

import os
import shutil
import time
import uuid
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


# A camera that "sees" the QR code of household D2: BarcodeDetector and getUserMedia stood in for, as Linux
# Chromium has no barcode detection and this machine no camera.
FAKE_CAMERA = """
window.BarcodeDetector = class {
  static async getSupportedFormats() { return ["qr_code"]; }
  async detect() { return [{ rawValue: "D2", format: "qr_code" }]; }
};
navigator.mediaDevices.getUserMedia = async () => {
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 64;
  canvas.getContext("2d").fillRect(0, 0, 64, 64);
  return canvas.captureStream(5);
};
"""


async def test_an_officer_works_the_shift_history_handover_scan_card_and_joint_incident(stack, service_env):
    browser_path = chromium()
    s = await stack(services=("registry", "incidents", "risk", "gateway"))
    base = s.url("gateway")
    home = service_env["JINSHUI_HOME"]

    def auth(role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=home, role=role, sub=sub)}"}

    async with httpx.AsyncClient(base_url=base, timeout=30) as http, async_playwright() as pw:

        async def applied(path: str, body: dict, role: str, sub: str | None = None) -> dict:
            headers = {**auth(role, sub), "Prefer": "wait=30", "Idempotency-Key": str(uuid.uuid4())}
            r = await http.post(path, json=body, headers=headers)
            assert r.status_code == 200 and r.json()["status"] == "applied", r.text
            return r.json()

        for code, address in (("D2", "金水小区5-1-302"), ("D3", "金水小区6-2-101")):
            body = {"code": code, "address": address, "grid": "G01", "beat": "B1"}
            r = await http.post("/v1/households", json=body, headers=auth("community_admin"))
            assert r.status_code == 201, r.text
        person = {"name": "张伟", "id_number": ZHANG, "phone": "13800138000"}
        arrival = {"household_code": "D2", "person": person, "kind": "tenant", "arrived_at": _now()}
        await applied("/v1/residents/arrivals", {"arrivals": [arrival]}, "grid_worker")
        tag = {
            "tag": "unstable_person",
            "person": {"id_number": ZHANG},
            "since": "2026-01-01",
            "reason": "多次扬言报复",
        }
        await applied("/v1/tags", {"tags": [tag]}, "community_admin")
        unit = {"name": "老张面馆", "category": "restaurant", "licence_number": "JY1370102", "household_code": "D2"}
        r = await http.post("/v1/units", json=unit, headers=auth("grid_worker"))
        assert r.status_code == 201, r.text
        # Both sides of one dispute: the grid worker's report, then a police call naming the tagged resident.
        report = {"kind": "dispute", "household_code": "D2", "reported_at": _now(), "description": "楼上漏水争吵"}
        incident_id = (await applied("/v1/reports", {"reports": [report]}, "grid_worker", "gw-1"))["outcomes"][0]["ref"]
        call = {
            "call_id": "110-20261127-0007",
            "received_at": _now(),
            "category": "dispute",
            "household_code": "D2",
            "description": "邻里纠纷，一方情绪激动",
            "persons": [{"name": "张伟", "id_number": ZHANG}],
        }
        joined = await applied("/v1/police-calls", {"calls": [call]}, "police_platform", "police-platform")
        assert joined["outcomes"][0]["ref"] == incident_id
        for to, role in (("accepted", "mediator"), ("assigned", "community_admin"), ("in_mediation", "mediator")):
            extra = {"assignee": "mediator-1"} if to == "assigned" else {}
            r = await http.post(
                f"/v1/incidents/{incident_id}/transitions",
                json={"to": to, "reason": f"{role}: {to}", **extra},
                headers=auth(role, f"{role}-1"),
            )
            assert r.status_code == 200, r.text
        mediation = {
            "mediators": ["mediator-1", "金水大妈-王"],
            "method": "homely",
            "held_at": _now(),
            "outcome": "agreed",
            "agreement": "楼上修好管道，赔偿楼下500元",
        }
        r = await http.post(f"/v1/incidents/{incident_id}/mediations", json=mediation, headers=auth("mediator"))
        assert r.status_code == 201, r.text
        # Another call naming him, elsewhere and of another kind: its own incident, a second HIGH alert.
        other = {**call, "call_id": "110-20261127-0008", "category": "theft", "household_code": "D3"}
        await applied("/v1/police-calls", {"calls": [other]}, "police_platform", "police-platform")

        browser = await pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS, headless=True)
        try:
            # Without a camera API the scan falls back to typing the code.
            plain = await (await browser.new_context(locale="zh-CN")).new_page()
            plain.set_default_timeout(WAIT_MS)
            await plain.goto(base + "/desk")
            await plain.fill("#token", issue_token(home=home, role="police", sub="officer-8"))
            await plain.click("#login-form button[type=submit]")
            if not await plain.evaluate("'BarcodeDetector' in window"):
                await plain.click("#hh-scan")
                await expect(plain.locator("#lookup-error")).to_contain_text("请直接输入户码")
                assert await plain.evaluate("document.activeElement.id") == "hh-code"

            context = await browser.new_context(
                viewport={"width": 1400, "height": 1000}, locale="zh-CN", timezone_id="America/New_York"
            )
            await context.add_init_script(FAKE_CAMERA)
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            console_errors: list[str] = []
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            await page.goto(base + "/desk")
            await page.fill("#token", issue_token(home=home, role="police", sub="officer-8"))
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#feed-state")).to_have_attribute("data-state", "live")

            tagged = page.locator("li.alert[data-level=HIGH]", has=page.locator(".explanation", has_text="0007"))
            await expect(tagged).to_have_count(1, timeout=WAIT_MS)
            await expect(tagged.locator(".explanation")).to_contain_text("110-20261127-0007")
            urgent = page.locator("li.alert[data-level=HIGH]", has=page.locator(".explanation", has_text="0008"))
            await expect(urgent).to_have_count(1, timeout=WAIT_MS)

            # Dismissing needs a reason; once given, the alert leaves the open list and stays in the shift's history.
            await urgent.locator(".act-dismiss").click()
            await page.click("#reason-ok")
            await expect(page.locator("#reason-error")).to_have_text("请填写理由")
            await page.fill("#reason", "报警人误报，已电话核实")
            await page.click("#reason-ok")
            await expect(urgent).to_have_count(0)  # the default filter: open alerts
            await page.select_option("#f-status", "")
            await expect(urgent).to_have_attribute("data-status", "dismissed")
            await expect(urgent.locator(".meta")).to_contain_text("报警人误报，已电话核实")
            await expect(page.locator("#desk")).to_have_attribute("data-shown", "2")
            await page.fill("#f-text", "D3")
            await expect(page.locator("#desk")).to_have_attribute("data-shown", "1")
            await page.select_option("#f-status", "dismissed")
            await page.fill("#f-text", "")
            await expect(page.locator("li.alert")).to_have_count(1)
            await page.select_option("#f-level", "HIGH")
            await expect(page.locator("li.alert[data-status=dismissed][data-level=HIGH]")).to_have_count(1)
            await shot(page, "07-shift-history-filtered")
            await page.select_option("#f-status", "open")
            await page.select_option("#f-level", "")

            # Acknowledge the tagged-person alert, then hand over: the beat's open alerts at a glance.
            await tagged.locator(".act-ack").click()
            await page.click("#reason-ok")
            await expect(tagged).to_have_attribute("data-status", "acknowledged")
            await page.click("#handover")
            beat = page.locator("article.handover section[data-beat=B1]")
            await expect(beat.locator("h4")).to_have_text("警格 B1：高 1 · 中 0 · 低 0")
            row = beat.locator("tbody tr")
            await expect(row).to_have_count(1)
            await expect(row.locator("[data-field=rule]")).to_have_text("tagged-person-police-call")
            await expect(row.locator("[data-field=status]")).to_have_text("已签收")
            await expect(row.locator("[data-field=acknowledged_by]")).to_have_text("officer-8")
            await shot(page, "08-handover")

            # The household from its QR code: residents with their tags (sensitive, shown to police), units.
            await page.click("#hh-scan")
            card = page.locator("article.household[data-code=D2]")
            await expect(card).to_be_visible()
            await expect(page.locator("#scan-dialog")).not_to_be_visible()
            await expect(card.locator("td[data-field=tags] .tag.sensitive")).to_have_text("不稳定人员")
            await expect(card.locator(".tags-by-role")).to_contain_text("police")
            await expect(card).to_contain_text("老张面馆")
            await expect(card).to_contain_text("tagged-person-police-call")
            assert ZHANG not in await card.inner_text()
            await shot(page, "09-household-by-qr")

            # The joint incident: both sides' sources, the timeline, the mediation record.
            await card.locator(f"button:text-is('{incident_id}')").click()
            incident = page.locator(f"article.incident[data-incident-id='{incident_id}']")
            await expect(incident.locator(".badge.joint")).to_be_visible()
            await expect(incident.locator("td[data-field=origin]")).to_have_text(["网格上报", "警情（公安）"])
            await expect(incident.locator("td[data-field=external_id]").nth(1)).to_have_text("110-20261127-0007")
            await expect(incident.locator("td[data-field=what]")).to_have_count(6)
            details = incident.locator("td[data-field=detail]")
            await expect(details.nth(1)).to_contain_text("警情（公安） 110-20261127-0007；关联依据: ")
            await expect(details.nth(1)).to_contain_text("household_code, category_group, time_window")
            await expect(details.nth(2)).to_contain_text("reported → accepted")
            await expect(incident.locator("td[data-field=agreement]")).to_have_text("楼上修好管道，赔偿楼下500元")
            assert ZHANG not in await incident.inner_text()
            await shot(page, "10-joint-incident")

            await page.select_option("#lang", "en")
            await expect(incident.locator("td[data-field=origin]")).to_have_text(["grid report", "police call"])
            await shot(page, "11-joint-incident-english")
            assert not console_errors, console_errors
        finally:
            await browser.close()
