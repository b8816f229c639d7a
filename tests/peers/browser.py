"""Drive a headless Chromium through the DevTools protocol, for tests/page.rs.

The test starts Chromium itself (so that it can kill it by pid) with
--remote-debugging-port and hands this script the port. The script attaches
to the browser's page and answers one JSON command per stdin line with one
JSON line on stdout:

  {"open": URL}                  navigate, wait for the load event; forgets
                                 the errors of the page before
  {"eval": EXPRESSION}           {"value": ...} (promises awaited)
  {"errors": true}               {"value": [...]}: console errors, uncaught
                                 exceptions, and the browser's own error log
                                 entries (failed loads, CSP refusals) so far
  {"screenshot": PATH}           a PNG of the whole page

It prints "ready" once attached. websocket-client is the WebSocket library
(tests/peers/requirements.txt).
"""

import base64
import json
import sys
import time
import urllib.request

import websocket


class Page:
    def __init__(self, port):
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = json.load(r)
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30
        )
        self.next_id = 0
        self.errors = []
        self.loaded = False
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append("console: " + " ".join(str(t) for t in texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.errors.append(
                "exception: " + str(exception.get("description", details.get("text", "")))
            )
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif method == "Page.loadEventFired":
            self.loaded = True

    def receive(self):
        message = json.loads(self.ws.recv())
        if "id" not in message:
            self.event(message)
        return message

    def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = self.receive()
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url):
        self.loaded = False
        # The errors of this page only, from its first request on.
        self.errors = []
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 15
        while not self.loaded:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load in 15 s")
            self.receive()

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(str(result["exceptionDetails"].get("exception", result["exceptionDetails"])))
        return result.get("result", {}).get("value")

    def screenshot(self, path):
        size = self.evaluate(
            "({w: 1400, h: Math.ceil(document.documentElement.scrollHeight)})"
        )
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=size["w"],
            height=size["h"],
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))


def main():
    page = Page(int(sys.argv[1]))
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "open" in command:
                page.open(command["open"])
                answer = {"ok": True}
            elif "eval" in command:
                answer = {"value": page.evaluate(command["eval"])}
            elif "errors" in command:
                page.call("Runtime.evaluate", expression="0")  # collect what is queued
                answer = {"value": page.errors}
            elif "screenshot" in command:
                page.screenshot(command["screenshot"])
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {command}"}
        except Exception as e:  # the test shows it
            answer = {"error": repr(e)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
