#!/usr/bin/env python3
"""Drive fhirwall's audit console in a real headless browser (Debian's chromium
through chromium-driver, with selenium) and check what a security analyst sees:

1. a wrong admin token is refused and shows no data;
2. the right one signs in, and the session cookie is invisible to scripts (HttpOnly);
3. traffic (charts and per-client table), the patient view, the client view,
   the opt-out list and the chain status each show what the log holds;
4. no view shows anything of the forbidden strings (member names, birth dates:
   PHI beyond ids);
5. after a record in the audit log is edited, re-reading the log shows the
   chain BROKEN, with the alarm raised on every view;
6. sign-out ends the session.

Run by tests/e2e/console.rs; exits non-zero with the step that failed.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def fail(step, why):
    print(f"console browser test: {step}: {why}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--console", required=True, help="http://127.0.0.1:PORT/admin/console")
    ap.add_argument("--token", required=True)
    ap.add_argument("--client", required=True, help="a client that received data")
    ap.add_argument("--patient", required=True, help="a patient whose data that client received")
    ap.add_argument("--opted-out", required=True)
    ap.add_argument("--forbid", required=True, help="JSON file: strings no view may show")
    ap.add_argument("--audit-dir", required=True)
    ap.add_argument("--screenshots", help="directory for a screenshot of each view")
    args = ap.parse_args()
    forbidden = json.loads(Path(args.forbid).read_text())

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--window-size=1300,1000"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
    # The page re-renders its views as data arrives: an element found a
    # moment ago may be replaced before its text is read; look again.
    wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException])
    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)

    def visible(element_id):
        return wait.until(EC.visibility_of_element_located((By.ID, element_id)))

    def text_of(element_id):
        return visible(element_id).text

    def no_phi(step):
        page = driver.find_element(By.TAG_NAME, "body").text + driver.page_source
        for s in forbidden:
            if s and s in page:
                fail(step, f"the page shows {s!r}, which is not an id")

    def no_csp_violations(step):
        for entry in driver.get_log("browser"):
            msg = entry.get("message", "")
            if "Content Security Policy" in msg or "Refused to" in msg:
                fail(step, f"the browser reports a CSP violation: {msg}")

    def go(hash_route, element_id, step):
        driver.execute_script("location.hash = arguments[0]", hash_route)
        el = visible(element_id)
        if shots:
            driver.save_screenshot(str(shots / f"{step}.png"))
        no_phi(step)
        return el

    try:
        # 1. Wrong token.
        driver.get(args.console)
        visible("sign-in-form")
        driver.find_element(By.ID, "token").send_keys("not-the-admin-token")
        driver.find_element(By.ID, "sign-in-button").click()
        err = text_of("sign-in-error")
        if "Wrong admin token" not in err:
            fail("wrong token", f"no refusal shown: {err!r}")
        if driver.find_element(By.ID, "nav").is_displayed() or driver.find_element(By.ID, "view").is_displayed():
            fail("wrong token", "the views are shown without a session")
        if "fhirwall_console" in str(driver.get_cookies()):
            fail("wrong token", "a session cookie was set for a wrong token")

        # 2. Sign in.
        driver.find_element(By.ID, "token").send_keys(args.token)
        driver.find_element(By.ID, "sign-in-button").click()
        visible("overview")
        cookies = {c["name"]: c for c in driver.get_cookies()}
        session = cookies.get("fhirwall_console")
        if not session:
            fail("sign-in", f"no session cookie: {list(cookies)}")
        if not session.get("httpOnly") or session.get("sameSite") != "Strict":
            fail("sign-in", f"the session cookie is not HttpOnly + SameSite=Strict: {session}")
        if "fhirwall_console" in driver.execute_script("return document.cookie"):
            fail("sign-in", "a script can read the session cookie")
        if args.token in driver.page_source:
            fail("sign-in", "the admin token is in the page")

        # 3a. Traffic.
        go("#/overview", "overview", "overview")
        clients = text_of("clients-table")
        if args.client not in clients:
            fail("overview", f"{args.client} not in the per-client table: {clients!r}")
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-requests rect")
        if not bars:
            fail("overview", "the requests chart has no bars")
        if not driver.find_elements(By.CSS_SELECTOR, "#chart-withheld rect"):
            fail("overview", "the withheld-by-reason chart has no bars")
        if "suppressed." not in text_of("overview"):
            fail("overview", "no withheld reason is named")
        orgs = text_of("organizations-table")
        if "Organization/" not in orgs:
            fail("overview", f"no organization in the per-organization table: {orgs!r}")

        # 3b. The patient view.
        go(f"#/patient/{args.patient}", "patient-view", "patient")
        who = text_of("patient-clients")
        if args.client not in who:
            fail("patient", f"{args.client} not among the clients that received Patient/{args.patient}: {who!r}")
        rows = text_of("patient-rows")
        if "disclosed" not in rows:
            fail("patient", f"no disclosure in the patient's records: {rows!r}")
        # Paging: one record per page still reaches older records.
        driver.execute_script("location.hash = arguments[0]", f"#/patient/{args.patient}?before=999999999")
        visible("patient-rows")

        # 3c. The client view.
        go(f"#/client/{args.client}", "client-view", "client")
        rows = text_of("client-rows")
        if "search" not in rows and "read" not in rows:
            fail("client", f"no request of the client listed: {rows!r}")
        if not driver.find_elements(By.CSS_SELECTOR, "#client-view #chart-requests rect"):
            fail("client", "the client's chart has no bars")

        # 3d. Opt-outs.
        go("#/opt-outs", "opt-outs-view", "opt-outs")
        if args.opted_out not in text_of("opt-outs-table"):
            fail("opt-outs", f"{args.opted_out} not in the opt-out list")

        # 3e. The chain, intact.
        go("#/chain", "chain-view", "chain-intact")
        state = text_of("chain-state")
        if not state.startswith("INTACT"):
            fail("chain", f"an untouched log is not shown intact: {state!r}")
        if driver.find_element(By.ID, "alarm").is_displayed():
            fail("chain", "the alarm is raised on an intact log")
        no_csp_violations("views")

        # 5. Edit a record in the log, then read it again from the console.
        audit_file = sorted(Path(args.audit_dir).glob("audit-*.ndjson"))[0]
        lines = audit_file.read_bytes().split(b"\n")
        target = next(i for i, l in enumerate(lines) if b'"outcomeDesc":"HTTP 200"' in l)
        lines[target] = lines[target].replace(b'"outcomeDesc":"HTTP 200"', b'"outcomeDesc":"HTTP 204"', 1)
        audit_file.write_bytes(b"\n".join(lines))
        edited_seq = json.loads(lines[target])["seq"]
        driver.find_element(By.ID, "rebuild").click()
        wait.until(lambda d: d.find_element(By.ID, "chain-state").text.startswith("BROKEN"))
        state = text_of("chain-state")
        if f"seq {edited_seq}" not in state or "edited" not in state:
            fail("broken chain", f"the break is not placed at seq {edited_seq}: {state!r}")
        alarm = text_of("alarm")
        if "AUDIT CHAIN BROKEN" not in alarm:
            fail("broken chain", f"no alarm: {alarm!r}")
        if shots:
            driver.save_screenshot(str(shots / "chain-broken.png"))
        # The alarm stays up on the other views.
        go("#/overview", "overview", "overview-broken")
        if not driver.find_element(By.ID, "alarm").is_displayed():
            fail("broken chain", "the alarm is not shown on the traffic view")

        # 6. Sign out.
        driver.find_element(By.ID, "sign-out").click()
        visible("sign-in-form")
        status = driver.execute_script(
            "return fetch('/admin/console/api/overview', {credentials: 'same-origin'}).then(r => r.status)")
        if status != 401:
            fail("sign-out", f"the API still answers after sign-out: {status}")
        print(json.dumps({"ok": True, "edited_seq": edited_seq}))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
