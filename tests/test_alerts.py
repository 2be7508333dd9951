"""Campaign alerts (issue 22): a label's runs notify a webhook, signed with the alert's secret, when
they are all done or when their failures reach a threshold; retried with backoff, never holding up
the coordinator; through the SDK, the CLI and, for a sweep, ``on_done`` in a real kernel. The
webhook is a small HTTP server of the test's own that records what it receives."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from pydantic import ValidationError
from traitlets.config import Config

from conftest import ADMIN, Platform, backend_args, require_service, start_platform
from mito_lab import Client
from mito_lab.magics.notice import notify
from mito_lab.testing import CHROMIUM, free_port, isolated_env, jupyterlab, launch_chromium, run_notebook_in_page, wait_until
from test_notebook import Kernel, value_of
from test_sweeps import EXPERIMENT

SECRET = "s3cret-for-the-campaign-webhook"
# retries a tenth of a second apart, a receiver that hangs given up on after two seconds, three
# attempts; webhooks only to this machine (the hosts allowed)
SETTINGS = {"MITO_ALERT_BACKOFF": "100ms", "MITO_ALERT_TIMEOUT": "2s", "MITO_ALERT_ATTEMPTS": "3", "MITO_ALERT_HOSTS": "127.0.0.1"}
FAIL_UNLESS_CODE = "exit ${CODE:-3}"  # fails, unless a rerun sets CODE=0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook on a loopback port: records every POST, answers the ``statuses`` given in turn
    and then 200; with ``hang``, never answers (until closed)."""

    def __init__(self, statuses: Sequence[int] = (), hang: bool = False) -> None:
        self.received: list[Received] = []
        self._statuses = list(statuses)
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                if hang:
                    receiver._released.wait(60)
                    return
                self.send_response(receiver._statuses.pop(0) if receiver._statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        wait_until(lambda: len(self.received) >= count, f"{count} webhook POSTs", timeout)
        return self.received

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers made by the test (``receivers.append(Receiver(...))``), closed after it."""
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def receiver(made: list[Receiver], statuses: Sequence[int] = (), hang: bool = False) -> Receiver:
    made.append(Receiver(statuses, hang))
    return made[-1]


@pytest.fixture(params=["sqlite-local", "postgres-local"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator on each database with the alert settings above, and one worker."""
    platform = start_platform(tmp_path / "platform", *backend_args(request.param, request), env=SETTINGS)
    platform.start_worker()
    yield platform
    platform.stop()


@pytest.fixture
def sqlite_lab(tmp_path: Path) -> Iterator[Platform]:
    platform = start_platform(tmp_path / "platform", env=SETTINGS)
    platform.start_worker()
    yield platform
    platform.stop()


@pytest.fixture
def sdk(tmp_path: Path) -> Iterator[Any]:
    """``sdk(platform)``: a client logged in as the admin, closed after the test."""
    made: list[Client] = []

    def connect(platform: Platform) -> Client:
        made.append(Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials"))
        return made[-1]

    yield connect
    for client in made:
        client.close()


def settled(client: Client) -> dict[str, str] | None:
    """Each alert's last delivery by label, once none is under way any more."""
    deliveries = {row.label: row.delivery for row in client.alerts().itertuples()}
    return deliveries if all(d and d.startswith(("delivered", "refused", "gave up")) for d in deliveries.values()) else None


def signed_by(received: Received, secret: str) -> bool:
    """The receiver's check (as the README shows it): HMAC-SHA256 of ``<timestamp>.<body>``."""
    timestamp = received.headers["X-Mito-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers["X-Mito-Signature"], f"sha256={expected}") and abs(time.time() - int(timestamp)) < 300


def submit(platform: Platform, command: str, label: str, group: str | None = None, user: str = ADMIN[0]) -> str:
    body: dict[str, Any] = {"task_spec": {"args": ["bash", "-c", command]}, "labels": [label]}
    if group:
        body["group_name"] = group
    answer = platform.api("POST", "/tasks", body, user=user)
    assert answer.status == 200, answer.body
    return answer.json["uuid"]


def test_done_and_failures_fire_once_signed_and_again_after_reruns(lab: Platform, sdk: Any, receivers: list[Receiver]) -> None:
    client = sdk(lab)
    hook = receiver(receivers)
    alert = client.alert("campaign", hook.url, SECRET, failures=2)
    assert [event.value for event in alert.on] == ["done", "failures"] and alert.failures == 2 and alert.active
    assert alert.secret_hint == "…" + SECRET[-4:] and SECRET not in alert.model_dump_json()
    failing = [submit(lab, FAIL_UNLESS_CODE, "campaign") for _ in range(2)]
    for _ in range(2):
        submit(lab, "true", "campaign")
    submit(lab, "true", "another-label")
    first = hook.wait_for(2)
    assert all(signed_by(received, SECRET) for received in first)
    assert not signed_by(first[0], SECRET + "x")  # the check can fail
    by_event = {received.json["event"]: received for received in first}
    assert set(by_event) == {"done", "failures"}
    done = by_event["done"].json
    assert done["counts"] == {"runs": 4, "succeeded": 2, "failed": 2, "running": 0, "waiting": 0}
    assert (done["group"], done["label"], done["alert"]) == (ADMIN[0], "campaign", alert.id)
    assert done["text"].startswith(f"campaign in group {ADMIN[0]}: all runs have ended (4 runs: 2 succeeded, 2 failed")
    assert by_event["failures"].json["counts"]["failed"] == 2 and by_event["failures"].json["failures"] == 2
    assert by_event["done"].headers["X-Mito-Event"] == "done" and by_event["done"].headers["Content-Type"] == "application/json"

    # the failed runs again, fixed: the label's runs are the newest attempts, and done fires again
    reruns = client.rerun(failing, envs={"CODE": "0"})
    for handle in reruns:
        handle.wait(timeout=60)  # type: ignore[union-attr]
    again = hook.wait_for(3)[2].json
    assert again["event"] == "done" and again["counts"] == {"runs": 4, "succeeded": 4, "failed": 0, "running": 0, "waiting": 0}
    assert wait_until(lambda: settled(client), "the delivery recorded") == {"campaign": "delivered: HTTP 200, attempt 1 of 3"}
    [listed] = client.alerts().itertuples()
    assert listed.last_event == "done"
    assert listed.on == ["done", "failures"] and listed.active and listed.fired_at is not None
    raw = lab.api("GET", "/alerts").body
    assert SECRET.encode() not in raw and b"secret_hint" in raw
    # one more run that ends re-arms done only; nothing fired twice for the same runs
    submit(lab, "true", "campaign")
    fourth = hook.wait_for(4)[3].json
    assert fourth["event"] == "done" and fourth["counts"]["runs"] == 5
    client.remove_alert(alert.id)
    assert client.alerts().empty
    submit(lab, "true", "campaign")
    probe = receiver(receivers)
    client.alert("campaign", probe.url, SECRET)  # evaluated with the same runs: fires now, its elder is gone
    probe.wait_for(1)
    assert len(hook.received) == 4


def test_two_coordinators_sharing_redis_send_one_post(tmp_path: Path, pg_url: str, redis_url: str, receivers: list[Receiver]) -> None:
    """Both hear every task end (Redis): the alert's mark, raised by one, keeps the other from sending it again."""
    shared = ("--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    first = start_platform(tmp_path / "a", *shared, env=SETTINGS)
    keys = first.home / "coordinator-data"
    second = start_platform(tmp_path / "b", *shared, "--access-token-private-path", str(keys / "private.pem"),
                            "--access-token-public-path", str(keys / "public.pem"), env=SETTINGS)
    try:
        hook, probe = receiver(receivers), receiver(receivers)
        alert = {"label": "shared", "url": hook.url, "secret": SECRET}
        assert second.api("POST", "/alerts", alert).status == 200
        first.start_worker()  # the task ends through the first coordinator
        first.wait_task(submit(first, "true", "shared"))
        hook.wait_for(1)
        # a new alert on the label is evaluated (with the first one) by the second coordinator: once
        # its POST is in, the second has looked at the ended runs, and found them sent
        assert second.api("POST", "/alerts", {**alert, "url": probe.url}).status == 200
        probe.wait_for(1)
        assert len(hook.received) == 1
    finally:
        first.stop()
        second.stop()


def test_a_failing_receiver_gets_retries_and_a_refusing_one_does_not(sqlite_lab: Platform, sdk: Any, receivers: list[Receiver]) -> None:
    client = sdk(sqlite_lab)
    flaky = receiver(receivers, statuses=[500, 503])
    refusing = receiver(receivers, statuses=[401])
    client.alert("flaky", flaky.url, SECRET)
    client.alert("refused", refusing.url, SECRET)
    submit(sqlite_lab, "true", "flaky")
    submit(sqlite_lab, "true", "refused")
    attempts = flaky.wait_for(3)
    assert len({received.headers["X-Mito-Delivery"] for received in attempts}) == 1  # one delivery, three attempts
    assert all(received.body == attempts[0].body and signed_by(received, SECRET) for received in attempts)
    deliveries = wait_until(lambda: settled(client), "both deliveries to end")
    assert deliveries["flaky"] == "delivered: HTTP 200, attempt 3 of 3"
    assert deliveries["refused"] == "refused by the receiver: HTTP 401, attempt 1 of 3"
    assert len(refusing.received) == 1
    assert "attempt 1 of 3 failed: HTTP 500; retrying in 0.1 s" in sqlite_lab.log


def test_a_receiver_that_hangs_holds_up_nothing(sqlite_lab: Platform, sdk: Any, receivers: list[Receiver]) -> None:
    client = sdk(sqlite_lab)
    stuck = receiver(receivers, hang=True)
    fine = receiver(receivers)
    client.alert("stuck", stuck.url, SECRET)
    submit(sqlite_lab, "true", "stuck")
    stuck.wait_for(1)  # a POST is now waiting for an answer that does not come
    started = time.monotonic()
    with urllib.request.urlopen(f"{sqlite_lab.url}/health", timeout=5) as answer:
        assert answer.status == 200
    assert time.monotonic() - started < 5
    client.alert("fine", fine.url, SECRET)  # another alert is evaluated and sent meanwhile
    task = submit(sqlite_lab, "true", "fine")
    sqlite_lab.wait_task(task)
    assert fine.wait_for(1)[0].json["label"] == "fine"
    deliveries = wait_until(lambda: settled(client), "the hanging receiver given up on", timeout=60)
    assert deliveries["stuck"].startswith("gave up after 3 attempts: Timeout") and deliveries["fine"].startswith("delivered")
    assert len(stuck.received) == 3


def test_bad_alerts_are_refused_with_a_reason(sqlite_lab: Platform, sdk: Any) -> None:
    good = {"label": "x", "url": "http://127.0.0.1:9/hook", "secret": SECRET}
    for change, reason in [
        ({"url": "ftp://127.0.0.1/hook"}, "url: Value error, a webhook URL is http:// or https:// with a host, not 'ftp://127.0.0.1/hook'"),
        ({"url": "not a url"}, "url: Value error, a webhook URL is http:// or https:// with a host, not 'not a url'"),
        ({"url": "http://10.1.2.3/hook"}, "webhooks may only name the hosts 127.0.0.1 (alert_hosts), not 10.1.2.3"),
        ({"secret": "short"}, "secret: String should have at least 16 characters"),
        ({"on": ["failures"]}, "body: Value error, on 'failures' takes one threshold: failures (a count) or failure_share (0 to 1)"),
        ({"failures": 2}, "body: Value error, a failures threshold needs 'failures' among the events (on)"),
        ({"on": ["finished"]}, "on.0: Input should be 'done' or 'failures'"),
        ({"group_name": "nowhere"}, "User or group with name nowhere not found"),
    ]:
        answer = sqlite_lab.api("POST", "/alerts", {**good, **change})
        assert answer.status in (400, 404) and answer.json["msg"].endswith(reason), (change, answer.body)
    assert sqlite_lab.api("DELETE", "/alerts/12345").json == {"msg": "Alert 12345 not found"}
    assert sqlite_lab.api("GET", "/alerts?grup=x").status == 400
    client = sdk(sqlite_lab)
    with pytest.raises(ValueError, match="give a number of runs"):
        client.alert("x", good["url"], SECRET, failures="many")
    with pytest.raises(ValidationError, match="webhook URL"):
        client.alert("x", "file:///etc/passwd", SECRET)


def test_roles_and_revocation(sqlite_lab: Platform, receivers: list[Receiver]) -> None:
    for name in ("boss", "writer", "reader"):
        sqlite_lab.add_user(name)
    assert sqlite_lab.api("POST", "/groups", {"group_name": "lab"}, user="boss").status == 200
    assert sqlite_lab.api("PUT", "/groups/lab/users", {"relations": {"writer": "Write", "reader": "Read"}}, user="boss").status == 200
    assert sqlite_lab.api("POST", "/workers", {"groups": ["lab:write"]}, user="boss").status == 200  # (a worker of lab, never run)
    writers_hook, boss_hook = receiver(receivers), receiver(receivers)
    alert = {"group_name": "lab", "label": "exp", "url": writers_hook.url, "secret": SECRET}
    refused = sqlite_lab.api("POST", "/alerts", alert, user="reader")
    assert refused.status == 403 and refused.json["msg"].endswith("this needs role Write in group lab, you have Read")
    created = sqlite_lab.api("POST", "/alerts", alert, user="writer")
    assert created.status == 200 and created.json["url"] == writers_hook.url
    listed = sqlite_lab.api("GET", "/alerts?group=lab", user="reader").json["alerts"]
    port = writers_hook.url.split(":")[2].split("/")[0]
    assert [(a["creator_username"], a["url"], a["active"]) for a in listed] == [("writer", f"http://127.0.0.1:{port}/…", True)]
    assert sqlite_lab.api("DELETE", f"/alerts/{created.json['id']}", user="reader").status == 403

    # the writer leaves the group: her alert stays listed, inactive, and no longer fires
    assert sqlite_lab.api("POST", "/groups/lab/users/remove", {"users": ["writer"]}, user="boss").status == 200
    assert sqlite_lab.api("GET", "/alerts?group=lab", user="writer").status == 403
    [listed] = sqlite_lab.api("GET", "/alerts?group=lab", user="boss").json["alerts"]
    assert listed["active"] is False
    task = submit(sqlite_lab, "true", "exp", group="lab", user="boss")
    assert sqlite_lab.api("DELETE", f"/tasks/{task}", user="boss").status == 200  # the label's one run ends (cancelled)
    boss = sqlite_lab.api("POST", "/alerts", {**alert, "url": boss_hook.url}, user="boss").json
    assert boss_hook.wait_for(1)[0].json["counts"] == {"runs": 1, "succeeded": 0, "failed": 1, "running": 0, "waiting": 0}
    assert writers_hook.received == []  # evaluated together with the boss's, which fired
    assert sqlite_lab.api("DELETE", f"/alerts/{listed['id']}", user="boss").status == 200
    assert [a["id"] for a in sqlite_lab.api("GET", "/alerts?group=lab", user="boss").json["alerts"]] == [boss["id"]]


def test_the_cli(sqlite_lab: Platform, receivers: list[Receiver]) -> None:
    hook = receiver(receivers)
    added = sqlite_lab.mito("alert", "add", "cli-label", hook.url, "--secret", SECRET, "--failures", "50%")
    assert added.stdout.strip() == (f"Alert 1 on label cli-label in group {ADMIN[0]}: done, failures >= 50% of the runs -> {hook.url} "
                                    f"(secret …{SECRET[-4:]})")
    submit(sqlite_lab, "exit 1", "cli-label")
    assert {received.json["event"] for received in hook.wait_for(2)} == {"done", "failures"}
    wait_until(lambda: "delivered" in sqlite_lab.mito("alert", "list").stdout.splitlines()[-1], "the listing to show the delivery")
    header, rule, row = sqlite_lab.mito("alert", "list").stdout.splitlines()
    assert header.split() == ["ID", "LABEL", "ON", "URL", "SECRET", "CREATOR", "ACTIVE", "FIRED", "DELIVERY"]
    assert row.startswith("1   cli-label  done, failures >= 50% of the runs") and "delivered: HTTP 200" in row
    as_json = json.loads(sqlite_lab.mito("--json", "alert", "list").stdout)
    assert as_json["alerts"][0]["label"] == "cli-label" and "secret" not in as_json["alerts"][0]
    refused = sqlite_lab.mito("alert", "add", "x", "ftp://example.org/", "--secret", SECRET, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().endswith("a webhook URL is http:// or https:// with a host, not 'ftp://example.org/'")
    assert sqlite_lab.mito("alert", "remove", "1").stdout.strip() == "Removed alert 1"
    assert sqlite_lab.mito("alert", "list").stdout.strip() == f"No alerts in group {ADMIN[0]}"
    missing = sqlite_lab.mito("alert", "remove", "1", check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: Alert 1 not found"


def test_a_sweep_tells_the_notebook_and_a_webhook_when_it_is_done(sqlite_lab: Platform, receivers: list[Receiver]) -> None:
    hook = receiver(receivers)
    kernel = Kernel(sqlite_lab)
    try:
        kernel.execute(
            "import time\nimport mito_lab\nfrom mito_lab import Sweep\nclient = mito_lab.Client()\n"
            f"sweep = Sweep.launch(client, {str(EXPERIMENT)!r}, {{'lr': [0.01], 'seed': [1, 2]}}, name='nb-done')\n"
            f"alert = sweep.alert({hook.url!r}, {SECRET!r})\n"
            "done = []\nsweep.on_done(lambda counts: done.append((counts, sweep.counts())))"  # the callback may call the client
        )
        # the callback runs while a cell runs (this one waits for it)
        waited = kernel.execute("deadline = time.monotonic() + 240\nwhile not done and time.monotonic() < deadline:\n    time.sleep(0.1)\n"
                                "len(done), done[0][0] == done[0][1], done[0][0]")
        assert value_of(waited) == "(1, True, {'Succeeded': 2, 'Failed': 0, 'Running': 0, 'Waiting': 0})"
        notice = kernel.wait_for(lambda m: m["msg_type"] == "display_data" and "Sweep nb-done is done" in m["content"]["data"].get("text/plain", ""),
                                 "the notice", since=0)
        shown = notice["content"]["data"]
        assert shown["text/plain"] == "Sweep nb-done is done: 2 succeeded, 0 failed"
        assert ">nb-done</code> · 2/2 ended · 2 succeeded · 0 failed" in shown["text/html"]  # the sweep's final bar, where widgets do not show
        model = shown["application/vnd.jupyter.widget-view+json"]["model_id"]
        opened = kernel.wait_for(lambda m: m["msg_type"] == "comm_open" and m["content"]["comm_id"] == model, "the notice's widget", since=0)
        state = opened["content"]["data"]["state"]
        assert (state["message"], state["kind"], state["shown"]) == (shown["text/plain"], "success", False)
        [posted] = hook.wait_for(1)
        assert posted.json["label"] == "mito-sweep:nb-done" and posted.json["counts"]["succeeded"] == 2 and signed_by(posted, SECRET)
        listed = kernel.execute("%load_ext mito_lab\nframe = %mito alert list\ntype(frame).__name__, list(frame['label']), list(frame['on'])")
        assert value_of(listed) == "('ReadableFrame', ['mito-sweep:nb-done'], [['done']])"
    finally:
        kernel.close()


def test_a_notice_outside_a_notebook(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify("no IPython: nothing shown", "info")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.instance(config=config)
    try:
        notify("Sweep x is done: 1 succeeded, 0 failed", "success")  # a terminal: the message as text
        assert capsys.readouterr().out == "Sweep x is done: 1 succeeded, 0 failed\n"
    finally:
        InteractiveShell.clear_instance()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page_app", ["hidden", "exposed"])
def test_the_notice_pops_up_in_jupyterlab(page_app: str, tmp_path: Path) -> None:
    """In Chromium: the toast (drawn alike when the page hides JupyterLab's application, JupyterLab's
    own when it exposes it) and the banner in the output, the toast once however often the output is drawn."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        require_service("Debian's Chromium is not installed (apt-get install chromium)")
    settings = tmp_path / "jupyter"
    settings.mkdir()
    if page_app == "exposed":
        (settings / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))
    cells = [
        "from mito_lab.magics.notice import notify\nnotify('Sweep grid is done: 5 succeeded, 1 failed', 'warning', '<b class=\"shown-banner\">grid: 6/6 ended</b>')",
        # the same notice shown again (a second view of its model): the banner, no second toast
        "from ipywidgets.widgets.widget import _instances\nnext(w for w in _instances.values() if type(w).__name__ == 'Notice')",
    ]
    env = isolated_env(tmp_path, JUPYTER_CONFIG_DIR=str(settings))
    with jupyterlab(tmp_path / "notebooks", cells, env, tmp_path / "jupyterlab.log") as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            run_notebook_in_page(page, url)
            banners = page.locator(".jp-OutputArea .mito-notice .shown-banner")
            expect(banners).to_have_count(2, timeout=60_000)
            expect(banners.first).to_have_text("grid: 6/6 ended")
            toast = page.locator(".mito-notice-toast" if page_app == "hidden" else ".jp-Notification-Toast-warning")
            expect(toast).to_contain_text("Sweep grid is done: 5 succeeded, 1 failed")
            expect(toast).to_have_count(1)
            assert page.evaluate("Boolean(window.jupyterapp)") == (page_app == "exposed")
            if page_app == "hidden":
                toast.get_by_title("Dismiss").click()
                expect(toast).to_have_count(0)
        finally:
            browser.close()
