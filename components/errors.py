"""Errors users see as one line: what is wrong and which command fixes it."""


class AmaliaError(Exception):
    """An expected failure with a human reason; the CLI prints it without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class MissingInputError(AmaliaError):
    """A prerequisite file or stage output is absent."""


class ConfigError(AmaliaError):
    """params.yaml or a CLI option does not validate."""


class DataQualityError(AmaliaError):
    """Input data failed a quality gate (reports are still written)."""
