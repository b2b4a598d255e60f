"""The command line's own mistakes (unknown option, missing argument, a value outside an
option's choices) as one line and exit code 2, like every other operator error.

click prints a usage box for them; an operator reading a cron mail or a Ray job log wants the
same one line as for `--width 0`: `error: --model: must be one of uso, omniconsistency, got
'flux'`. Choices stay enums (listed in `--help`, completed by the shell); only the wording of
their refusal is the config door's.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from pipeline.errors import ExitCode

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import core as click_core
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import core as click_core  # type: ignore[no-redef]
    from click import exceptions as click_errors  # type: ignore[no-redef]

DEFAULT = click_core.ParameterSource.DEFAULT

_NOT_ONE_OF = re.compile(r"^(?P<value>.*) is not one of (?P<choices>.*?)\.?$", re.DOTALL)


def _door_wording(message: str) -> str:
    """ "'flux' is not one of 'uso', 'omniconsistency'." -> "must be one of uso, omniconsistency,
    got 'flux'"; other messages unchanged."""
    match = _NOT_ONE_OF.match(message)
    if not match:
        return message
    choices = ", ".join(c.strip().strip("'\"") for c in match["choices"].split(","))
    value = match["value"].removeprefix("Value error, ")  # how typer words the coercion
    return f"must be one of {choices}, got {value}"


def one_line(error: Exception) -> str:
    """The mistake in one line, naming the option (`--model: must be ...`)."""
    if isinstance(error, click_errors.BadParameter) and error.param is not None:
        param = error.param
        opts = getattr(param, "opts", None) or []
        name = next((o for o in opts if o.startswith("--")), None) or str(
            getattr(param, "human_readable_name", param.name)
        )
        return f"{name}: {_door_wording(error.message)}"
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    ctx = getattr(error, "ctx", None)
    if isinstance(error, click_errors.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


class RestyleGroup(TyperGroup):
    """The `restyle` command group: usage errors in one line, exit codes as documented."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        from pipeline.cli.common import error_line

        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click_errors.NoArgsIsHelpError as error:
            print(error.format_message(), file=sys.stderr)
            sys.exit(ExitCode.USAGE)
        except click_errors.ClickException as error:
            error_line(one_line(error))
            usage = isinstance(error, click_errors.UsageError)
            sys.exit(ExitCode.USAGE if usage else error.exit_code)
        except typer.Abort:
            sys.exit(ExitCode.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)
