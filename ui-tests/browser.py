"""Drives the Plexus web UI in headless Chromium (Selenium, Debian's chromium and chromedriver).

Run by the Rust e2e test `ui::` (crates/plexus/tests/e2e/ui.rs), which starts a real `plexus dev`
with two sidecars and passes their addresses. Every wait has a deadline; nothing sleeps to
synchronise. Prints one line per step; exits non-zero with the reason on the first failure.

    browser.py --url http://127.0.0.1:PORT --upstream 127.0.0.1:PORT --critical-check ID \
               [--screenshots DIR]
    browser.py --url http://127.0.0.1:PORT --acl-token SECRET --limited-token SECRET

The second form runs the ACL case against a server that enforces ACLs (default deny): a page
asked without a token shows the 403 as a message; a token entered once in the dialog is used by
every page of the tab; a narrower token's 403 is again a message, never a blank page.
"""

import argparse
import json
import os
import sys
import tempfile
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

DEADLINE = 30
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGES = [
    ("services", "#/services", "Services"),
    ("service", "#/services/web", "web"),
    ("nodes", "#/nodes", "Nodes"),
    ("kv", "#/kv/", "Key/Value"),
    ("intentions", "#/intentions", "Intentions"),
    ("config", "#/config", "Config entries"),
    ("topology", "#/topology", "Topology"),
    ("events", "#/events", "Event mesh"),
    ("ca", "#/ca", "Certificate authority"),
]


def step(message):
    print(f"ui-test: {message}", flush=True)


