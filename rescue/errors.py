"""Error hierarchy: every error a user can meet is a RescueError with a one-line message
and an exit code, so front ends never show a traceback."""

SECTORS_LOST = 5
"""Exit code of a capture or clone that finished but could not read every sector: the copy is
complete except for the unreadable sectors, which are zero-filled and listed (like restic's
"incomplete snapshot", a success a script must not mistake for a clean one)."""


INTERNAL = 70
"""Exit code of `rescue unattended` when a bug of ours (not a RescueError) stopped the job: it
still prints its RESCUE-RESULT line and does what rescue.on_fail says (EX_SOFTWARE)."""


class RescueError(Exception):
    """Base of all expected failures. str(err) is the one-line message for the user."""

    exit_code = 2


class UsageError(RescueError):
    exit_code = 2


class RefusedError(RescueError):
    """A safety rule refused the operation; the message names the rule."""

    exit_code = 3


class IntegrityError(RescueError):
    """Stored data is damaged or missing; the message names what and where."""

    exit_code = 1


class RepoError(RescueError):
    """The repository cannot be used (missing, wrong format, no space)."""

    exit_code = 2


class DeviceError(RescueError):
    """A drive cannot be read or written, or vanished."""

    exit_code = 4


class FilesystemError(RescueError):
    """A filesystem tool failed or the filesystem is not what it claims."""

    exit_code = 4


class TooSmallError(RefusedError):
    """The target cannot hold the image."""


class Cancelled(RescueError):
    exit_code = 130
