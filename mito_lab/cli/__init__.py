"""The ``mito`` command line. Exit statuses, for scripts: 0 done, 1 refused or failed, 2 usage error."""

EXIT_ERROR = 1
EXIT_USAGE = 2