def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run scripts/setup-test-env.sh (installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp(prefix='plexus-ui-')}"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait(driver, condition, what):
    try:
        return WebDriverWait(driver, DEADLINE, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        sys.exit(f"timed out after {DEADLINE}s waiting for {what}; page text:\n{driver.find_element(By.TAG_NAME, 'main').text}")


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def loaded(driver, heading):
    """The page's heading is shown and every live slot has been filled."""
    def done(d):
        h1 = css(d, "main h1")
        return h1 and h1[0].text == heading and not css(d, "main [aria-busy='true']")
    wait(driver, done, f"page {heading!r} to load")


def console_errors(driver):
    """Severe console entries, except a 404 answer from the KV API (an empty folder is a 404 in
    Consul's API; the page shows it as empty)."""
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if entry["source"] == "network" and "/v1/kv/" in entry["message"] and " 404 " in entry["message"]:
            continue
        errors.append(entry["message"])
    return errors


def api(base, method, path, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def open_page(driver, base, fragment, heading):
    driver.get(f"{base}/ui/{fragment}")
    loaded(driver, heading)


def mark(driver):
    """A value that only survives while the page is not reloaded."""
    driver.execute_script("window.__plexusMark = 'kept';")


def not_reloaded(driver):
    return driver.execute_script("return window.__plexusMark") == "kept"


def every_page_loads_without_console_errors(driver, base, screenshots):
    for name, fragment, heading in PAGES:
        open_page(driver, base, fragment, heading)
        errors = css(driver, "main .error")
        if errors:
            sys.exit(f"page {fragment} shows an error: {errors[0].text}")
        logged = console_errors(driver)
        if logged:
            sys.exit(f"page {fragment} logged console errors: {logged}")
        unlabelled = driver.execute_script("""
            return [...document.querySelectorAll('main input, main select, main textarea')]
              .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))
              .map(e => e.name || e.outerHTML.slice(0, 60));""")
        if unlabelled:
            sys.exit(f"page {fragment} has unlabelled fields: {unlabelled}")
        if screenshots:
            driver.save_screenshot(os.path.join(screenshots, f"ui-{name}.png"))
        step(f"page {fragment} loaded, no console errors")


def keyboard_reaches_every_section(driver, base):
    open_page(driver, base, "#/services", "Services")
    driver.refresh()  # a fresh document: nothing focused yet
    loaded(driver, "Services")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    if active.get_attribute("id") != "skip-link":
        sys.exit(f"the first Tab stop is {active.get_attribute('outerHTML')[:80]}, not the skip link")
    # Tab through the navigation to "Nodes" and open it with Enter.
    for _ in range(12):
        active = driver.switch_to.active_element
        if active.text == "Nodes":
            break
        active.send_keys(Keys.TAB)
    if driver.switch_to.active_element.text != "Nodes":
        sys.exit("Tab never reached the Nodes link")
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    loaded(driver, "Nodes")
    if driver.switch_to.active_element.get_attribute("id") != "main":
        sys.exit("after navigating, focus is not on the main content")
    step("keyboard: skip link first, navigation by Tab and Enter, focus moves to the content")


def create_kv_key(driver, base):
    open_page(driver, base, "#/kv/", "Key/Value")
    mark(driver)
    driver.find_element(By.CSS_SELECTOR, "input[name='key']").send_keys("ui/greeting")
    driver.find_element(By.CSS_SELECTOR, "textarea[name='value']").send_keys("hello from the browser")
    driver.find_element(By.CSS_SELECTOR, "main form button[type='submit']").click()
    wait(driver, lambda d: "Created ui/greeting" in d.find_element(By.TAG_NAME, "main").text, "the created message")
    wait(driver, lambda d: css(d, "[data-key='ui/']"), "folder ui/ to appear in the listing")
    # Open the key, edit it with CAS.
    driver.get(f"{base}/ui/#/kv/ui/greeting")
    loaded(driver, "ui/greeting")
    area = driver.find_element(By.CSS_SELECTOR, "textarea[name='value']")
    wait(driver, lambda d: area.get_attribute("value") == "hello from the browser", "the stored value in the editor")
    area.clear()
    area.send_keys("hello again")
    driver.find_element(By.CSS_SELECTOR, "main form button[type='submit']").click()
    wait(driver, lambda d: "Saved." in d.find_element(By.TAG_NAME, "main").text, "the saved message")
    step("KV: created ui/greeting and updated it with CAS through the UI")


def create_intention(driver, base):
    open_page(driver, base, "#/intentions", "Intentions")
    form = driver.find_element(By.ID, "intention-create")
    form.find_element(By.NAME, "source").send_keys("client")
    form.find_element(By.NAME, "destination").send_keys("api")
    form.find_element(By.NAME, "action").send_keys("deny")
    form.find_element(By.NAME, "description").send_keys("made in the UI")
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    wait(driver, lambda d: css(d, "[data-intention='client->api']"), "the new intention in the list")
    check = driver.find_element(By.ID, "intention-check")
    check.find_element(By.NAME, "check-source").send_keys("client")
    check.find_element(By.NAME, "check-destination").send_keys("api")
    check.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    wait(driver, lambda d: d.find_element(By.ID, "check-result").get_attribute("data-allowed") == "false",
         "the check to say denied")
    step("intentions: created client -> api deny; the check form says denied")
    row = driver.find_element(By.CSS_SELECTOR, "[data-intention='client->web']")
    assert "L7:" in row.text and "/admin* \u2192 deny" in row.text, row.text
    step("intentions: the L7 intention client -> web shows its permission")


def config_errors_show_at_the_field(driver, base):
    open_page(driver, base, "#/config", "Config entries")
    editor = driver.find_element(By.CSS_SELECTOR, "#config-editor textarea")
    editor.clear()
    editor.send_keys('{\n  "Kind": "service-defaults",\n  "Name": "web",\n  "Protocol": "carrier-pigeon"\n}')
    driver.find_element(By.CSS_SELECTOR, "#config-editor button[type='submit']").click()
    wait(driver, lambda d: d.find_element(By.ID, "entry-error").get_attribute("data-field") == "Protocol",
         "the error naming the Protocol field")
    text = driver.find_element(By.ID, "entry-error").text
    if "line 4" not in text or editor.get_attribute("aria-invalid") != "true":
        sys.exit(f"the field error does not point at the line: {text!r}")
    # A valid entry is saved and listed.
    editor.clear()
    editor.send_keys('{\n  "Kind": "service-defaults",\n  "Name": "api",\n  "Protocol": "http"\n}')
    driver.find_element(By.CSS_SELECTOR, "#config-editor button[type='submit']").click()
    wait(driver, lambda d: css(d, "[data-entry='service-defaults/api']"), "the saved entry in the list")
    wait(driver, lambda d: css(d, "[data-entry='service-intentions/web']"),
         "the service-intentions entry in the list")
    if driver.find_element(By.ID, "entry-error").text:
        sys.exit("the error stayed after a valid save")
    # The browser logs the refused PUT (a 400 this step asked for); nothing else may be logged.
    logged = [e for e in console_errors(driver) if not ("/v1/config " in e and "400" in e)]
    if logged:
        sys.exit(f"config page logged console errors: {logged}")
    step(f"config: a bad entry is refused at its field ({text}); a good one is saved and listed")


def service_turns_critical_live(driver, base, check_id):
    open_page(driver, base, "#/services/api", "api")
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "main .summary").get_attribute("data-status") == "passing",
         "api to show passing")
    mark(driver)
    api(base, "PUT", f"/v1/agent/check/fail/{check_id}?note=down+for+the+test", b"")
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "main .summary").get_attribute("data-status") == "critical",
         "api to turn critical without a reload")
    if not not_reloaded(driver):
        sys.exit("the page was reloaded")
    step("health: api turned critical live (blocking query), no reload")
    open_page(driver, base, "#/services", "Services")
    mark(driver)
    api(base, "PUT", f"/v1/agent/check/pass/{check_id}", b"")
    wait(driver, lambda d: css(d, "tr[data-service='api'][data-status='passing']"), "the list to show api passing again")
    if not not_reloaded(driver):
        sys.exit("the services page was reloaded")
    step("health: the services list followed api back to passing live")


