"""LEADERBOARD.html in a real headless browser (the system's Chromium, driven over the DevTools
protocol on a pipe): it loads without console errors, every image resolves, a click on a column
header sorts the rows, and its links lead to the cells' meta.json.

Chromium is required: without it the test fails (CI installs it, see .ci/run), unless
CRYOBENCH_NO_BROWSER=1 is set explicitly. CRYOBENCH_CHROMIUM names another binary.
"""
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from cryobench.report.figures import write_leaderboard
from test_report import _runs, _write_cell

TIMEOUT = 60.0


def _chromium() -> str:
    found = os.environ.get("CRYOBENCH_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found:
        return found
    if os.environ.get("CRYOBENCH_NO_BROWSER") == "1":
        pytest.skip("CRYOBENCH_NO_BROWSER=1: the browser test is skipped")
    pytest.fail("no Chromium found for the browser test: install it (Debian: apt-get install -y "
                "chromium), set CRYOBENCH_CHROMIUM=/path/to/chrome, or set CRYOBENCH_NO_BROWSER=1 "
                "to skip it explicitly")


class Browser:
    """Headless Chromium with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated
    JSON on file descriptors 3 (to the browser) and 4 (from it); one page, attached flat."""

    def __init__(self, binary: str, profile: Path):
        to_browser, self._in = os.pipe()       # we write _in; the browser reads fd 3
        self._out, from_browser = os.pipe()    # the browser writes fd 4; we read _out

        def fds():                             # in the child, before exec
            # via copies above 10: the pipes may themselves be fds 3 or 4, and dup2 onto the
            # same number would keep close-on-exec; dup2 onto another number clears it
            a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=fds)
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self.proc.stderr.read().decode()[-2000:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params):
        """Send one command (to the page's session if ``session``) and return its result."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._in, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            m = self._message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def page(self, method: str, **params):
        return self.call(method, self.session, **params)

    def wait_for(self, method: str) -> dict:
        """The first event ``method`` (already received or the next ones)."""
        deadline = time.monotonic() + TIMEOUT
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def js(self, expression: str):
        """Evaluate ``expression`` in the page; its value (JSON), or an error with the exception."""
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed, released) at the middle of the first match."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads reported so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            os.close(fd)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A small fake results folder (two sets) and its leaderboard."""
    root = tmp_path_factory.mktemp("html")
    runs = list(_runs())
    for run in runs[:6]:                                   # task-a: a × 3, b × 2, c diverged
        _write_cell(root / "small", *run)
    _write_cell(root / "other", *runs[6])
    written = write_leaderboard(root)
    assert root / "LEADERBOARD.html" in written
    return root


@pytest.fixture(scope="module")
def browser(board, tmp_path_factory):
    b = Browser(_chromium(), tmp_path_factory.mktemp("profile"))
    for domain in ("Page", "Runtime", "Log"):
        b.page(f"{domain}.enable")
    b.page("Page.navigate", url=(board / "LEADERBOARD.html").as_uri())
    b.wait_for("Page.loadEventFired")
    yield b
    b.close()


def test_page_loads_without_console_errors_and_every_image_resolves(browser):
    assert browser.js("document.title") == "cryobench leaderboard"
    images = browser.js("Array.from(document.images, i => [i.getAttribute('src'), i.complete,"
                        " i.naturalWidth])")
    assert len(images) >= 2 * 4                 # convergence, densities, fsc, profile per set
    assert [src for src, complete, width in images if not (complete and width > 0)] == []
    assert browser.js("document.querySelectorAll('table.sortable').length") >= 3
    assert browser.errors() == []


TABLE = "#small table.sortable"                          # task-a: a (3 seeds), b (2), c failed


def _column(browser, col: int) -> list[str]:
    return browser.js(f"Array.from(document.querySelector('{TABLE}').tBodies[0].rows,"
                      f" r => r.cells[{col}].textContent)")


def test_clicking_a_header_sorts_the_rows(browser):
    heads = browser.js(f"Array.from(document.querySelector('{TABLE}').tHead.rows[0].cells,"
                       " c => c.textContent)")
    final = heads.index("Final")
    before = _column(browser, final)
    assert _column(browser, 0) == ["a", "b", "c"] and before[2] == "failed"
    value = lambda s: float("inf") if s == "failed" else float(s.replace(",", ""))
    assert value(before[0]) > value(before[1])               # so that sorting changes the order
    browser.click(f"{TABLE} th:nth-child({final + 1})")
    up = _column(browser, final)
    assert up == [before[1], before[0], "failed"]            # numeric ascending, failed (+inf) last
    assert _column(browser, 0) == ["b", "a", "c"]            # whole rows move
    browser.click(f"{TABLE} th:nth-child({final + 1})")
    assert _column(browser, final) == ["failed", before[0], before[1]]
    assert browser.js(f"document.querySelector('{TABLE} th[aria-sort]').textContent") == "Final"
    browser.click(f"{TABLE} th:nth-child(1)")                # a text column: by label
    assert _column(browser, 0) == ["a", "b", "c"]
    assert browser.errors() == []


def test_sort_keys_numbers_exponents_and_dashes(browser):
    """'1.2e+04' sorts as 12,000, '—' last either way, thousands separators ignored."""
    got = browser.js("""(() => {
      const t = document.createElement('table'); t.className = 'sortable';
      t.innerHTML = '<thead><tr><th>v</th></tr></thead><tbody>' +
        ['1.2e+04', '—', '950', '+3.5', '1,100.5', '-2'].map(v => '<tr><td>' + v + '</td></tr>').join('') +
        '</tbody>';
      document.body.appendChild(t);
      const col = () => Array.from(t.tBodies[0].rows, r => r.cells[0].textContent);
      cryobenchSort.sortBy(t, 0, false); const up = col();
      cryobenchSort.sortBy(t, 0, true); const down = col();
      t.remove(); return [up, down];
    })()""")
    assert got[0] == ["-2", "+3.5", "950", "1,100.5", "1.2e+04", "—"]
    assert got[1] == ["1.2e+04", "1,100.5", "950", "+3.5", "-2", "—"]


def test_every_link_leads_to_a_file_and_runs_to_their_meta_json(browser, board):
    links = browser.js("Array.from(document.links, a => a.href)")
    files = [Path(unquote(urlparse(h).path)) for h in links if h.startswith("file:")]
    assert [f for f in files if not f.is_file()] == []
    metas = {f.parent.name for f in files if f.name == "meta.json"}
    assert metas == {p.name for p in board.glob("*/cells/*")}             # every run is linked
    assert any(f.suffix == ".svg" for f in files)
