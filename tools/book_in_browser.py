"""Open every page of a built book in headless Chromium, as a reader with no network would
(``file://``), and report what a reader would see wrong:

- raw TeX delimiters (``\\[`` or ``\\(``) left in the rendered text (math that did not render;
  code blocks are not prose and are skipped);
- a request to any host at all (the book must be whole by itself: MathJax, fonts, images);
- an image that did not load;
- a table wider than the page's content column (a wide table must scroll inside its own box).

    python tools/book_in_browser.py [--html _build/html] [--screenshots DIR] [page.html ...]

Exit status 1 when any page has a problem. ``tests/test_pipeline.py`` runs it on the smoke book.
Needs Debian's ``chromium`` (``apt-get install chromium``); talks to it over the DevTools protocol
on the loopback interface with ``websocket-client`` (a dependency of Jupyter's server).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]
#: schemes a page of the book may load from: itself, and what it builds in memory
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
SKIP = {"genindex.html", "search.html"}

#: the checks run in the page once it has loaded and MathJax (if any) has typeset it
CHECKS_JS = r"""
(() => {
  const problems = [];
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  // 1. raw TeX delimiters in the rendered prose (not in code, not inside rendered math)
  const skip = (el) => el.closest('pre, code, script, style, textarea, mjx-container, .MathJax, mjx-assistive-mml');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.parentElement || skip(n.parentElement)) continue;
    const t = n.textContent;
    for (const d of ['\\[', '\\(', '\\begin{']) {
      const i = t.indexOf(d);
      if (i >= 0) { problems.push(`raw math ${d} in the text: "${t.slice(Math.max(0, i - 30), i + 50).trim()}"`); break; }
    }
  }
  // 2. images that did not load
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image not loaded: ${img.getAttribute('src')}`);
  }
  // 3. tables wider than the content column (a table inside a sideways-scrolling box is fine)
  const col = article.getBoundingClientRect();
  document.querySelectorAll('table').forEach((t, k) => {
    if (!t.offsetParent) return;  // inside a folded (hidden) cell
    let scroller = null;
    for (let a = t.parentElement; a && a !== article.parentElement; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === 'auto' || ox === 'scroll') { scroller = a; break; }
      if ((ox === 'hidden' || ox === 'clip') && a.clientWidth + 1 < t.scrollWidth) {
        problems.push(`table ${k + 1} is cut off: ${Math.round(t.scrollWidth)} px wide in a ${a.clientWidth} px box that hides overflow`);
        return;
      }
    }
    const box = (scroller || t).getBoundingClientRect();
    if (box.right > col.right + 1 || box.left < col.left - 1) {
      const head = (t.innerText || '').trim().slice(0, 60).replace(/\s+/g, ' ');
      problems.push(`table ${k + 1} is wider than the page's content column (${Math.round(box.width)} px in ${Math.round(col.width)} px): "${head}"`);
    }
  });
  return problems;
})()
"""
#: resolves when MathJax (if the page loaded it) has typeset the page; false when it never started
MATHJAX_READY_JS = r"""
(async () => {
  for (let i = 0; i < 100 && document.readyState !== 'complete'; i++) await new Promise(r => setTimeout(r, 50));
  if (!document.querySelector('script[src*="mathjax"], script[src*="MathJax"]')) return 'no-math';
  for (let i = 0; i < 200; i++) {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; return 'typeset'; }
    await new Promise(r => setTimeout(r, 50));
  }
  return 'mathjax never started';
})()
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal DevTools-protocol client for one page target (commands and their events)."""

    def __init__(self, ws_url: str, timeout: float = 60):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == event:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with a fresh profile, debugged over the loopback interface only."""

    def __init__(self, width: int = 1280, height: int = 900):
        exe = chromium()
        if not exe:
            raise FileNotFoundError("chromium not found: apt-get install chromium")
        self.profile = tempfile.TemporaryDirectory(prefix="book-chromium-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [exe, *FLAGS, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # its own group: closed whole
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.tab = DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Page", "Network", "Runtime"):
            self.tab.send(f"{domain}.enable")
        self.tab.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def check(self, url: str, screenshot: Path | None = None) -> list[str]:
        """Load ``url`` and return the problems a reader would see (empty when none)."""
        tab = self.tab
        tab.events.clear()
        tab.send("Page.navigate", url=url)
        tab.wait_for("Page.loadEventFired", timeout=60)
        ready = tab.send("Runtime.evaluate", expression=MATHJAX_READY_JS, awaitPromise=True,
                         returnByValue=True)["result"].get("value")
        time.sleep(0.3)  # fonts and on-demand MathJax parts requested while typesetting
        problems = [] if ready in ("no-math", "typeset") else [f"math not rendered: {ready}"]
        problems += tab.send("Runtime.evaluate", expression=CHECKS_JS, returnByValue=True)["result"].get("value") or []
        tab.send("Runtime.evaluate", expression="0")  # drain the events sent so far
        for e in tab.events:
            if e["method"] == "Network.requestWillBeSent":
                req = e["params"]["request"]["url"]
                if not req.startswith(LOCAL_SCHEMES):
                    problems.append(f"request to another host: {req[:120]}")
        if screenshot is not None:
            shot = tab.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return problems

    def close(self) -> None:
        if getattr(self, "tab", None):
            self.tab.close()
        # the browser and its helper processes (renderer, zygote): the process group it leads
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=10)
                time.sleep(0.2)
            except subprocess.TimeoutExpired:
                continue
        self.profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def book_pages(html_dir: Path) -> list[Path]:
    """Every page of the built book (not Sphinx's search and index pages, not its static files, not
    the root page that only redirects to the first chapter)."""
    def redirect(p: Path) -> bool:
        return 'http-equiv="refresh"' in p.read_text(errors="replace")[:2000].lower()
    return sorted(p for p in Path(html_dir).rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(html_dir).parts) and p.name not in SKIP
                  and not redirect(p))


def check_book(html_dir: Path, pages: list[Path] | None = None, screenshots: Path | None = None) -> dict[str, list[str]]:
    """``{page: problems}`` for every page of the built book at ``html_dir``."""
    html_dir = Path(html_dir).resolve()
    out = {}
    with Browser() as browser:
        for page in pages or book_pages(html_dir):
            page = (html_dir / page).resolve()
            rel = str(page.relative_to(html_dir))
            shot = screenshots / (rel.replace("/", "_").removesuffix(".html") + ".png") if screenshots else None
            out[rel] = browser.check(page.as_uri(), shot)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--html", type=Path, default=Path("_build/html"))
    ap.add_argument("--screenshots", type=Path, help="also save a full-page PNG of each page here")
    ap.add_argument("pages", nargs="*", type=Path)
    a = ap.parse_args()
    report = check_book(a.html, a.pages or None, a.screenshots)
    for page, problems in report.items():
        print(f"{page}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  - {p}")
    return 1 if any(report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
