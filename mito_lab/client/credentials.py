"""The credentials file: one ``username:token`` line per user (reference 6.4), kept private (0600)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mito_lab.config import default_credential_path


class Credentials:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_credential_path()

    def _lines(self) -> list[tuple[str, str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            user, sep, token = line.strip().partition(":")
            if sep and user and token:
                entries.append((user, token))
        return entries

    def find(self, user: str | None = None) -> tuple[str, str] | None:
        """The line of ``user``, or the first line when no user is given."""
        for entry in self._lines():
            if user is None or entry[0] == user:
                return entry
        return None

    def save(self, user: str, token: str) -> None:
        """Replace ``user``'s line or append one; the file and its directory are created if needed."""
        entries = [entry for entry in self._lines() if entry[0] != user]
        entries.insert(0, (user, token))  # the newest login becomes the default one
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of its own (mkstemp: mode 0600): workers started together log in at once
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(descriptor, "w") as handle:
            handle.write("".join(f"{name}:{value}\n" for name, value in entries))
        os.replace(temporary, self.path)
