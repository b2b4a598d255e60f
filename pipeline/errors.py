"""The vocabulary every layer of restyle shares: item statuses and the error families.

Nothing here imports the rest of the package, so any module (models included) can use it.
Every exception keeps its fields across pickling (`__reduce__`): Ray ships errors from actors
to the driver, and an exception that cannot be rebuilt there arrives as an unreadable
`UnserializableException` instead of its one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum, StrEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Every exit code a `restyle` command returns on purpose: the one table (README, "Exit
    codes") that cron, KubeRay and CI read. 1 is never used on purpose (Python's code for an
    uncaught exception: a crash, a bug to report) and 2 keeps click's meaning (the command line
    is wrong). When several apply, the larger problem wins: INCOMPLETE over ITEMS_FAILED."""

    OK = 0  # everything asked for is done and every item came out ok
    CRASH = 1  # not returned on purpose: an unexpected exception (a bug; please report it)
    USAGE = 2  # the command line, a --config file or a job spec is wrong; nothing started
    ITEMS_FAILED = 3  # the run is complete but items failed: `restyle run ... --retry-failed`
    INCOMPLETE = 4  # shards are not committed (failed to commit, or not run yet): rerun it
    CANNOT_START = 5  # an input cannot be used (manifest, weights, storage, Ray, run folder)
    CHECK_FAILED = 6  # `manifest validate` / `weights verify` found problems (listed)
    ALREADY_SUBMITTED = 7  # `submit`: this job already ran (or runs) for this night; `run`:
    # another live driver holds the run's lease (`--join` to help it instead)
    JOB_FAILED = 8  # `submit --wait`: the job ended FAILED or STOPPED
    QUALITY_REGRESSION = 9  # `nightly`: a metric's median dropped by more than the margin
    INTERRUPTED = 75  # SIGTERM/SIGINT stopped the command (a run: after draining its shards in
    # flight): what was committed is kept, rerun it to resume (EX_TEMPFAIL)

    @classmethod
    def of_run(cls, *, shards_missing: int, items_failed: int, uncommitted: int = 0) -> ExitCode:
        """The code of a run (or a job's run) from its totals: what `run` and `status` share.
        `uncommitted`: objects of an interrupted commit (a retry's, say) still without a marker."""
        if shards_missing or uncommitted:
            return cls.INCOMPLETE
        return cls.ITEMS_FAILED if items_failed else cls.OK


class ItemStatus(StrEnum):
    """What happened to one input item; the value is what records and markers store on disk.

    `OK` and `SKIPPED` (the row belongs to another model's run) are not failures; every other
    member is an error class of the records' `status` column and the markers' histograms.
    """

    OK = "ok"
    SKIPPED = "skipped"
    BAD_INPUT = "bad_input"  # unreadable/corrupt image, impossible size, bad field value
    OUT_OF_MEMORY = "out_of_memory"  # the accelerator (or host) ran out of memory on this item
    MODEL_ERROR = "model_error"  # anything else raised while running the model on this item
    IO_ERROR = "io_error"  # the item's inputs could not be fetched from storage
    LORA_ERROR = "lora_error"  # the item's style LoRA could not be found, read or applied

    @property
    def failed(self) -> bool:
        return self not in (ItemStatus.OK, ItemStatus.SKIPPED)


class ItemError(Exception):
    """A failure scoped to one item; `kind` is an error `ItemStatus`, the message names the item."""

    def __init__(self, item_id: str, kind: str, message: str):
        super().__init__(f"item {item_id!r}: {message}")
        self.item_id = item_id
        self.kind = ItemStatus(kind)
        self.message = message

    def __reduce__(self) -> tuple:
        return (type(self), (self.item_id, str(self.kind), self.message))


class ConfigError(ValueError):
    """Command-line options or a job spec that cannot make a run configuration.

    One line naming where and what: `--width: must be between 16 and 4096, got 0`, or with the
    spec file as `origin`: `jobs/x.yaml: sampling.steps: must be an integer, got str 'ten'`.
    `where` is None for a problem of the whole input.
    """

    def __init__(self, where: str | None, message: str, origin: str | None = None):
        super().__init__(": ".join(part for part in (origin, where, message) if part))
        self.where = where
        self.message = message
        self.origin = origin

    def __reduce__(self) -> tuple:
        return (type(self), (self.where, self.message, self.origin))


class RunError(RuntimeError):
    """The run cannot start or continue (bad manifest, conflicting config, model won't load)."""


class ClusterLostError(RunError):
    """The Ray cluster went away mid-run (its GCS stopped answering): what was committed is
    kept, and rerunning the same command resumes (exit INCOMPLETE)."""

    def __reduce__(self) -> tuple:
        return (type(self), (str(self),))


class Interrupted(BaseException):
    """SIGTERM or SIGINT outside a run's drain (planning, joining Ray, waiting for actors, or a
    command without a drain): the command stops where it is. Whatever it committed is kept,
    so rerunning it resumes (exit INTERRUPTED). A BaseException, like KeyboardInterrupt: the
    `except Exception` that turns a bad item into a failed record must never catch a stop."""

    def __init__(self, message: str, signal_name: str = ""):
        super().__init__(message)
        self.signal_name = signal_name  # "SIGTERM", "SIGINT"

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.signal_name))


class StartError(RunError):
    """Something every actor needs (weights, a model) cannot be loaded: the run cannot start.

    Plain and picklable (one string), so it crosses Ray intact, whatever library raised the
    original error in the actor."""

    def __reduce__(self) -> tuple:
        return (type(self), (str(self),))


class RunConflictError(RunError):
    """The run folder holds outputs of another configuration."""


class RunLeaseHeldError(RunError):
    """Another live driver holds the run's lease; the message names it (host, pid, since)."""


class DerivedManifestConflict(RunError):
    """A folder already holds a derived manifest made from other inputs."""


class WeightsError(ValueError):
    """A weights spec, source, registry or file is unusable; the message says which and why."""


class HubAccessError(WeightsError):
    """The Hugging Face Hub refused a request or could not be reached."""


class WeightIntegrityError(WeightsError):
    """A file's size or sha256 is not the expected one (truncated, corrupt, or changed)."""


class WeightSpaceError(WeightsError):
    """Not enough free disk space for the files still to download."""


class WeightLayoutError(WeightsError, FileNotFoundError):
    """A weights root lacks a file a model needs; the message names the path that was expected."""


class WeightFileError(WeightsError):
    """A weight file is unreadable, truncated, or its keys/shapes do not match the architecture.

    The message names the file and lists the missing, unexpected or mis-shaped keys.
    """

    def __init__(self, path: Path | str, problem: str, keys: Sequence[str] = ()):
        more = f" ... (+{len(keys) - 20} more)" if len(keys) > 20 else ""
        shown = ", ".join(list(keys)[:20]) + more
        super().__init__(f"{path}: {problem}" + (f": {shown}" if keys else ""))
        self.path = str(path)
        self.problem = problem
        self.keys = list(keys)

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.problem, self.keys))
