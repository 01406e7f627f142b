"""The errors a user can fix, and how the ``rlvr`` command tells them from bugs.

A *named* error is a mistake in what the user gave (a config field, a data row, a path, a
missing package or login) or a condition the run detected and stopped on (a reward alarm, a
log-prob parity failure, a lost cluster worker). Its message is one sentence naming the path,
field or package, so the CLI prints it as one ``error:`` line (the traceback with ``--debug``).
Every other exception is a bug in rlvr and keeps its traceback: a ``KeyError`` deep in the
learner must never look like a config mistake.

The named classes of other modules are looked up by name (``NAMED``) among the modules already
imported, so importing this module stays cheap (no torch, no Ray) and a class whose module was
never imported cannot have been raised.
"""

from __future__ import annotations

import errno
import sys


class DataError(ValueError):
    """A data file or row the run cannot use; the message names the source, the row and the field."""


class NotFoundError(FileNotFoundError):
    """A path or name the user gave (model directory, hub id, run directory, checkpoint) that does not
    exist or lacks what it needs; the message names it and the field it came from."""


class MissingPackageError(ImportError):
    """An optional package a setting needs is not installed; the message names the package and the extra."""


class TrackerError(RuntimeError):
    """An experiment tracker cannot start (no login, bad settings); the message names it and the way out."""


class StorageError(OSError):
    """The file system refused a write (disk full, read-only, no permission): the message names the
    path and says what was kept safe. ``errno`` and ``filename`` are those of the refused write."""

    def __init__(self, message: str, err: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = err, filename

    def __str__(self) -> str:
        return str(self.args[0])


# (module, class) of the named errors; each is a user mistake or a stop the run decided on (a
# cluster error names the worker that died). StageFailed wraps whatever a stage raised, so it counts
# only when what it wraps does.
NAMED = (
    ("rlvr.errors", "DataError"), ("rlvr.errors", "NotFoundError"), ("rlvr.errors", "MissingPackageError"),
    ("rlvr.errors", "TrackerError"), ("rlvr.errors", "StorageError"),
    ("rlvr.config", "ConfigError"), ("rlvr.preflight", "PreflightError"),
    ("rlvr.alarms", "RewardAlarm"), ("rlvr.parity", "LogprobParityError"),
    ("rlvr.cluster.runtime", "ClusterError"), ("rlvr.cluster.learner_group", "LearnerRankError"),
    ("rlvr.stages.recipe", "StageFailed"), ("rlvr.stages.data", "NoPairsError"),
)
WRAPPERS = (("rlvr.stages.recipe", "StageFailed"),)

# what the file system says about itself, never about rlvr's code: disk or quota full, read-only
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _classes(pairs: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], n) for m, n in pairs if m in sys.modules and hasattr(sys.modules[m], n))


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a named error, printed as one line; anything else is a bug (traceback).

    A wrapper whose cause is not named is a bug too (a stage that failed on a KeyError), and an
    OSError whose errno is the file system's own (disk full, read-only) names its path anyway."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in ENVIRONMENT_ERRNOS:
        return True
    if not isinstance(exc, _classes(NAMED)):
        return False
    cause = exc.__cause__
    if cause is not None and isinstance(exc, _classes(WRAPPERS)):
        return is_user_error(cause)
    return True


def one_line(exc: BaseException) -> str:
    """The message of a named error (``str(KeyError('x'))`` would be ``"'x'"``); an OSError of the
    file system gets its strerror and path."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}{where}"
    return str(exc.args[0]) if len(exc.args) == 1 else str(exc)
