# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The web page in a real headless Chromium driven by selenium, against the real server of ``conftest.py``.

The page is loaded without a key, given the key, an uploaded DICOM and questions; its views must be the
``/v1/views`` PNGs and its streamed answers must equal the non-streaming API's greedy answers for the same
conversation. A wrong key must show the server's error message. The test saves a screenshot (also to
``$LLAVA_MED_SCREENSHOT_DIR`` when set). Without chromium and chromedriver the browser tests are skipped, unless
``LLAVA_MED_REQUIRE_BROWSER=1`` (CI), which makes them fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

QUESTION = "Is there a lesion on the left side?"
FOLLOW_UP = "Is this a CT image?"
WAIT_S = 90


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def _get(served, path: str, key: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{served.url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post(served, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{served.url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {served.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _data_url(path: Path) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(path.read_bytes()).decode()


def _api_answer(served, messages: list[dict]) -> tuple[str, dict]:
    """The non-streaming API's (greedy) answer and extension field for a conversation."""
    choice = _post(served, "/v1/chat/completions", {"messages": messages})["choices"][0]
    return choice["message"]["content"], choice["llava_med"]


def _confidence_text(ext: dict) -> str:
    conf = ext.get("confidence")
    return f"confidence: {conf:.2f}" if isinstance(conf, (int, float)) else "confidence: n/a"


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (selenium + the Debian chromium-driver), quit at the end of the module."""
    chromium = _find("chromium", "chromium-browser", "/usr/bin/chromium")
    driver_path = _find("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    webdriver = None
    try:
        from selenium import webdriver
    except ImportError:
        pass
    missing = [what for what, ok in (("chromium", chromium), ("chromedriver", driver_path), ("selenium", webdriver))
               if not ok]
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("LLAVA_MED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LLAVA_MED_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llava-med-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open_page(browser, served):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{served.url}/")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                         == "idle")
    return WebDriverWait, ec


def _set_key(browser, key: str) -> None:
    field = browser.find_element("id", "api-key")
    field.clear()
    field.send_keys(key)


def _ask(browser, question: str, n_done: int) -> object:
    """Type a question, press Ask, wait for answer number ``n_done`` to finish; returns its ``<li>``."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("id", "question").send_keys(question)
    browser.find_element("id", "ask").click()
    selector = "#transcript li.assistant"

    def finished(d):
        turns = d.find_elements("css selector", selector)
        return len(turns) == n_done and turns[-1].get_attribute("data-done") in ("true", "error") and turns[-1]

    li = WebDriverWait(browser, WAIT_S).until(finished)
    assert li.get_attribute("data-done") == "true", browser.find_element("id", "error").text
    return li


def _sent_chats(browser) -> list[dict]:
    """The bodies the page has POSTed to ``/v1/chat/completions`` since the last call (Chromium's network log)."""
    bodies = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if request["url"].endswith("/v1/chat/completions") and request["method"] == "POST":
            bodies.append(json.loads(request["postData"]))
    return bodies


def _answer_text(li) -> str:
    return li.find_element("css selector", ".text").text


def _save_screenshot(browser, tmp_path: Path) -> Path:
    from PIL import Image

    shot = tmp_path / "serve_web.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size[0] >= 800 and rgb.size[1] >= 600
        assert len(rgb.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 16, "the screenshot is (nearly) one colour"
    target = os.environ.get("LLAVA_MED_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)
    return shot


def test_page_is_served_without_a_key_with_a_strict_policy(served):
    status, headers, body = _get(served, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    html = body.decode()
    assert '<script src="/static/chat.js"' in html and "<script>" not in html and "style=" not in html
    assert _get(served, "/ui")[2] == body
    status, headers, js = _get(served, "/static/chat.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"innerHTML" not in js and b"eval(" not in js
    assert _get(served, "/static/style.css")[0] == 200
    for path in ("/static/app.py", "/static/..%2Fapp.py", "/static/%2e%2e/app.py", "/static/"):
        status, _, text = _get(served, path)
        assert status == 404 and json.loads(text)["error"]["message"], path
    assert _get(served, "/v1/models")[0] == 401  # the page is open, the API is not


def test_upload_views_streamed_multi_turn_chat(served, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    image = served.root / "ct_slice.dcm"
    url = _data_url(image)
    _open_page(browser, served)
    _set_key(browser, served.key)
    browser.find_element("id", "image-file").send_keys(str(image))
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element("id", "views").get_attribute("data-loaded") == "true")
    shown = [img.get_attribute("src") for img in browser.find_elements("css selector", "#views img")]
    expected = [v["png"] for v in _post(served, "/v1/views", {"image_url": {"url": url}})["views"]]
    assert shown == expected and shown
    assert "CT" in browser.find_element("id", "image-status").text

    _sent_chats(browser)  # drop what the log holds so far
    first = _ask(browser, QUESTION, 1)
    [body] = _sent_chats(browser)
    assert body["stream"] is True and "model" not in body and "temperature" not in body  # greedy, the served model
    [message] = body["messages"]
    page_url = message["content"][1]["image_url"]["url"]
    assert page_url.partition(",")[2] == url.partition(",")[2]  # the file's bytes, whatever type the browser named
    assert message == {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                   {"type": "image_url", "image_url": {"url": page_url}}]}
    ref, ext = _api_answer(served, body["messages"])
    assert _answer_text(first) and _answer_text(first) == ref.strip()
    meta = first.find_element("css selector", ".meta").text
    assert _confidence_text(ext) in meta and ("abstained" in meta) == bool(ext.get("abstained"))

    second = _ask(browser, FOLLOW_UP, 2)
    [body2] = _sent_chats(browser)  # multi-turn: the whole conversation, the image in the first user message only
    assert body2["messages"] == [message, {"role": "assistant", "content": ref}, {"role": "user", "content": FOLLOW_UP}]
    ref2, _ = _api_answer(served, body2["messages"])
    assert _answer_text(second) and _answer_text(second) == ref2.strip()
    users = [li.text for li in browser.find_elements("css selector", "#transcript li.user .text")]
    assert users == [QUESTION, FOLLOW_UP]
    assert not browser.find_element("id", "error").is_displayed()
    shot = _save_screenshot(browser, tmp_path)
    assert shot.stat().st_size > 10_000
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no CSP violation, no failed request, no script error

    browser.find_element("id", "reset").click()
    assert browser.find_elements("css selector", "#transcript li") == []
    again = _ask(browser, QUESTION, 1)  # a new conversation about the same image
    assert [b["messages"] for b in _sent_chats(browser)] == [[message]]
    assert _answer_text(again) == ref.strip()


def test_wrong_key_shows_the_servers_error_message(served, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, served)
    status, _, body = _get(served, "/v1/models", key="wrong-key")
    message = json.loads(body)["error"]["message"]
    assert status == 401 and message
    _set_key(browser, "wrong-key")
    browser.find_element("id", "image-file").send_keys(str(served.root / "ct_slice.dcm"))
    error = browser.find_element("id", "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed())
    assert error.text == message
    assert browser.find_elements("css selector", "#views img") == []

    browser.find_element("id", "question").send_keys(QUESTION)
    browser.find_element("id", "ask").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element("css selector", "#transcript li.assistant").get_attribute("data-done") == "error")
    assert error.text == message and "left out of the conversation" in browser.find_element(
        "css selector", "#transcript li.assistant").text

    _set_key(browser, served.key)  # the right key: the views are fetched again, the next question is answered
    browser.find_element("id", "question").click()  # leaving the key field fires its change event
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element("id", "views").get_attribute("data-loaded") == "true")
    assert not error.is_displayed()
    li = _ask(browser, QUESTION, 2)  # the failed turn is not sent again: a one-question conversation with the image
    image_part = {"type": "image_url", "image_url": {"url": _data_url(served.root / "ct_slice.dcm")}}
    ref, _ = _api_answer(served, [{"role": "user", "content": [{"type": "text", "text": QUESTION}, image_part]}])
    assert _answer_text(li) and _answer_text(li) == ref.strip()


def test_trust_fields_are_shown_as_text(served, browser):
    """The answer line shows the trust fields when the predictor reports them, ``n/a`` when not, never as HTML."""
    _open_page(browser, served)
    line = "return LlavaMedPage.trustItems(arguments[0], arguments[1]).map((item) => item[1]);"
    assert browser.execute_script(line, None, "stop") == ["confidence: n/a"]
    assert browser.execute_script(line, {"views": [], "modality": "CT"}, "length") == [
        "confidence: n/a", "modality: CT", "cut at the token limit"]
    ext = {"confidence": 0.8312, "image_reliance": 0.4, "abstained": True, "reason": "the image is unclear"}
    assert browser.execute_script(line, ext, "stop") == [
        "confidence: 0.83", "image reliance: 0.40", "abstained", "reason: the image is unclear"]
    hostile = {"confidence": "0.9", "reason": '<img src=x id="planted">'}
    meta = browser.execute_script(
        "const m = LlavaMedPage.trustLine(arguments[0], 'stop'); document.body.append(m);"
        "return [m.textContent, m.querySelectorAll('img').length, document.querySelectorAll('#planted').length];",
        hostile)
    assert meta == ['confidence: n/areason: <img src=x id="planted">', 0, 0]  # a string confidence is not a number
