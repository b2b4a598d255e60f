"""The one error family of weight handling: every message names the file or source and the fix.

`WeightsError` is a `ValueError` so the CLI's existing handlers print it as a one-line error.
`HubAccessError` says the Hub refused or could not be reached (token, licence, network);
`WeightIntegrityError` says bytes on disk or in a mirror are not the expected ones (size,
sha256); `WeightSpaceError` says a disk is too full to stage or pull.
"""

from __future__ import annotations


class WeightsError(ValueError):
    """A weights spec, source, registry or file is unusable; the message says which and why."""


class HubAccessError(WeightsError):
    """The Hugging Face Hub refused a request or could not be reached."""


class WeightIntegrityError(WeightsError):
    """A file's size or sha256 is not the expected one (truncated, corrupt, or changed)."""


class WeightSpaceError(WeightsError):
    """Not enough free disk space for the files still to download."""