def topology_edge_appears_after_traffic(driver, base, upstream):
    open_page(driver, base, "#/topology", "Topology")
    wait(driver, lambda d: css(d, "g[data-edge='client->web']"), "the declared edge client->web")
    traffic = css(driver, "g[data-edge='client->web']")[0].get_attribute("data-traffic")
    if traffic != "no":
        sys.exit(f"client->web shows traffic before any was sent: {traffic}")
    mark(driver)
    for _ in range(40):
        with urllib.request.urlopen(f"http://{upstream}/hello", timeout=10) as response:
            response.read()
    wait(driver, lambda d: css(d, "g[data-edge='client->web'][data-traffic='yes']"),
         "the edge client->web to carry traffic")
    if not not_reloaded(driver):
        sys.exit("the topology page was reloaded")
    label = css(driver, "g[data-edge='client->web'] text")[0].text
    step(f"topology: edge client->web appeared with traffic ({label}), no reload")
    open_page(driver, base, "#/services/web", "web")
    wait(driver, lambda d: css(d, "dl.golden") and float(d.find_element(By.CSS_SELECTOR, "dl.golden").get_attribute("data-requests")) >= 40,
         "web's golden metrics to count the requests")
    step("golden metrics: web counts the requests it served")


def shows_403(driver, what):
    """The page keeps its heading and shows the 403 as a message in place of the data."""
    wait(driver, lambda d: css(d, "main .error[data-status='403']"), f"a 403 message on {what}")
    text = css(driver, "main .error[data-status='403']")[0].text
    if "Permission denied (403)" not in text or "ACL token" not in text:
        sys.exit(f"the 403 on {what} does not say what to do: {text!r}")
    if not css(driver, "main h1"):
        sys.exit(f"{what} lost its heading on a 403")
    return text


def enter_token(driver, secret):
    driver.find_element(By.ID, "token-button").click()
    wait(driver, lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None,
         "the token dialog to open")
    field = driver.find_element(By.ID, "token-input")
    field.clear()
    field.send_keys(secret)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type='submit']").click()
    wait(driver, lambda d: d.find_element(By.ID, "token-button").text == "ACL token (set)",
         "the token button to say a token is set")


