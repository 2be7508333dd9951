"""mito_lab: run experiment fleets from a notebook (a Python Mitosis).

``Client`` / ``AsyncClient`` are the SDK (with the wire's ``SubmitTaskReq``, ``TaskSpec`` and the ``TasksQueryReq`` filter);
``Sweep``, ``Dashboard`` and the magics (``%load_ext mito_lab``) are the notebook layer built on it.
They are imported on first use, so the CLI and the servers do not pay for pandas and ipywidgets."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mito-lab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Client": "mito_lab.client.sync",
    "AsyncClient": "mito_lab.client.api",
    "TaskHandle": "mito_lab.client.handle",
    "MitoError": "mito_lab.client.http",
    "MitoRateLimited": "mito_lab.client.http",
    "SubmitTaskReq": "mito_lab.wire",
    "TaskSpec": "mito_lab.wire",
    "TasksQueryReq": "mito_lab.wire",
    "Sweep": "mito_lab.sweeps",
    "Dashboard": "mito_lab.magics.dashboard",
    "record": "mito_lab.sweeps",
    "load_ipython_extension": "mito_lab.magics",
    "unload_ipython_extension": "mito_lab.magics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mito_lab' has no attribute {name!r}")
