"""The credentials file (reference 6.4), written by many processes at once (`mito manager spawn`)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mito_lab.client.credentials import Credentials


def _save_many(path: str, user: str) -> None:
    for round_ in range(50):
        Credentials(Path(path)).save(user, f"token-{round_}")


def test_concurrent_logins_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    context = multiprocessing.get_context("spawn")
    savers = [context.Process(target=_save_many, args=(str(path), f"user{i}")) for i in range(6)]
    for saver in savers:
        saver.start()
    for saver in savers:
        saver.join(60)
    assert [saver.exitcode for saver in savers] == [0] * 6  # none crashed on another's temporary file
    lines = path.read_text().splitlines()
    assert lines and all(line.startswith("user") and ":token-" in line for line in lines)  # whole lines only
    assert any(line.endswith(":token-49") for line in lines)  # the last save of all is there
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "credentials"]  # no temporary file left behind


def test_lines_are_found_by_user_and_replaced(tmp_path: Path) -> None:
    credentials = Credentials(tmp_path / "sub" / "credentials")
    assert credentials.find() is None
    credentials.save("ann", "a1")
    credentials.save("bob", "b1")
    credentials.save("bob", "b2")  # replaced in place, as the reference: the default user stays
    assert credentials.find() == ("ann", "a1")
    assert credentials.find("bob") == ("bob", "b2")
    credentials.save("bob", "b3", default=True)  # the login command: bob becomes the default
    assert credentials.find() == ("bob", "b3")
    assert (tmp_path / "sub" / "credentials").read_text() == "bob:b3\nann:a1\n"
