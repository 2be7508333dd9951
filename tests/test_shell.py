"""The interactive client (``mito client -i``), driven through a pseudo-terminal."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

from conftest import Platform

PROMPT = "[mito::client]>"  # the trailing space is drawn as a cursor move
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


class Terminal:
    def __init__(self, platform: Platform, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = platform.env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="200", LINES="50")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mito_lab", "client", "-c", platform.url, *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=platform.home, start_new_session=True,
        )
        os.close(slave)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 30) -> str:
        """Everything printed until ``text`` appears (escape sequences removed)."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never appeared; the terminal shows:\n{self.seen[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    break
                self.seen += ESCAPES.sub("", chunk)
        before, _, self.seen = self.seen.partition(text)
        return before

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, line: str, output: str) -> None:
        """Type a command and wait for ``output`` (text only the command prints, never the typed
        line, so redraws of the prompt line cannot confuse it), then for the next prompt."""
        self.type(line + "\r")
        self.read_until(output)
        self.read_until(PROMPT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


def test_the_interactive_client(platform: Platform) -> None:
    platform.add_user("tom")
    shell = Terminal(platform, "-u", "tom", "-p", "tom-password", "-i")
    try:
        shell.read_until(PROMPT)
        shell.expect("auth", "tom\n")
        shell.type("submit -- echo hello\r")
        shell.read_until("Submitted task ")
        task = shell.read_until(" ")
        shell.read_until(PROMPT)
        shell.expect("get nonsense", "invalid choice: 'nonsense'")  # an error does not end the shell
        shell.type(f"get logs {task} --follow\r")  # no worker here: it waits for output that never comes
        shell.read_until("--follow\n")
        time.sleep(1)
        shell.process.send_signal(signal.SIGINT)  # Ctrl-C, as the terminal sends it to the running command
        shell.read_until("^C (stopped)")
        shell.read_until(PROMPT)
        shell.expect("auth", "tom\n")  # the shell is still there
        shell.expect("help get", "attachment-meta")
        shell.type("half typed words")
        shell.type("\x03")  # Ctrl-C clears the line and prompts again
        shell.read_until(PROMPT)
        shell.expect("auth", "tom\n")  # (the cleared words were not run)
        shell.expect('submit -- echo "oops', "No closing quotation")
        # the session is ended elsewhere (an administrator resets the password): the shell asks again
        reset = platform.api("POST", "/admin/users/tom/password", {"new_md5_password": list(hashlib.md5(b"fresh").digest())})
        assert reset.status == 200
        shell.type("get tasks\r")
        shell.read_until("get tasks\n")
        shell.read_until("Password for tom: ")
        shell.type("fresh\r")
        shell.read_until(task)  # the command ran once logged in again
        shell.read_until(PROMPT)
        shell.expect("auth", "tom\n")
        shell.type("\x04")  # Ctrl-D leaves
        assert shell.process.wait(30) == 0
    finally:
        shell.close()
    history = (platform.home / "cache" / "mitosis" / "client-history").read_text()
    assert "submit -- echo hello" in history and "help get" in history

    again = Terminal(platform, "-u", "tom", "-p", "fresh", "-i")
    try:
        again.read_until(PROMPT)
        again.type("\x1b[A")  # arrow up: the last command of the previous run comes back
        again.read_until("auth", timeout=10)
        again.type("\x03")
        again.read_until(PROMPT)
        again.type("exit\r")
        assert again.process.wait(30) == 0
    finally:
        again.close()
