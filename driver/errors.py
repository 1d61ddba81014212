"""Errors of the driver, grouped by when they happen. All derive from
``remote_al.errors.RemoteALError``, the one base of both sides (errors of the transfer seam,
the dataset store and Globus logins live next to their code and derive from it too).

- ``ConfigError``: raised before any work, when a campaign/team file is wrong.
- ``BackendUnavailable``: the endpoint cannot take work right now (offline, network);
  the driver waits and retries, nothing is lost.
- ``TaskFailed``: the remote function ran and raised; retried up to a limit, then quarantined.
- ``PayloadTooLarge``: a request would exceed the 10 MB task limit; refused before sending.
- ``FunctionNotAllowed``: the endpoint refuses a function id (not in allowed_functions).
- ``CampaignLocked``: another driver is running the same campaign.
"""

from __future__ import annotations

from remote_al.errors import RemoteALError

__all__ = ["RemoteALError", "ConfigError", "BackendUnavailable", "TaskFailed", "PayloadTooLarge",
           "FunctionNotAllowed", "CampaignLocked"]


class ConfigError(RemoteALError, ValueError):
    """A campaign, team or site file (or a command-line option) is wrong. Raised before any
    work starts: before a campaign's state is created or changed, before any process runs.

    ``field`` is where, as the user wrote it (``structures[2].temperatures_K[0]``,
    ``labeler.settings.incar.ML_LMLFF``, ``--walltime``); ``problem`` what is wrong; ``fix``
    what to do. ``source`` is the file it came from, where one is known (the CLI names it).
    """

    def __init__(self, field: str, problem: str, fix: str = "", source: str = ""):
        self.field = field
        self.problem = problem
        self.fix = fix
        self.source = str(source)
        msg = f"{field}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class BackendUnavailable(RemoteALError):
    """Raised by a backend or transfer when the endpoint or service cannot accept or report
    work right now (offline, unreachable, rate-limited); the driver retries later, nothing
    is lost."""


class TaskFailed(RemoteALError):
    """A remote function raised, or its result could not be used (set on the task's future,
    or raised by ``submit`` for a request that cannot be sent). ``retryable`` says whether
    running it again can help; the loop retries up to a limit, then quarantines."""

    def __init__(self, message: str, code: str = "RemoteExecutionError", retryable: bool = True):
        self.code = code
        self.retryable = retryable
        super().__init__(message)


class PayloadTooLarge(TaskFailed):
    """Raised by ``submit`` before sending a request over the 10 MB Globus Compute limit."""

    def __init__(self, message: str):
        super().__init__(message, code="PayloadTooLarge", retryable=False)


class FunctionNotAllowed(TaskFailed):
    """The endpoint refuses a function id (not in its ``allowed_functions``): raised by
    ``submit`` or set on the task's future; never retried."""

    def __init__(self, message: str):
        super().__init__(message, code="FUNCTION_NOT_ALLOWED", retryable=False)


class CampaignLocked(RemoteALError):
    """Raised when a second driver tries to run a campaign that another driver holds."""
