"""The actors of one stage (model actors of a run, caption actors), started and kept alive.

One pool serves every stage, so both follow the same rules: one actor per GPU when the cluster
has GPUs (`num_gpus=1`, so Ray pins it with CUDA_VISIBLE_DEVICES), else CPU actors holding half
a CPU (a 2-core machine hangs when actors hold every CPU); no automatic restarts (the driver
decides what to redo, so Ray never repeats a shard behind our back); an actor that dies is
replaced by a fresh one; actors that cannot load their model stop the run with one message.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

from pipeline.errors import StartError
from pipeline.execution.logs import actor_env

log = logging.getLogger(__name__)

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
CPU_ACTOR_CPUS = 0.5  # CPU-only actors take half a CPU, so Ray never starves its own tasks
GPU_ACTOR_CPUS = 1.0


@dataclass(frozen=True)
class ActorSpec:
    """What a pool starts: a plain Python class (its body knows nothing of Ray), the arguments of
    its constructor, how many tasks each actor holds at once, and a name for messages."""

    cls: type
    args: tuple[Any, ...]
    tasks_per_actor: int = 1
    what: str = "actors"


def pool_size(requested: int, tasks: int) -> int:
    """`requested` actors, or one per GPU of the cluster (at least one) when 0; never more
    actors than tasks."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return max(1, min(requested or max(1, gpus), tasks))


LOAD_POLL_S = 0.5


class ActorPool:
    """The live actors of one stage; `actors[i]` is the handle in slot i. `on_loading(ready,
    total)` hears, about every half second, how many of the actors have loaded their model."""

    def __init__(
        self, spec: ActorSpec, size: int, on_loading: Callable[[int, int], None] | None = None
    ):
        self.spec = spec
        self.size = size
        self.on_loading = on_loading
        gpu = int(ray.cluster_resources().get("GPU", 0)) > 0
        options: dict[str, Any] = {  # actor options (Ray's type stubs know only task options)
            "num_gpus": 1 if gpu else 0,
            "num_cpus": GPU_ACTOR_CPUS if gpu else CPU_ACTOR_CPUS,
            "max_restarts": 0,
            "max_task_retries": 0,
            "max_concurrency": spec.tasks_per_actor + 2,  # + progress polls and info calls
            "runtime_env": {"env_vars": actor_env()},  # log settings; libraries kept quiet
        }
        self._remote: Any = ray.remote(**options)(spec.cls)
        self.actors = [self._start() for _ in range(size)]
        self._check_loaded(self.actors)

    def _start(self) -> Any:
        return self._remote.remote(*self.spec.args)

    def _check_loaded(self, actors: list[Any]) -> None:
        refs = [a.info.remote() for a in actors]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=LOAD_POLL_S)
            if self.on_loading is not None:
                self.on_loading(len(refs) - len(pending), len(refs))
        try:
            infos = ray.get(refs)
        except ACTOR_LOST as error:
            raise StartError(f"{self.spec.what} could not start: {_reason(error)}") from None
        for info in infos:
            log.debug("%s ready: %s", self.spec.what, info)
        self.infos = infos

    def free_slots(self, busy: Counter[int]) -> list[int]:
        """One entry per task an actor can still take (`busy`: slot -> tasks it holds)."""
        return [
            slot for slot in range(self.size) for _ in range(self.spec.tasks_per_actor - busy[slot])
        ]

    def replace_if_current(self, slot: int, handle: Any) -> None:
        """Start a fresh actor in `slot` unless that dead handle was already replaced."""
        if self.actors[slot] is not handle:
            return
        with contextlib.suppress(Exception):  # already gone
            ray.kill(handle, no_restart=True)
        self.actors[slot] = self._start()
        self._check_loaded([self.actors[slot]])

    def poll(self, method: str, timeout_s: float = 0.2) -> list[Any]:
        """Answers of every live actor's `method` within `timeout_s` (dead or slow ones skipped)."""
        refs = [getattr(a, method).remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        answers = []
        for ref in ready:
            with contextlib.suppress(*ACTOR_LOST):
                answers.append(ray.get(ref))
        return answers

    def shutdown(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)


def _first_line(error: BaseException) -> str:
    """The cause of an actor's death in one line: the last line of its traceback when it died
    raising (`ValueError: ...`), else Ray's first line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, ACTOR_LOST):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if not line.startswith(("File ", "^", "("))]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def _reason(error: BaseException) -> str:
    """One line from an actor's failed start: the actor's own `StartError` when it raised one
    (Ray embeds it in a long traceback), else the traceback's last line."""
    text = str(error)
    found = re.findall(r"StartError: (.+)", text)
    if found:
        return found[-1].strip()
    return _first_line(error)[:500]
