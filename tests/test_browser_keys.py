"""A real browser (Debian's headless Chromium) through sign-up, a one-time key, the API and revocation.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver explicitly, with SE_OFFLINE set, so
it never downloads a browser or a driver.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.browser_support import chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KEY_RE = re.compile(r"wmk_[0-9A-Za-z]{49}")


@pytest.fixture
def browser() -> Iterator:
    """Debian's headless Chromium (tests.browser_support: skipped without it, a failure in CI)."""
    with chromium() as driver:
        driver.implicitly_wait(5)
        yield driver


def wait_for_url(browser, url: str) -> None:
    """A click that submits a form returns before the next page has loaded: wait for it."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(browser, 10).until(expected_conditions.url_to_be(url))
    WebDriverWait(browser, 10).until(lambda driver: driver.execute_script("return document.readyState") == "complete")


def wait_for_text(browser, element_id: str) -> str:
    """The text a status element shows once something has been written into it."""
    from selenium.webdriver.common.by import By

    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, element_id).text.strip() != "")
    return browser.find_element(By.ID, element_id).text.strip()


def read_clipboard(browser) -> str:
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (e) => done('clipboard unreadable: ' + e));"
    )


def api_get(url: str, key: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False  # loopback only: no proxies from the environment
        return session.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("BROWSER_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_sign_up_create_key_shown_once_use_it_then_revoke(browser, live_server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # Let the page write and the test read the clipboard, so a copy button is checked by what it copied.
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": live_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )

    # Sign up.
    browser.get(f"{live_server.url}/signup/")
    browser.find_element(By.ID, "id_email").send_keys("browser@example.com")
    browser.find_element(By.ID, "id_password1").send_keys("a-long-password-1")
    browser.find_element(By.ID, "id_password2").send_keys("a-long-password-1")
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    wait_for_url(browser, f"{live_server.url}/settings/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Settings"
    assert "Personal workspace" in browser.page_source
    stylesheet_rules = browser.execute_script(
        "const s = document.styleSheets[0]; try { return s.cssRules.length } catch (e) { return -1 }"
    )
    assert stylesheet_rules > 10, "site.css did not load"
    shot = screenshot_dir(tmp_path) / "settings.png"
    browser.save_screenshot(str(shot))
    print(f"settings page screenshot: {shot}")

    # Create a key: shown once, with a copy button.
    browser.find_element(By.LINK_TEXT, "Manage API keys").click()
    wait_for_url(browser, f"{live_server.url}/settings/api-keys/")
    browser.find_element(By.ID, "id_name").send_keys("Browser key")
    Select(browser.find_element(By.ID, "id_expires_in")).select_by_visible_text("In 30 days")
    browser.find_element(By.XPATH, "//button[normalize-space()='Create key']").click()
    # The reveal page rewrites its own URL to the list (history.replaceState), so wait for its content.
    key = browser.find_element(By.ID, "new-key").get_attribute("value")
    assert KEY_RE.fullmatch(key)
    assert "It will not be shown again" in browser.page_source
    snippet_texts = [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, "pre code")]
    export_lines = [line for t in snippet_texts for line in t.splitlines() if key in line]
    assert export_lines and all(line.startswith("export ") for line in export_lines)
    assert browser.page_source.count(key) == 1 + len(export_lines)  # the key field, then only `export`s
    browser.find_element(By.XPATH, "//button[normalize-space()='Copy']").click()
    assert wait_for_text(browser, "copy-status") == "Copied to the clipboard."
    assert read_clipboard(browser) == key
    shot_reveal = screenshot_dir(tmp_path) / "key-reveal.png"
    browser.save_screenshot(str(shot_reveal))

    # The setups below the key are ready to paste: this server, this key, one copy button each.
    env_snippet = browser.find_element(By.ID, "snippet-env-code").text
    assert f"export WRITINGMATE_API_KEY={key}" in env_snippet
    assert f"export OPENAI_BASE_URL={live_server.api_base}" in env_snippet
    opencode = browser.find_element(By.ID, "snippet-opencode-code").text
    browser.find_element(By.XPATH, "//button[normalize-space()='Copy OpenCode']").click()
    assert wait_for_text(browser, "snippet-opencode-status") == "Copied to the clipboard."
    copied = read_clipboard(browser)
    assert copied.strip() == opencode.strip() and f'"baseURL": "{live_server.api_base}"' in copied
    assert "Expires" in browser.page_source and "Never expires" not in browser.page_source
    browser.set_window_size(390, 900)  # a phone: snippets scroll inside their own box, the page does not
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.set_window_size(1280, 1400)

    # Reload: the history entry now points at the list, so no re-POST and no key.
    assert browser.current_url == f"{live_server.url}/settings/api-keys/"  # history entry rewritten
    browser.refresh()
    wait_for_url(browser, f"{live_server.url}/settings/api-keys/")
    assert key not in browser.page_source
    assert KEY_RE.search(browser.page_source) is None
    assert "Browser key" in browser.page_source and key[-4:] in browser.page_source
    browser.set_window_size(390, 900)  # a phone: the table scrolls inside its card, the page does not
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "key-list-narrow.png"))
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.set_window_size(1280, 1400)

    # The key works on the API.
    response = api_get(f"{live_server.api_base}/models", key)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "list"

    # Rename it on its own page; the list shows the new name.
    key_link = browser.find_element(By.LINK_TEXT, "Browser key")
    key_page = key_link.get_attribute("href")
    key_link.click()
    wait_for_url(browser, key_page)
    name_field = browser.find_element(By.ID, "id_name")
    assert name_field.get_attribute("value") == "Browser key"
    name_field.clear()
    name_field.send_keys("Renamed in the browser")
    browser.find_element(By.XPATH, "//button[normalize-space()='Rename key']").click()
    # Chromium reports a heading read while the next page replaces it as a bare WebDriverException
    # ("Node with given id does not belong to the document"), not as a stale element: retry both.
    WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException, WebDriverException]).until(
        lambda d: "Renamed in the browser" in d.find_element(By.TAG_NAME, "h1").text
    )
    assert "Renamed “Browser key” to “Renamed in the browser”." in browser.find_element(By.CLASS_NAME, "messages").text
    browser.find_element(By.LINK_TEXT, "← API Keys").click()
    wait_for_url(browser, f"{live_server.url}/settings/api-keys/")
    assert browser.find_element(By.LINK_TEXT, "Renamed in the browser")

    # Revoke with confirmation; the same call now gets 401.
    revoke_link = browser.find_element(By.PARTIAL_LINK_TEXT, "Revoke")
    revoke_url = revoke_link.get_attribute("href")
    revoke_link.click()
    wait_for_url(browser, revoke_url)
    assert "Revoke “Renamed in the browser”?" in browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.XPATH, "//button[normalize-space()='Revoke key']").click()
    wait_for_url(browser, f"{live_server.url}/settings/api-keys/")
    assert "Revoked" in browser.find_element(By.CSS_SELECTOR, ".badge--revoked").text

    response = api_get(f"{live_server.api_base}/models", key)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
