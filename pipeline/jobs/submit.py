"""`restyle submit <spec>`: run a job spec on a Ray cluster through Ray's job submission API.

    restyle submit jobs/nightly_restyle.yaml --address http://head:8265 [--wait]

- The submission id is `<job name>-<night>` (night = today's UTC date unless given): the same
  job submitted twice for one night is refused, by us up front with the existing job's status
  and by Ray itself (it never reuses a submission id), so a cron that fires twice, or a person
  who re-runs the cron line, cannot start a second copy. A new submission of a job while an
  earlier night of it is still pending or running is refused too (nights must not overlap:
  the later night would redo rows the earlier one has not indexed yet).
- The spec travels in the job's environment (`RESTYLE_JOB_SPEC`, see `pipeline.jobs.specs`), so
  the cluster needs no copy of the file; local paths in it must exist on the cluster.
- `--runtime-env` says how the cluster gets restyle:
    project (default)  uploads this restyle package (Ray `py_modules`) and pip-installs its
                       dependencies except torch and Ray (the cluster image brings a torch
                       built for its CUDA and the cluster's own Ray; pip must replace neither);
    source             uploads the package only: the image already has the dependencies;
    cluster            nothing: the image has restyle installed (`pip install restyle`), as
                       in the KubeRay manifests under jobs/kuberay/ (built from the wheel,
                       jobs/kuberay/Dockerfile).
- `--dry-run` prints the submission (id, entrypoint, runtime environment) and sends nothing.
- `--wait` streams the job's logs until it ends; the exit code is 0 only if it SUCCEEDED.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.jobs.specs import SPEC_ENV, SPEC_ORIGIN_ENV, SpecSource

RUNTIME_ENVS = ("project", "source", "cluster")
DISTRIBUTION = "restyle"
# The cluster brings these: its image's CUDA torch must stay, and so must its Ray (a second
# copy of Ray in the job's environment would not match the cluster's).
NOT_FROM_PIP = ("torch", "ray")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PY_MODULE_EXCLUDES = ["__pycache__", "*.pyc"]
AGENT_NOT_READY = "No available agent to submit job"
AGENT_WAIT_S = 60.0


class SubmissionError(RuntimeError):
    """The job was not submitted; the message says why."""


class DuplicateSubmissionError(SubmissionError):
    """A job with this submission id exists already (whatever its status)."""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def submission_id(name: str, night: str) -> str:
    return f"{name}-{night}"


def project_requirements() -> list[str]:
    """restyle's own dependencies (no extras, no torch, no Ray), for the pip runtime env."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as error:
        raise SubmissionError(
            f"restyle is not installed as a distribution here ({error}); "
            "use --runtime-env source or cluster"
        ) from error
    kept = []
    for requirement in requires:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        if name not in NOT_FROM_PIP:
            kept.append(requirement)
    return kept


def package_dir() -> str:
    import pipeline

    return str(Path(pipeline.__file__).resolve().parent)


def build_submission(
    spec: SpecSource, night: str, runtime: str = "project", submission: str | None = None
) -> Submission:
    """Everything `submit_job` needs; nothing is contacted yet."""
    if runtime not in RUNTIME_ENVS:
        raise SubmissionError(
            f"unknown runtime env {runtime!r}; use one of {', '.join(RUNTIME_ENVS)}"
        )
    name, kind = spec.name, spec.kind
    command = ["restyle"] if runtime == "cluster" else ["python", "-m", "pipeline.cli"]
    command += [kind, "--no-progress"]
    if kind == "nightly":
        command += ["--night", night]
    origin = spec.origin
    if not origin.startswith(("s3://", "$", "<")):
        origin = os.path.abspath(origin)
    runtime_env: dict[str, Any] = {"env_vars": {SPEC_ENV: spec.text, SPEC_ORIGIN_ENV: origin}}
    if runtime in ("project", "source"):
        runtime_env["py_modules"] = [package_dir()]
        runtime_env["excludes"] = PY_MODULE_EXCLUDES
    if runtime == "project":
        runtime_env["pip"] = project_requirements()
    return Submission(
        submission_id=submission or submission_id(name, night),
        entrypoint=shlex.join(command),
        runtime_env=runtime_env,
        metadata={"restyle_job": name, "restyle_kind": kind, "restyle_night": night},
    )


def client_for(address: str | None):
    """A JobSubmissionClient for `address` (else $RAY_ADDRESS), with a clear error."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmissionError(
            "no Ray cluster address: pass --address http://<head>:8265 or set RAY_ADDRESS"
        )
    try:
        return JobSubmissionClient(address)
    except Exception as error:  # connection refused, wrong port, not a dashboard, no token
        hint = ""
        if "uthenticat" in str(error):
            hint = (
                " (a cluster with token authentication needs RAY_AUTH_MODE=token and the "
                "cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token here)"
            )
        raise SubmissionError(
            f"cannot reach the Ray job API at {address}: {str(error).splitlines()[0]}{hint}"
        ) from error


def submit(client, submission: Submission) -> str:
    """Submit, refusing a reused submission id and an overlapping night of the same job."""
    existing = _job_info(client, submission.submission_id)
    if existing is not None:
        raise DuplicateSubmissionError(
            f"submission {submission.submission_id!r} exists already (status {existing.status}); "
            "a job runs once per night. To run it again on purpose, pass --submission-id "
            f"{submission.submission_id}-rerun1"
        )
    job = submission.metadata["restyle_job"]
    for other in client.list_jobs():
        metadata = other.metadata or {}
        if metadata.get("restyle_job") == job and str(other.status) not in TERMINAL:
            raise SubmissionError(
                f"job {job!r} is still {other.status} as {other.submission_id!r}; nights must not "
                "overlap (wait for it, or stop it with `ray job stop`)"
            )
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(
                entrypoint=submission.entrypoint,
                runtime_env=submission.runtime_env,
                metadata=submission.metadata,
                submission_id=submission.submission_id,
            )
        except RuntimeError as error:
            if "already exists" in str(error):
                raise DuplicateSubmissionError(
                    f"submission {submission.submission_id!r} exists already: {error}"
                ) from error
            if AGENT_NOT_READY in str(error) and time.monotonic() < deadline:
                time.sleep(2)  # a cluster that just started: its job agent registers late
                continue
            raise SubmissionError(
                f"Ray refused submission {submission.submission_id!r}: {error}"
            ) from error


def _job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as error:
        if "does not exist" in str(error) or "404" in str(error):
            return None
        raise


def follow(client, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs to `out` until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL:  # the log stream can close a moment before the status flips
        time.sleep(0.5)
        status = str(client.get_job_status(job_id))
    return status
