#!/usr/bin/python3
"""Drives a real browser to a page that needs a TLS client certificate (standard library only).

  browserdrive.py chromium|firefox --visit URL TITLE TEXT [--visit ...] --profile DIR --port PORT [--pin PIN] [--timeout S]
                  [--unattended] [--headless]

chromium: chromedriver (W3C WebDriver over HTTP on PORT) starts /usr/bin/chromium with the NSS
          database in $HOME/.pki/nssdb (the caller sets HOME).
firefox:  /usr/bin/firefox-esr -marionette with profile DIR (its NSS database), Marionette on PORT
          (the profile's user.js must set marionette.port to it).
Both run on $DISPLAY (Xvfb), load pages without waiting (pageLoadStrategy none), and meanwhile
watch the X windows: the browser's own "enter the token's PIN" dialog gets PIN typed into it with
xdotool (real key events, as a person types); Chromium's certificate selector, shown inside the
browser window, is accepted with Return. With no --pin, a PIN dialog is an error. A page is done
when the window shows its TITLE and its element #subject contains TEXT.
--unattended: no key is ever sent (Chromium must choose the certificate itself, e.g. by the
AutoSelectCertificateForUrls policy); a PIN dialog is an error, reported as below.
--headless (implies --unattended): chromium --headless=new or firefox-esr -headless, no window at
all; the page is read through WebDriver or Marionette alone. Prints, one line each:
  URL: dialog: <window title>: PIN typed     a PIN dialog was answered
  URL: subject: <#subject's text>           what the page showed
  URL: dialog: <window title> (no PIN to give)   a PIN dialog appeared without --pin
Exit status 0 only when every page showed its TEXT, in one browser start.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

PIN_DIALOG_TITLES = {
    "chromium": ["Unlock Security Device"],
    "firefox": ["Password Required"],
}


def log(message):
    print(message, flush=True)


def xdotool(*args):
    result = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def visible_windows(name):
    out = xdotool("search", "--onlyvisible", "--name", name)
    return [w for w in out.split() if w]


def type_into(window, text, then_return=True):
    """Focus WINDOW and type TEXT with XTEST key events (what a keyboard sends)."""
    xdotool("windowfocus", "--sync", window)
    time.sleep(0.3)
    if text:
        xdotool("type", "--delay", "60", text)
    if then_return:
        xdotool("key", "Return")


class WebDriverError(Exception):
    pass


# --- chromium: W3C WebDriver over HTTP ---------------------------------------------------------------

class ChromeDriver:
    def __init__(self, port, profile):
        self.base = f"http://127.0.0.1:{port}"
        log_path = os.path.join(profile, "chromedriver.log")
        # A session of its own: Chromium and its helpers stay in chromedriver's process group, so
        # quit() can stop them all even when the browser no longer answers (a page that never
        # loaded, headless, leaves Chromium running after chromedriver is gone).
        self.process = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}", f"--log-path={log_path}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.session = None
        deadline = time.time() + 30
        while True:
            try:
                if self.request("GET", "/status")["value"].get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if time.time() > deadline or self.process.poll() is not None:
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.2)

    def request(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:300]!r}")

    def start(self, profile, headless=False):
        args = (["--headless=new"] if headless else []) + ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--password-store=basic", f"--user-data-dir={os.path.join(profile, 'chromium')}",
                "--window-size=1024,768"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "none",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}
        self.session = self.request("POST", "/session", caps, timeout=120)["value"]["sessionId"]

    def navigate(self, url):
        self.request("POST", f"/session/{self.session}/url", {"url": url})

    def subject(self):
        script = "var e = document.getElementById('subject'); return e ? e.textContent : null;"
        return self.request("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []},
                            timeout=10)["value"]

    def quit(self):
        try:
            if self.session:
                self.request("DELETE", f"/session/{self.session}", timeout=30)
        except (OSError, WebDriverError):
            pass
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        # Whatever of Chromium is left in the group.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(1)


# --- firefox: Marionette over TCP ----------------------------------------------------------------------

class Marionette:
    def __init__(self, port, profile, headless=False):
        log_path = os.path.join(profile, "firefox.log")
        self.log_file = open(log_path, "wb")
        self.process = subprocess.Popen(["/usr/bin/firefox-esr", "-marionette", "-no-remote", "-profile", profile]
                                        + (["-headless"] if headless else []),
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        self.message_id = 0
        self.buffer = b""
        deadline = time.time() + 90
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise WebDriverError("Firefox's Marionette did not start listening")
                time.sleep(0.3)
        self.sock.settimeout(60)
        hello = self.receive()
        if hello.get("marionetteProtocol") != 3:
            raise WebDriverError(f"unexpected Marionette greeting {hello}")

    def receive(self):
        while b":" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WebDriverError("Marionette closed the connection")
            self.buffer += chunk
        length_text, rest = self.buffer.split(b":", 1)
        length = int(length_text)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WebDriverError("Marionette closed the connection")
            rest += chunk
        self.buffer = rest[length:]
        return json.loads(rest[:length])

    def send(self, name, params=None):
        self.message_id += 1
        payload = json.dumps([0, self.message_id, name, params or {}]).encode()
        self.sock.sendall(str(len(payload)).encode() + b":" + payload)

    def command(self, name, params=None):
        """Sends a command and waits for its reply (replies to earlier sent-only commands are skipped)."""
        self.send(name, params)
        while True:
            reply = self.receive()
            if isinstance(reply, list) and reply[0] == 1 and reply[1] == self.message_id:
                if reply[2]:
                    raise WebDriverError(f"{name}: {reply[2]}")
                return reply[3]

    def start(self, profile, headless=False):
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"pageLoadStrategy": "none"}}})

    def navigate(self, url):
        # Not waited for: while Firefox's PIN dialog is up, Marionette answers nothing.
        self.send("WebDriver:Navigate", {"url": url})

    def subject(self):
        script = "var e = document.getElementById('subject'); return e ? e.textContent : null;"
        return self.command("WebDriver:ExecuteScript", {"script": script, "args": []}).get("value")

    def quit(self):
        # A modal dialog left open (a PIN nobody gave) keeps Marionette from answering: wait for
        # the answer briefly, then stop Firefox with SIGTERM.
        try:
            self.sock.settimeout(10)
            self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        except (OSError, WebDriverError, ValueError):
            self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log_file.close()


def visit(driver, options, url, title, expect):
    """One page: navigate, answer PIN dialogs, accept Chromium's certificate selector, read #subject."""
    shown, answered = None, 0
    browser_window = "Chromium" if options.browser == "chromium" else "Mozilla Firefox"
    driver.navigate(url)
    deadline = time.time() + options.timeout
    last_return = time.time()
    while time.time() < deadline:
        for dialog_title in PIN_DIALOG_TITLES[options.browser]:
            for window in visible_windows(dialog_title):
                name = xdotool("getwindowname", window)
                if options.pin is None:
                    log(f"{url}: dialog: {name} (no PIN to give)")
                    return False
                type_into(window, options.pin)
                answered += 1
                log(f"{url}: dialog: {name}: PIN typed")
                time.sleep(1)
        # Ask the page only once its title is in the window's name: a script sent while the
        # browser waits for a certificate or a PIN only times out. Headless, there is no window
        # to look at: ask, with a short timeout.
        if options.headless or visible_windows(title):
            try:
                shown = driver.subject()
            except (OSError, WebDriverError):
                shown = None
            if shown is not None and expect in shown:
                log(f"{url}: subject: {shown}")
                return True
        elif options.browser == "chromium" and not options.unattended and time.time() - last_return > 3:
            # Chromium's certificate selector lives inside the browser window: Return accepts
            # the certificate it offers (harmless while nothing is shown).
            windows = visible_windows(browser_window)
            if windows:
                type_into(windows[0], "")
            last_return = time.time()
        time.sleep(0.5)
    names = [xdotool("getwindowname", w) for w in visible_windows(".")]
    log(f"{url}: subject: {shown!r} (expected {expect!r} within {options.timeout:.0f} s; "
        f"{answered} PIN dialogs answered; windows: {names})")
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("browser", choices=["chromium", "firefox"])
    parser.add_argument("--visit", nargs=3, action="append", required=True, metavar=("URL", "TITLE", "TEXT"),
                        help="a page, its <title> (seen in the window's name once loaded), the text #subject must hold")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pin")
    parser.add_argument("--timeout", type=float, default=90, help="seconds per page")
    parser.add_argument("--unattended", action="store_true", help="send no key at all")
    parser.add_argument("--headless", action="store_true", help="no window (implies --unattended)")
    options = parser.parse_args()
    if options.headless:
        options.unattended = True
    if options.unattended and options.pin is not None:
        parser.error("--unattended sends no key, so no --pin")
    # A timeout's SIGTERM still stops the browser and its driver (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))

    driver = ChromeDriver(options.port, options.profile) if options.browser == "chromium" \
        else Marionette(options.port, options.profile, options.headless)
    try:
        driver.start(options.profile, options.headless)
        for url, title, expect in options.visit:
            if not visit(driver, options, url, title, expect):
                return 1
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
