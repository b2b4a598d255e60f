"""Every Hugging Face Hub failure as one `HubAccessError` line that says what to do.

Shared by the two Hub users: the weight registry's source (`pipeline.weights.hub`, FLUX.1-dev is
gated, so a missing token or an unaccepted licence is the usual first error) and the auxiliary
models named `hf://owner/repo[@revision]` (`pipeline.weights.aux_hub`). Each says where the repo
id and revision were written (`HubRequest.named_in`) and what to use when the Hub cannot be
reached (`offline_advice`), so the operator knows which file or option to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.errors import HubAccessError, WeightsError

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubRequest:
    """One repo at one revision on one endpoint, and what its failure messages point to."""

    repo_id: str
    revision: str
    endpoint: str
    token: str | None
    named_in: str  # where the repo id and revision come from: "the registry", "the hf:// spec"
    offline_advice: str  # what to use instead of an unreachable Hub, after "or "
    licence_url: str | None = None

    @property
    def page(self) -> str:
        """Where the licence of a gated repo is accepted."""
        return self.licence_url or f"{DEFAULT_ENDPOINT}/{self.repo_id}"

    def token_state(self) -> str:
        return (
            "no Hugging Face token is set (HF_TOKEN, or `hf auth login`)"
            if not has_token(self.token)
            else "the token in use has no access to it"
        )


def request_from_env(repo_id: str, revision: str, named_in: str, offline_advice: str) -> HubRequest:
    """A request to the endpoint and with the token huggingface_hub would use: $HF_ENDPOINT
    (else the public Hub) and $HF_TOKEN (else the token `hf auth login` saved)."""
    import os

    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    token = os.environ.get("HF_TOKEN") or None
    return HubRequest(repo_id, revision, endpoint, token, named_in, offline_advice)


@contextmanager
def hub_errors(request: HubRequest, action: str) -> Iterator[None]:
    """Turn huggingface_hub errors raised while doing `action` into `HubAccessError`s (a file
    missing at the revision: `WeightsError`)."""
    from huggingface_hub import errors as hf

    repo_id = request.repo_id
    try:
        yield
    except hf.GatedRepoError as error:
        raise HubAccessError(
            f"{repo_id} is gated and {request.token_state()}: accept the licence at "
            f"{request.page} while logged in to Hugging Face, then set HF_TOKEN to a token of "
            f"that account (could not {action}; HTTP {_status(error)})"
        ) from error
    except hf.RepositoryNotFoundError as error:
        raise HubAccessError(
            f"{repo_id} was not found on {request.endpoint}, or it is private or gated and "
            f"{request.token_state()}: check the repo id in {request.named_in} and set HF_TOKEN "
            f"to a token with access (could not {action}; HTTP {_status(error)})"
        ) from error
    except hf.RevisionNotFoundError as error:
        raise HubAccessError(
            f"{repo_id} has no revision {request.revision!r} (could not {action}): fix the "
            f"revision in {request.named_in}"
        ) from error
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled) as error:
        raise unreachable(request, action, error) from error
    except hf.EntryNotFoundError as error:  # the remote file is missing
        raise WeightsError(
            f"could not {action}: no such file at revision {request.revision} "
            f"({request.named_in} may be out of date)"
        ) from error
    except hf.HfHubHTTPError as error:
        status = _status(error)
        hint = (
            f"{request.token_state()}, or the token lacks read permission"
            if status in (401, 403)
            else "the Hub may be unavailable; retry later"
        )
        raise HubAccessError(f"the Hub refused to {action} (HTTP {status}): {hint}") from error
    except hf.HTTPError as error:  # transport errors: refused, reset, timeout, DNS
        raise unreachable(request, action, error) from error


def unreachable(request: HubRequest, action: str, error: Exception) -> HubAccessError:
    return HubAccessError(
        f"cannot reach the Hugging Face Hub at {request.endpoint} to {action} "
        f"({type(error).__name__}: {error}); check the network, proxy or HF_ENDPOINT, "
        f"or {request.offline_advice}"
    )


def has_token(token: str | None) -> bool:
    """A token given, or one saved by `hf auth login` (huggingface_hub sends that one)."""
    if token:
        return True
    from huggingface_hub import get_token

    return bool(get_token())


def _status(error: Exception) -> int | str:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", "?")
