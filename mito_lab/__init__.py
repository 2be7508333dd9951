"""mito_lab: run experiment fleets from a notebook (a Python Mitosis)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mito-lab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
