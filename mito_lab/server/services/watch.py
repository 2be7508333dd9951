"""``--watch UUID,STATE``: has the watched task reached STATE? The reference's "reaches" relation
(section 3.4) over the exec state the coordinator recorded, with the reference's fallback on the
task's row (state and result) for what the exec state alone does not tell."""

from __future__ import annotations

from mito_lab.wire import TaskExecState as S
from mito_lab.wire import TaskResultMessage as M
from mito_lab.wire import TaskState

_ONLY_ITSELF = {
    S.FetchResourceError, S.FetchResourceTimeout, S.FetchResourceNotFound, S.FetchResourceForbidden,
    S.WatchTimeout, S.UploadFinishedResult, S.UploadCancelledResult, S.UploadResultFinished,
    S.UploadResultTimeout, S.TaskCommitted,
}


def _codes(low: int, high: int) -> set[S]:
    return {state for state in S if low <= state.code <= high}


_SATISFIED_BY: dict[S, set[S]] = {
    S.FetchResource: {state for state in S if state not in (S.WorkerExited, S.Unknown)},
    S.FetchResourceFinished: {S.FetchResourceFinished} | _codes(7, 19),
    S.Watch: _codes(7, 19),
    S.WatchFinished: {S.WatchFinished} | _codes(10, 19),
    S.ExecPending: _codes(10, 19),
    S.ExecSpawned: _codes(11, 19),
    S.ExecFinished: {S.ExecFinished, S.UploadFinishedResult},
    S.ExecTimeout: {S.ExecTimeout, S.UploadCancelledResult},
    S.UploadResult: _codes(14, 19),
    **{state: {state} for state in _ONLY_ITSELF},
    S.WorkerExited: set(),
    S.Unknown: set(),
}

_PROGRESS = {S.FetchResource, S.FetchResourceFinished, S.Watch, S.WatchFinished, S.ExecPending, S.ExecSpawned, S.ExecFinished}
_FINISHED_REACHES = _PROGRESS | {S.UploadResult, S.UploadFinishedResult}
_FAILURE_FOR_MESSAGE = {
    M.FetchResourceTimeout: S.FetchResourceTimeout,
    M.ResourceNotFound: S.FetchResourceNotFound,
    M.ResourceForbidden: S.FetchResourceForbidden,
    M.WatchTimeout: S.WatchTimeout,
    M.ExecTimeout: S.ExecTimeout,
    M.UploadResultTimeout: S.UploadResultTimeout,
}


def exec_state_reaches(current: S | None, target: S) -> bool:
    return current is not None and current in _SATISFIED_BY[target]


def row_reaches(state: TaskState, archived: bool, message: M | None, target: S) -> bool:
    """The reference's fallback when no exec state is known, from the task's row alone."""
    if state == TaskState.Running:
        return target == S.FetchResource
    if state == TaskState.Finished:
        return target in _FINISHED_REACHES or (archived and target in (S.UploadResultFinished, S.TaskCommitted))
    if state == TaskState.Cancelled and archived and message is not None:
        if target == S.TaskCommitted:
            return True
        if target in (S.UploadResult, S.UploadResultFinished):
            return message != M.UserCancellation
        if target == S.UploadCancelledResult:
            return message not in (M.UserCancellation, M.SubmitNewTaskFailed)
        if target in _PROGRESS:
            return message == M.SubmitNewTaskFailed
        return _FAILURE_FOR_MESSAGE.get(message) == target
    return False


def reaches(current: S | None, state: TaskState, archived: bool, message: M | None, target: S) -> bool:
    return exec_state_reaches(current, target) or row_reaches(state, archived, message, target)
