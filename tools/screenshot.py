"""Open built book pages in a real browser (headless Chromium) and save screenshots.

    python tools/screenshot.py [--html _build/html] [--out _build/screenshots] [page ...]

Serves the built book on 127.0.0.1 (an ephemeral port) and screenshots each page, by default the
results page and the stage pages. Needs Debian's `chromium` (apt-get install chromium).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PAGES = ["book/stages/06_results.html", "book/stages/05_eval.html", "book/stages/01_curate.html"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=4000"]


def screenshot(html_dir: Path, out_dir: Path, pages: list[str], width: int = 1300, height: int = 3000) -> list[Path]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("chromium not found: apt-get install chromium")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the terminal for the screenshots' paths
            pass

    handler = functools.partial(Quiet, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    try:
        for page in pages:
            if not (html_dir / page).is_file():
                raise SystemExit(f"{html_dir / page} does not exist: build the book first (make book)")
            png = out_dir / (page.replace("/", "_").removesuffix(".html") + ".png")
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                f"--screenshot={png}", f"http://127.0.0.1:{server.server_port}/{page}"],
                               check=True, capture_output=True, timeout=120)
            shots.append(png)
    finally:
        server.shutdown()
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--html", type=Path, default=Path("_build/html"))
    ap.add_argument("--out", type=Path, default=Path("_build/screenshots"))
    ap.add_argument("pages", nargs="*", default=PAGES)
    a = ap.parse_args()
    for png in screenshot(a.html, a.out, a.pages):
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
