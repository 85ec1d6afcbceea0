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


class ResourceError(AmaliaError):
    """The machine ran out of something a stage needs (disk space, memory). Not retried as
    transient: the same run on the same machine would fail again; the run directory stays
    resumable (finished stages and training checkpoints are kept)."""


def resource_error(stage: str, exc: BaseException, run_dir: object) -> ResourceError | None:
    """The `ResourceError` for `exc` raised while stage `stage` ran, or None when `exc` is
    not a full disk / quota (`ENOSPC`, `EDQUOT`) or an out-of-memory (`MemoryError`, torch's
    `OutOfMemoryError`, the CPU allocator's "can't allocate memory")."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return ResourceError(
            f"stage {stage}: no space left on device{where}",
            f"free space under {run_dir} (or set runs_dir to a larger disk), then run the "
            f"same command again: finished stages and checkpoints are kept")
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in text):
        detail = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        return ResourceError(
            f"stage {stage}: out of memory ({detail})",
            "lower train.per_device_batch_size or model.max_length (training), "
            "validate.workers / evaluate.batch_size (data, evaluation), or use a bigger "
            "machine; then run the same command again (it resumes)")
    return None
