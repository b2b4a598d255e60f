"""A real headless Chromium (Debian's `chromium`), driven over the DevTools protocol.

Opens a page, waits for it to load, and reports what a person at the browser would notice:
console errors, uncaught exceptions, failed requests, images that did not decode; takes a
screenshot. No browser download: it uses the system's chromium (scripts/test.sh installs it
with apt-get where missing).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import websocket

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
START_TIMEOUT_S = 60


def browser_path() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@dataclass
class PageVisit:
    console_errors: list[str] = field(default_factory=list)
    images: dict = field(default_factory=dict)  # total, loaded, broken (their srcs)
    screenshot: Path | None = None
    title: str = ""


class Chromium:
    def __init__(self, profile: Path):
        binary = browser_path()
        if binary is None:
            raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
        self.profile = profile
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,1600",
                "--allow-file-access-from-files",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self._ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout_s: float = 30) -> None:
        if any(e.get("method") == event for e in self.events):
            return
        self.ws.settimeout(timeout_s)
        while True:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == event:
                return

    def visit(self, url: str, screenshot: Path) -> PageVisit:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        visit = PageVisit()
        check = (
            "(() => { const imgs = [...document.images]; return JSON.stringify({total: imgs.length,"
            " loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
            " broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)}); })()"
        )
        deadline = time.monotonic() + 30
        while True:
            value = self.call("Runtime.evaluate", expression=check, returnByValue=True)
            visit.images = json.loads(value["result"]["value"])
            if not visit.images["broken"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        visit.title = self.call(
            "Runtime.evaluate", expression="document.title", returnByValue=True
        )["result"]["value"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        visit.screenshot = screenshot
        self.call("Runtime.evaluate", expression="0")  # flush pending events
        visit.console_errors = _errors(self.events)
        return visit

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console: " + " ".join(str(a.get("value")) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"network: {params.get('errorText')} ({params.get('type')})")
    return found


def open_browser() -> Chromium:
    return Chromium(Path(tempfile.mkdtemp(prefix="restyle-chromium-")))
