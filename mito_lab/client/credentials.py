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

    def users(self) -> list[str]:
        return [user for user, _ in self._lines()]

    def save(self, user: str, token: str, default: bool = False) -> None:
        """Replace ``user``'s line in place or append one, as the reference; with ``default``
        (the ``login`` command) it becomes the first line, the default user. A one-off ``-u``
        does not change who the default is. The file and its directory are created if needed."""
        entries = self._lines()
        names = [name for name, _ in entries]
        if user in names and not default:
            entries[names.index(user)] = (user, token)
        else:
            entries = [entry for entry in entries if entry[0] != user]
            entries.insert(0 if default else len(entries), (user, token))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of its own (mkstemp: mode 0600): workers started together log in at once
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(descriptor, "w") as handle:
            handle.write("".join(f"{name}:{value}\n" for name, value in entries))
        os.replace(temporary, self.path)
