"""The web chat page at ``/`` in a real headless browser (Debian's chromium through chromium-driver, driven
by selenium) against the session's real server: a typed question streams back the same greedy answer the
API gives for the same messages, turn after turn; code and Markdown are rendered and HTML is escaped; Stop
ends the request on the server; a wrong API key is shown as an error. Screenshots go to pytest's tmp dir
and, when ``INTERN_JAX_SCREENSHOT_DIR`` is set, there too."""

import http.client
import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2"  # as in conftest.py
KEY = "test-key"
SYSTEM = "You are a concise assistant."
QUESTION = "Write a Python function that adds two numbers."


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("the web page's test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (make browser-deps does this as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The chat page freshly loaded, with the server's key typed in."""
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, lambda: browser.execute_script("return document.body.dataset.state") == "idle", 20)
    _fill(browser, "api-key", KEY)
    return browser


def _wait(driver, condition, timeout: float, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not get there in {timeout} s"
        time.sleep(0.1)


def _fill(driver, element_id: str, text: str):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)


def _ask(driver, text: str, timeout: float = 90) -> str:
    """Type a message, press Enter, wait for the streamed reply to end; the reply's state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)  # the page is busy once this returns
    _wait(driver, lambda: driver.execute_script("return document.body.dataset.state") == "idle", timeout,
          "the streamed reply")
    return driver.execute_script("const m = document.querySelectorAll('.msg.assistant'); "
                                 "return m.length ? m[m.length - 1].dataset.state : null")


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("INTERN_JAX_SCREENSHOT_DIR"):
        out = Path(os.environ["INTERN_JAX_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def test_the_page_and_its_files_need_no_key_and_only_its_own_files_are_served(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for path, kind in (("/", "text/html"), ("/static/chat.js", "text/javascript"),
                       ("/static/markdown.js", "text/javascript"), ("/static/chat.css", "text/css")):
        conn.request("GET", path)  # no Authorization header
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200 and response.headers["Content-Type"].startswith(kind), path
        assert "default-src 'self'" in response.headers["Content-Security-Policy"] and body
    for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/__init__.py"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 404, path
    conn.close()


MARKDOWN = """## Title with <b>tags</b>

