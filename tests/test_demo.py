"""`gated demo` end to end, as `scripts/demo` runs it: the gate's scripted badges, then the billing
story (mosquitto, `gated-billing serve`, a gate on MQTT) with every decision in the right order,
a member signing in to the member app with the code the demo shows, and nothing left running
afterwards."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.web.helpers import hidden

BIN = Path(sys.executable).parent

# The billing story's badges, in the order they must happen: decision and reason on each line.
STORY = [
    r"m1 Ann badges in\s+ALLOW\s+ok\b",
    r"m1 Ann badges in \(grace\)\s+ALLOW\s+ok\b",
    r"m1 Ann badges in \(suspended\)\s+DENY\s+suspended\b",
    r"m1 Ann badges in \([\d.]+ s after paying\)\s+ALLOW\s+ok\b",
    r"m2 Ben badges in \(frozen\)\s+DENY\s+frozen\b",
    r"m2 Ben badges in \(freeze over\)\s+ALLOW\s+ok\b",
]


def _processes_under(folder: Path) -> list[str]:
    """Command lines of live processes that mention the demo's folder."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone while we looked
        if str(folder) in args:
            found.append(args)
    return found


class _Output:
    """The demo's standard output as it comes, line by line, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.text = ""
        stream = proc.stdout
        assert stream is not None

        def pump() -> None:
            for line in stream:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read on until a line matches ``pattern``; fails at the end of the output or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {pattern!r} after {timeout:.0f} s:\n{self.text[-4000:]}")
            if line is None:
                pytest.fail(f"the demo ended without {pattern!r}:\n{self.text[-4000:]}")
            self.text += line
            found = re.search(pattern, line)
            if found:
                return found

    def rest(self) -> str:
        """Everything, once the demo has ended."""
        while (line := self.lines.get(timeout=30)) is not None:
            self.text += line
        return self.text


def test_demo_tells_the_whole_story_signs_ann_in_and_cleans_up(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    # From a terminal (a pty as its standard input), as a person runs it: it keeps serving.
    primary, terminal = os.openpty()
    proc = subprocess.Popen(
        [str(BIN / "gated"), "demo", "--workdir", str(work)],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, COLUMNS="160", PYTHONUNBUFFERED="1"),
    )
    os.close(terminal)
    output = _Output(proc)
    try:
        output.until(r"Everything keeps running: press Ctrl-C to stop", 240)
        app = re.search(r"member app: (http://127\.0\.0\.1:\d+)/app/", output.text)
        assert app, output.text[-2000:]
        assert "sign in as ann@example.com: the code appears here when you ask for it" in (
            output.text
        )
        # Ann asks for a sign-in in the member app, as in a browser: serve mails the code over
        # SMTP to the demo's sink, which shows it on the terminal; the code signs her in.
        with httpx.Client(base_url=app[1], timeout=30, follow_redirects=True) as browser:
            csrf = hidden(browser.get("/app/signin").text, "csrf")
            asked = browser.post("/app/signin", data={"email": "ann@example.com", "csrf": csrf})
            assert asked.status_code == 200, asked.text
            mail = output.until(
                r"mail\s+to ann@example\.com: Your sign-in code: code ([0-9]{6}), or open "
                r"(http://127\.0\.0\.1:\d+/app/signin/link/\S+)",
                60,
            )
            flow = hidden(asked.text, "flow")
            r = browser.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": mail[1]})
            assert r.status_code == 200 and str(r.url).endswith("/app/"), r.text
            assert '<span id="member-name">Ann</span>' in r.text
            # The link came with the same sign-in: used up by the code.
            assert browser.get(mail[2]).status_code == 410
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(120)
    finally:
        if proc.poll() is None:  # failed on the way: Ctrl-C still stops what the demo started
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(primary)
    out = output.rest()
    assert proc.stderr is not None
    assert proc.returncode == 0, out[-4000:] + proc.stderr.read()[-2000:]
    # The gate-only part (issue 3) still runs first.
    assert re.search(r"the same QR replayed\s+│\s+DENY\s+│\s+qr_replayed", out), out[-4000:]
    at = out.index("billing, broker and gate")
    for pattern in STORY:
        found = re.compile(pattern).search(out, at)
        assert found, f"missing, or out of order: {pattern}\n{out[-4000:]}"
        at = found.end()
    assert "every decision as expected" in out
    assert re.search(r"paid → let in: [\d.]+ s after the payment was recorded", out)
    assert not _processes_under(work)
    # Every notice went over SMTP into a file: the sign-in mail too, and Ann's receipts.
    mails = [m.read_text() for m in sorted((work / "billing" / "mail").glob("*.eml"))]
    assert any("Subject: Your sign-in code" in m for m in mails)
    assert any("Subject: Receipt" in m and "To: ann@example.com" in m for m in mails)
    # The console's address, with sign-ins that work on this store.
    assert re.search(r"staff console: http://127\.0\.0\.1:\d+/desk/", out)
    signin = re.search(r"owner: owner / (.+?), code: a recovery code \(([0-9a-z-]+),", out)
    assert signin, out[-2000:]
    from tests.billing.crashing import billing_for

    b = billing_for(work / "billing" / "billing.toml")
    try:
        access = b.staff_access()
        assert access.check_password("owner", signin[1]) is not None
        assert access.check_second_factor("owner", signin[2])
        assert access.check_password("desk", signin[1]) is not None
    finally:
        b.engine.dispose()


def test_gate_only_keeps_the_gate_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "gated"), "demo", "--gate-only", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="160"),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "qr_replayed" in result.stdout
    assert "billing, broker and gate" not in result.stdout
