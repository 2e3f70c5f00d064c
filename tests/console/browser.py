"""The console in a real headless browser: Debian's Chromium driven by
Playwright (nothing downloads a browser). Started by tests/e2e/console.rs
against a real `bulkhead serve`; agents act through the HTTP API.

Environment: BULKHEAD_URL, BULKHEAD_{AGENT,OTHER,APPROVER,SELF,ADMIN}_TOKEN;
BULKHEAD_SCREENSHOTS=DIR also saves a screenshot of each page there.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

BASE = os.environ["BULKHEAD_URL"]
TOKENS = {k: os.environ[f"BULKHEAD_{k.upper()}_TOKEN"] for k in ["agent", "other", "approver", "self", "admin"]}
SHOTS = os.environ.get("BULKHEAD_SCREENSHOTS")
HOSTILE = '<script>alert("xss")</script><img src=x onerror=alert(1)><a href="javascript:alert(2)">click</a>'
# The counter's `name` is at most 64 characters.
SHORT = '<script>alert(3)</script><img src=x onerror=alert(4)>'


def api(who, method, path, body=None):
    req = urllib.request.Request(BASE + path, method=method)
    req.add_header("Authorization", "Bearer " + TOKENS[who])
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def gated_call(who, sid, note):
    status, call = api(who, "POST", f"/v1/sessions/{sid}/calls", {"tool": "gated-counter", "input": {"name": note}})
    assert status == 202 and call["status"] == "pending_approval", (status, call)
    return call["id"]


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)


def sign_in(browser, who):
    ctx = browser.new_context()
    page = ctx.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(BASE + "/ui/signin")
    page.fill("#token", TOKENS[who])
    page.click("form.signin button")
    page.wait_for_load_state()
    assert "/ui/signin" not in page.url, f"{who} did not get past sign-in: {page.url}"
    return ctx, page, dialogs


def no_injection(page, dialogs):
    """Hostile text shown as text: no dialog fired, no element injected."""
    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert page.locator("main script").count() == 0, "a <script> element was injected"
    assert page.locator("main img").count() == 0, "an <img> element was injected"
    assert page.locator('a[href^="javascript:"]').count() == 0, "a javascript: link was injected"


def check(name, fn, *args):
    fn(*args)
    print("ok", name, flush=True)


def signed_out_pages_redirect(browser):
    page = browser.new_page()
    for path in ["/ui/", "/ui/approvals", "/ui/sessions", "/ui/tools", "/ui/usage", "/ui/nonexistent"]:
        page.goto(BASE + path)
        assert page.url == BASE + "/ui/signin", (path, page.url)
    shot(page, "signin")
    page.fill("#token", "bh_not_a_real_token_at_all")
    page.click("form.signin button")
    assert page.locator("p.error").inner_text() == "That token is not valid."
    page.close()


def cookies_carry_their_flags(ctx):
    cookie = [c for c in ctx.cookies() if c["name"] == "bulkhead_console"][0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert cookie["path"] == "/ui"
    assert time.time() < cookie["expires"] <= time.time() + 8 * 3600 + 60, cookie


def headers_are_strict(page):
    r = page.request.get(BASE + "/ui/sessions")
    h = r.headers
    assert "frame-ancestors 'none'" in h["content-security-policy"], h
    assert "script-src 'self'" in h["content-security-policy"], h
    assert h["x-content-type-options"] == "nosniff"


def main():
    status, _ = api("agent", "GET", "/v1/sessions")
    assert status == 200
    status, sess = api("agent", "POST", "/v1/sessions", {"labels": {"team": HOSTILE[:200]}})
    assert status == 201, sess
    sid = sess["id"]
    status, _ = api("agent", "POST", f"/v1/sessions/{sid}/messages", {"role": "user", "content": HOSTILE})
    assert status == 201
    status, done = api("agent", "POST", f"/v1/sessions/{sid}/calls", {"tool": "counter", "input": {"name": SHORT}})
    assert status == 200 and done["status"] == "succeeded", done

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        check("signed-out pages redirect to sign-in; a wrong token is refused", signed_out_pages_redirect, browser)

        actx, approver, adialogs = sign_in(browser, "approver")
        check("the console cookie is HttpOnly, SameSite=Strict, expiring", cookies_carry_their_flags, actx)
        check("pages carry a strict CSP, nosniff and frame-ancestors", headers_are_strict, approver)
        assert approver.url == BASE + "/ui/approvals", approver.url
        approver.wait_for_selector("#inbox p.empty")
        approver.evaluate("window.__notReloaded = true")

        # An agent's gated call appears in the open inbox without a reload.
        cid = gated_call("agent", sid, SHORT)
        approver.wait_for_selector(f"#approval-{cid}", timeout=15000)
        assert approver.evaluate("window.__notReloaded === true"), "the inbox page was reloaded"
        item = approver.locator(f"#approval-{cid}")
        assert item.locator(".requester").inner_text() == "agent"
        assert SHORT in item.locator("pre.json").first.inner_text(), "the input is shown as text"
        assert "Four eyes" in item.locator(".four-eyes").inner_text()
        no_injection(approver, adialogs)
        shot(approver, "approvals")
        print("ok a gated call appears in the approver's inbox live, hostile input shown as text", flush=True)

        # A POST without the CSRF token is refused, and decides nothing.
        r = approver.request.post(BASE + f"/ui/approvals/{cid}", form={"decision": "approve"})
        assert r.status == 403, r.status
        status, call = api("agent", "GET", f"/v1/sessions/{sid}/calls/{cid}")
        assert call["status"] == "pending_approval", call
        print("ok a form POST without the CSRF token is refused", flush=True)

        # Approve with a reason: the finished call is shown.
        item.locator("textarea").fill("checked the note")
        item.locator("button.approve").click()
        approver.wait_for_selector("#decided")
        assert approver.locator("h1").inner_text() == "Approved"
        assert approver.locator("#decided .status").inner_text() == "succeeded"
        assert '"value": 1' in approver.locator("pre.json").inner_text()
        no_injection(approver, adialogs)
        shot(approver, "approved")
        status, call = api("agent", "GET", f"/v1/sessions/{sid}/calls/{cid}")
        assert call["status"] == "succeeded" and call["approval"]["reason"] == "checked the note", call
        print("ok approving runs the call and shows it finished", flush=True)

        # Deny with a reason.
        approver.goto(BASE + "/ui/approvals")
        cid2 = gated_call("agent", sid, "second")
        approver.wait_for_selector(f"#approval-{cid2}", timeout=15000)
        item = approver.locator(f"#approval-{cid2}")
        item.locator("textarea").fill("not <b>today</b>")
        item.locator("button.deny").click()
        approver.wait_for_selector("#decided")
        assert approver.locator("h1").inner_text() == "Denied"
        assert approver.locator("#decided .reason").inner_text() == "not <b>today</b>"
        status, call = api("agent", "GET", f"/v1/sessions/{sid}/calls/{cid2}")
        assert call["status"] == "rejected" and call["error"]["message"] == "not <b>today</b>", call
        print("ok denying with a reason rejects the call", flush=True)

        # Four eyes: a principal with both roles never decides its own call.
        status, own = api("self", "POST", "/v1/sessions", {})
        own_cid = gated_call("self", own["id"], "mine")
        sctx, selfpage, _ = sign_in(browser, "self")
        selfpage.goto(BASE + "/ui/approvals")
        selfpage.wait_for_selector("#inbox")
        assert selfpage.locator(f"#approval-{own_cid}").count() == 0, "its own call is offered to it"
        csrf = selfpage.locator("form.signout input[name=csrf]").get_attribute("value")
        r = selfpage.request.post(BASE + f"/ui/approvals/{own_cid}", form={"csrf": csrf, "decision": "approve"})
        assert r.status == 403 and "four_eyes" in r.text(), (r.status, r.text())
        status, call = api("self", "GET", f"/v1/sessions/{own['id']}/calls/{own_cid}")
        assert call["status"] == "pending_approval", call
        print("ok the agent that requested a call cannot approve it", flush=True)
        sctx.close()

        # The agent's own session page: everything, hostile content as text.
        gctx, agent, gdialogs = sign_in(browser, "agent")
        agent.goto(BASE + "/ui/sessions")
        agent.click(f'a[href="/ui/sessions/{sid}"]')
        agent.wait_for_selector("#audit")
        assert agent.locator("#messages .content").first.inner_text() == HOSTILE
        assert "Chain verified" in agent.locator("#audit p.verified").inner_text()
        assert agent.locator("#calls tbody tr").count() == 3
        assert agent.locator("#state td code").first.inner_text() != ""
        no_injection(agent, gdialogs)
        shot(agent, "session")
        agent.goto(BASE + f"/ui/sessions/{sid}/calls/{cid}")
        assert agent.locator("#call-status").inner_text() == "succeeded"
        assert SHORT in agent.locator("#call-output").inner_text(), "the output is shown as text"
        no_injection(agent, gdialogs)
        shot(agent, "call")
        agent.goto(BASE + "/ui/sessions?label=team")
        assert agent.locator(f'a[href="/ui/sessions/{sid}"]').count() == 1
        assert HOSTILE[:40] in agent.locator("table.sessions").inner_text(), "the label is shown as text"
        no_injection(agent, gdialogs)
        agent.goto(BASE + "/ui/sessions?label=nosuchlabel")
        assert agent.locator("p.empty").count() == 1
        print("ok a session's page shows its record and a verified chain; filters narrow the list", flush=True)

        # Another principal cannot open it: 404, as through the API.
        octx, other, _ = sign_in(browser, "other")
        r = other.goto(BASE + f"/ui/sessions/{sid}")
        assert r.status == 404 and other.locator("h1").inner_text() == "Not found", r.status
        assert HOSTILE not in other.content()
        other.goto(BASE + "/ui/sessions")
        assert other.locator(f'a[href="/ui/sessions/{sid}"]').count() == 0
        print("ok another principal's session is a 404 page", flush=True)
        octx.close()

        # Admin: tools and usage.
        mctx, admin, mdialogs = sign_in(browser, "admin")
        admin.goto(BASE + "/ui/tools")
        assert admin.locator("#tool-counter code").first.inner_text() == "counter"
        assert "sha256:" in admin.locator("#tool-counter dd code").first.inner_text()
        shot(admin, "tools")
        admin.goto(BASE + "/ui/usage")
        assert admin.locator("svg.chart rect.calls").count() == 24
        assert "agent" in admin.locator("#per-principal").inner_text()
        no_injection(admin, mdialogs)
        shot(admin, "usage")
        admin.goto(BASE + "/ui/sessions")
        shot(admin, "sessions")
        print("ok admins see tools with digests and usage with its chart", flush=True)
        mctx.close()

        # Sign out: the cookie no longer opens pages.
        agent.click("form.signout button")
        assert agent.url == BASE + "/ui/signin"
        agent.goto(BASE + "/ui/sessions")
        assert agent.url == BASE + "/ui/signin"
        print("ok signing out ends the sign-in", flush=True)
        gctx.close()
        actx.close()
        browser.close()
    print("all ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        import traceback

        traceback.print_exc()
        sys.exit(1)
