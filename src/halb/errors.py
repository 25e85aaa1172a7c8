"""Errors every halb tool reports to the user as one clear line (never a traceback)."""


class HalbError(Exception):
    """An error meant for the user; the CLI prints it and exits non-zero."""

    exit_code = 1


class UsageError(HalbError):
    """Bad command-line arguments."""

    exit_code = 2


class ConfigError(HalbError):
    """A configuration file problem, located by file and line."""

    def __init__(self, path, line, message):
        self.path = str(path) if path is not None else None
        self.line = line
        if len(message) > 400:  # a 5,000-character value in a file is not echoed whole
            message = f"{message[:240]}...[{len(message) - 340} characters]...{message[-100:]}"
        self.message = message
        super().__init__(self.__str__())

    def __str__(self):
        where = self.path or "<input>"
        if self.line:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"


class IpvsError(HalbError):
    """A table operation refused, worded as ipvsadm/libipvs words it."""


class EngineUnavailable(HalbError):
    """The selected engine cannot run here (no privilege, no nftables, no daemon)."""
