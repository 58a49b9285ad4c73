"""Signing in to the dashboard in headless Chromium: every page shows only what the
signed-in person may see (a real server process and a local OIDC issuer)."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from afmon.dashboard.app import PAGES
from tests.dashboard.conftest import console_errors

TIMEOUT = 20


def _sign_in(driver: Any, server: Any, issuer: Any, user: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{server.url}/auth/login?issuer={issuer.url}&login_hint={user}")
    WebDriverWait(driver, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#session-banner"), "Signed in as"),
        "the dashboard never showed the signed-in banner",
    )


@pytest.mark.browser
def test_signed_in_member_sees_only_self_on_every_page(signed_server, browser: Any) -> None:
    server, issuer = signed_server
    d = browser
    d.get(f"{server.url}/")
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#signin-banner"), "You are not signed in."
        )
    )
    assert (
        d.find_element(By.CSS_SELECTOR, "a.signin-link")
        .get_attribute("href")
        .startswith(f"{server.url}/auth/login?issuer=")
    )
    _sign_in(d, server, issuer, "bob")
    assert "Signed in as bob" in d.find_element(By.ID, "session-banner").text
    for path in PAGES:
        d.get(f"{server.url}{path}")
        WebDriverWait(d, TIMEOUT).until(
            lambda drv: drv.find_elements(By.CSS_SELECTOR, "#page > *"),
            f"page {path} did not render",
        )
        # let the page's callbacks fill in, then read what is on screen
        WebDriverWait(d, TIMEOUT).until(
            lambda drv: "Loading" not in drv.find_element(By.ID, "page").text
        )
        text = d.find_element(By.TAG_NAME, "body").text
        assert "Alice" not in text and "alice" not in text, path
    severe = console_errors(d)
    assert severe == [], severe
    d.get(f"{server.url}/member")
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#mem-tiles"), "2.00 core-hours"),
        "bob's own 2 core-hours never appeared",
    )
    # the control: a VO manager does see Alice on the same page
    _sign_in(d, server, issuer, "dan")
    d.get(f"{server.url}/member")
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Alice Adams"),
        "the atlas manager never saw Alice",
    )
    d.get(f"{server.url}/auth/logout")
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#signin-banner"), "You are not signed in."
        )
    )
    d.delete_all_cookies()


@pytest.mark.browser
def test_a_refused_sign_in_is_a_page_with_a_way_back(signed_server, browser: Any) -> None:
    """The issuer refuses mallory (no such user): the browser gets a page saying why, with
    links back to the dashboard and to try again, not the API's JSON."""
    server, issuer = signed_server
    d = browser
    d.delete_all_cookies()
    d.get(f"{server.url}/auth/login?issuer={issuer.url}&login_hint=mallory")
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.ID, "signin-refused"), "Sign-in refused")
    )
    reason = d.find_element(By.ID, "signin-reason").text
    assert reason == "the issuer refused the sign-in: access_denied"
    again = d.find_element(By.ID, "signin-again").get_attribute("href")
    assert again.startswith(f"{server.url}/auth/login?issuer=")
    d.find_element(By.ID, "signin-back").click()
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#signin-banner"), "not signed in")
    )
    assert [e for e in console_errors(d) if "/auth/callback" not in e["message"]] == []
