"""The reference's "reaches" relation (section 3.4), row by row."""

from __future__ import annotations

import pytest

from mito_lab.server.services.watch import exec_state_reaches, reaches, row_reaches
from mito_lab.wire import TaskExecState as S
from mito_lab.wire import TaskResultMessage as M
from mito_lab.wire import TaskState as T


@pytest.mark.parametrize(
    ("target", "satisfied_by"),
    [
        (S.FetchResource, set(S) - {S.WorkerExited, S.Unknown}),
        (S.FetchResourceFinished, {S.FetchResourceFinished} | {s for s in S if 7 <= s.code <= 19}),
        (S.FetchResourceNotFound, {S.FetchResourceNotFound}),
        (S.Watch, {s for s in S if 7 <= s.code <= 19}),
        (S.WatchFinished, {S.WatchFinished} | {s for s in S if 10 <= s.code <= 19}),
        (S.WatchTimeout, {S.WatchTimeout}),
        (S.ExecPending, {s for s in S if 10 <= s.code <= 19}),
        (S.ExecSpawned, {s for s in S if 11 <= s.code <= 19}),
        (S.ExecFinished, {S.ExecFinished, S.UploadFinishedResult}),
        (S.ExecTimeout, {S.ExecTimeout, S.UploadCancelledResult}),
        (S.UploadResult, {s for s in S if 14 <= s.code <= 19}),
        (S.TaskCommitted, {S.TaskCommitted}),
        (S.WorkerExited, set()),
        (S.Unknown, set()),
    ],
)
def test_exec_state_relation(target: S, satisfied_by: set[S]) -> None:
    assert {current for current in S if exec_state_reaches(current, target)} == satisfied_by
    assert not exec_state_reaches(None, target)


def test_row_fallback() -> None:
    for state in (T.Pending, T.Ready, T.Unknown):
        assert not any(row_reaches(state, False, None, target) for target in S)
    assert {t for t in S if row_reaches(T.Running, False, None, t)} == {S.FetchResource}
    finished_active = {t for t in S if row_reaches(T.Finished, False, None, t)}
    assert S.ExecFinished in finished_active and S.TaskCommitted not in finished_active
    assert row_reaches(T.Finished, True, None, S.TaskCommitted) and row_reaches(T.Finished, True, None, S.UploadResultFinished)
    assert not row_reaches(T.Finished, True, None, S.ExecTimeout)
    # cancelled with a message
    assert row_reaches(T.Cancelled, True, M.UserCancellation, S.TaskCommitted)
    assert not row_reaches(T.Cancelled, True, M.UserCancellation, S.UploadResult)
    assert row_reaches(T.Cancelled, True, M.ExecTimeout, S.UploadCancelledResult)
    assert not row_reaches(T.Cancelled, True, M.SubmitNewTaskFailed, S.UploadCancelledResult)
    assert row_reaches(T.Cancelled, True, M.ResourceNotFound, S.FetchResourceNotFound)
    assert row_reaches(T.Cancelled, True, M.ResourceForbidden, S.FetchResourceForbidden)
    assert not row_reaches(T.Cancelled, True, M.ExecTimeout, S.ExecSpawned)
    assert row_reaches(T.Cancelled, True, M.SubmitNewTaskFailed, S.ExecSpawned)
    assert not any(row_reaches(T.Cancelled, True, None, target) for target in S)


def test_the_combination_answers_after_commit() -> None:
    # after its commit the recorded state is TaskCommitted; ExecFinished is then known from the row
    assert reaches(S.TaskCommitted, T.Finished, True, None, S.ExecFinished)
    assert reaches(S.TaskCommitted, T.Finished, True, None, S.ExecSpawned)
    assert not reaches(S.TaskCommitted, T.Finished, True, None, S.ExecTimeout)