def acl_console_errors(driver):
    """Console errors other than the browser's own line for the 403 answers this case provokes."""
    return [e for e in console_errors(driver) if " 403 " not in e]


def pages_work_with_a_token_entered_once(driver, base, management, limited):
    # No token yet: the anonymous token may not read the CA's configuration.
    open_page(driver, base, "#/ca", "Certificate authority")
    text = shows_403(driver, "the CA page without a token")
    step(f"no token: the CA page shows the 403 as a message ({text[:60]}…)")
    # The token is entered once; every page of the tab (even after a full reload) uses it.
    enter_token(driver, management)
    for name, fragment, heading in PAGES:
        open_page(driver, base, fragment, heading)
        errors = css(driver, "main .error")
        if errors:
            sys.exit(f"with the management token, page {fragment} shows an error: {errors[0].text}")
    open_page(driver, base, "#/services", "Services")
    wait(driver, lambda d: css(d, "tr[data-service='web']"), "web in the services list")
    driver.refresh()
    loaded(driver, "Services")
    wait(driver, lambda d: css(d, "tr[data-service='web']"), "web in the list after a reload")
    if driver.find_element(By.ID, "token-button").text != "ACL token (set)":
        sys.exit("the token was forgotten on reload")
    # A write with the token.
    open_page(driver, base, "#/kv/", "Key/Value")
    driver.find_element(By.CSS_SELECTOR, "input[name='key']").send_keys("ui/acl")
    driver.find_element(By.CSS_SELECTOR, "textarea[name='value']").send_keys("written with a token")
    driver.find_element(By.CSS_SELECTOR, "main form button[type='submit']").click()
    wait(driver, lambda d: "Created ui/acl" in d.find_element(By.TAG_NAME, "main").text, "the created message")
    logged = acl_console_errors(driver)
    if logged:
        sys.exit(f"console errors with the management token: {logged}")
    step("management token entered once: every page loads, the list survives a reload, KV write works")
    # A narrower token (services and nodes only): the key it may not read is a 403 message (a
    # KV listing is filtered instead, as in Consul), services still list web.
    enter_token(driver, limited)
    open_page(driver, base, "#/kv/ui/acl", "ui/acl")
    text = shows_403(driver, "the key ui/acl with a services-only token")
    open_page(driver, base, "#/services", "Services")
    wait(driver, lambda d: css(d, "tr[data-service='web']"), "web in the list with the services-only token")
    logged = acl_console_errors(driver)
    if logged:
        sys.exit(f"console errors with the limited token: {logged}")
    step(f"services-only token: the key shows the 403 as a message ({text[:60]}…), services still list web")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--upstream")
    parser.add_argument("--critical-check")
    parser.add_argument("--screenshots")
    parser.add_argument("--acl-token")
    parser.add_argument("--limited-token")
    args = parser.parse_args()
    if args.acl_token:
        if not args.limited_token:
            sys.exit("--acl-token needs --limited-token")
        driver = browser()
        try:
            pages_work_with_a_token_entered_once(driver, args.url, args.acl_token, args.limited_token)
            step("all browser checks passed")
        finally:
            driver.quit()
        return
    if not args.upstream or not args.critical_check:
        sys.exit("--upstream and --critical-check are needed (or --acl-token for the ACL case)")
    driver = browser()
    try:
        every_page_loads_without_console_errors(driver, args.url, None)
        keyboard_reaches_every_section(driver, args.url)
        create_kv_key(driver, args.url)
        create_intention(driver, args.url)
        config_errors_show_at_the_field(driver, args.url)
        service_turns_critical_live(driver, args.url, args.critical_check)
        topology_edge_appears_after_traffic(driver, args.url, args.upstream)
        if args.screenshots:
            every_page_loads_without_console_errors(driver, args.url, args.screenshots)
        logged = console_errors(driver)
        if logged:
            sys.exit(f"console errors: {logged}")
        step("all browser checks passed")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