Some **bold**, *italic*, `x < y` and a [link](https://example.com/a?b=1&c=2) but [no js](javascript:alert(1)).

```python
if a < b and c > d:
    print("<script>alert(1)</script>")
```

- one
- two with `code`

1. first
2. second

| a | b |
|---|---|
| 1 | <i>2</i> |

> quoted

<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>
```js
unclosed = "fence while streaming";"""


def test_markdown_renderer_builds_the_expected_elements_and_escapes_html(page):
    out = page.execute_script("""
        const div = document.createElement('div');
        div.innerHTML = renderMarkdown(arguments[0]);
        document.body.append(div);
        const q = (s) => Array.from(div.querySelectorAll(s));
        const texts = (s) => q(s).map((e) => e.textContent);
        return {h2: texts('h2'), strong: texts('strong'), em: texts('em'), code: texts(':not(pre) > code'),
                links: q('a').map((a) => [a.textContent, a.getAttribute('href')]),
                pre: texts('pre > code'), lang: q('pre > code').map((e) => e.className),
                ul: texts('ul > li'), ol: texts('ol > li'), th: texts('th'), td: texts('td'),
                quote: texts('blockquote'), dangerous: q('script, img, b, i, [onerror]').length,
                pwned: window.pwned === undefined ? null : window.pwned};
    """, MARKDOWN)
    assert out["h2"] == ["Title with <b>tags</b>"]
    assert out["strong"] == ["bold"] and out["em"] == ["italic"]
    assert out["code"] == ["x < y", "code"]
    assert out["links"] == [["link", "https://example.com/a?b=1&c=2"]]  # no javascript: link
    assert out["pre"] == ['if a < b and c > d:\n    print("<script>alert(1)</script>")',
                          'unclosed = "fence while streaming";']
    assert out["lang"] == ["language-python", "language-js"]
    assert out["ul"] == ["one", "two with code"] and out["ol"] == ["first", "second"]
    assert out["th"] == ["a", "b"] and out["td"] == ["1", "<i>2</i>"]
    assert out["quote"] == ["quoted"]
    assert out["dangerous"] == 0 and out["pwned"] is None


def _fenced_code(text: str) -> str:
    """The body of the first fenced code block of ``text`` (to its closing fence, or to the end)."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    body = []
    for line in lines[start + 1:]:
        if line.strip() == "```":
            break
        body.append(line)
    return "\n".join(body)


def test_a_typed_question_streams_the_greedy_answer_turn_after_turn_with_code_rendered(page, server, tmp_path):
    from selenium.webdriver.common.by import By

    _fill(page, "system", SYSTEM)
    _fill(page, "temperature", "0")
    _fill(page, "max-tokens", "24")
    assert _ask(page, QUESTION) == "done"
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    want1 = server.client.chat.completions.create(model=MODEL, messages=turn1, temperature=0,
                                                  max_tokens=24).choices[0].message.content
    messages = page.execute_script("return window.chatState.messages")
    assert messages == [turn1[1], {"role": "assistant", "content": want1}]
    # the answer's code block is a <pre><code> holding exactly the code (the model writes one here)
    assert "```" in want1, want1
    reply = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .body")[-1]
    assert page.execute_script("return arguments[0].querySelector('pre > code').textContent", reply) == \
        _fenced_code(want1)
    meta = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta")[-1].text
    assert re.fullmatch(r"\d+ tokens · \d+\.\d tok/s · first token \d+\.\d\d s( · stopped at max tokens)?", meta), meta

    # a second turn sends the whole conversation
    _fill(page, "max-tokens", "8")
    assert _ask(page, "Now name it in one word.") == "done"
    turn2 = [*turn1, {"role": "assistant", "content": want1}, {"role": "user", "content": "Now name it in one word."}]
    want2 = server.client.chat.completions.create(model=MODEL, messages=turn2, temperature=0,
                                                  max_tokens=8).choices[0].message.content
    assert page.execute_script("return window.chatState.messages")[-1] == {"role": "assistant", "content": want2}
    assert len(page.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2
    shot = _screenshot(page, tmp_path, "chat_page.png")
    assert shot.stat().st_size > 10_000
    server.idle()


def test_stop_ends_the_request_on_the_server_and_keeps_the_partial_reply(page, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # the page sends what its fields say; here every request also asks the server to ignore EOS, so only
    # Stop can end it before its 600 tokens
    page.execute_script("""
        const original = window.fetch;
        window.fetch = (url, init) => {
          if (init && init.body) init = {...init, body: JSON.stringify({...JSON.parse(init.body), ignore_eos: true})};
          return original(url, init);
        };""")
    _fill(page, "temperature", "0")
    _fill(page, "max-tokens", "600")
    before = server.raw("GET", "/stats")[1]["generated_tokens"]
    page.find_element(By.ID, "input").send_keys("Tell me a long story about the sea.", Keys.ENTER)
    _wait(page, lambda: page.execute_script(
        "const m = document.querySelector('.msg.assistant .meta'); return m && parseInt(m.textContent) >= 3"), 60,
        "the first tokens")
    page.find_element(By.ID, "stop").click()
    _wait(page, lambda: page.execute_script("return document.body.dataset.state") == "idle", 10, "the stop")
    assert page.execute_script("return document.querySelector('.msg.assistant').dataset.state") == "stopped"
    partial = page.execute_script("return window.chatState.messages")
    assert [m["role"] for m in partial] == ["user", "assistant"] and partial[1]["content"]
    stats = server.idle()
    assert stats["generated_tokens"] - before < 400  # ended long before its 600 tokens


def test_a_wrong_api_key_is_shown_and_the_message_is_kept_to_send_again(page):
    from selenium.webdriver.common.by import By

    _fill(page, "api-key", "wrong-key")
    assert _ask(page, "Hello?", timeout=20) is None  # the failed turn is taken off the page
    status = page.find_element(By.ID, "status").text
    assert "API key" in status, status
    assert page.find_element(By.ID, "input").get_attribute("value") == "Hello?"
    assert page.execute_script("return window.chatState.messages") == []
