"""dsh's errors: bad invocation or files mean nothing was run -> exit 255
(1..254 count the machines that failed)."""
from halb.errors import ConfigError, UsageError


class DshUsageError(UsageError):
    """Bad invocation of `halb dsh`: nothing was run."""

    exit_code = 255


class DshConfigError(ConfigError):
    """A dsh file problem (file:line): nothing was run."""

    exit_code = 255
