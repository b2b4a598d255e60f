"""The actors of one stage (model actors of a run, caption and eval actors), started as the
cluster allows and kept as it changes.

One pool serves every stage, so all follow the same rules: one actor per GPU when the cluster
has GPUs (`num_gpus=1` and 1 CPU, so Ray pins it with CUDA_VISIBLE_DEVICES), else CPU actors
holding half a CPU (a 2-core machine hangs when actors hold every CPU); no automatic restarts
(the driver decides what to redo, so Ray never repeats a shard behind our back).

Nothing waits in silence. Each actor is built in two steps (`_hosted`): a constructor that only
keeps its arguments, so the pool learns when Ray *placed* it, then `load` (the model). The
driver hands work to each actor as soon as it is loaded; actors Ray cannot place are counted,
with what they need and what the cluster has free, in `notes()` (the progress display) and the
log. Every `RESCAN_S` the pool re-reads the cluster: with `--actors 0` it grows when nodes join
and stops asking for actors the cluster can no longer hold. An actor lost with its node is
dropped; its work goes back to the queue (`dispatch`). An actor that cannot load its model
stops the run with one line (`StartError`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

from pipeline.errors import StartError
from pipeline.execution.logs import actor_env
from pipeline.execution.placement import CPU_ACTOR_CPUS, GPU_ACTOR_CPUS, Demand, cluster_room
from pipeline.wording import counted, plural

log = logging.getLogger(__name__)

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
RESCAN_S = 5.0  # the cluster's nodes are re-read this often (an autoscaler adds, spot removes)
STARTING_S = 5.0  # an actor still unplaced after this long is "waiting for resources"
REPORT_EVERY_S = 60.0  # while actors wait, the log repeats why at most this often
DEFAULT_CAPACITY_WAIT_S = 900.0


@dataclass(frozen=True)
class ActorSpec:
    """What a pool starts: a plain Python class (its body knows nothing of Ray), the arguments of
    its constructor, how many tasks each actor holds at once, and a name for messages: `kind`,
    the singular noun ("model actor"), and `detail` after it ("for 'uso' (weights 'tiny')")."""

    cls: type
    args: tuple[Any, ...]
    tasks_per_actor: int = 1
    kind: str = "actor"
    detail: str = ""

    def named(self, count: int | None = None) -> str:
        """The actors in words: "model actors for 'uso'", or counted, "1 model actor for 'uso'"
        / "2 model actors for 'uso'"."""
        noun = plural(2, self.kind) if count is None else counted(count, self.kind)
        return f"{noun} {self.detail}" if self.detail else noun

    @property
    def what(self) -> str:
        """The actors as a label (plural): "model actors for 'uso'"."""
        return self.named()


def pool_size(requested: int, tasks: int) -> int:
    """`requested` actors, never more than tasks (0: as many as the cluster can place)."""
    return 0 if requested == 0 else max(1, min(requested, tasks))


def _hosted(cls: type) -> type:
    """`cls` built in two steps: the constructor only keeps its arguments (so Ray's answer to
    `placed` says the actor has its resources), `load` runs the real constructor (the model)."""

    class Hosted(cls):
        def __init__(self, *args: Any) -> None:
            self._hosted_args = args

        def placed(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def load(self) -> dict:
            cls.__init__(self, *self._hosted_args)  # type: ignore[misc]
            return self.info()

    Hosted.__name__ = cls.__name__  # Ray's log prefix: "(StylizeActor pid=...)"
    Hosted.__qualname__ = cls.__qualname__
    return Hosted


_slot_ids = itertools.count()


@dataclass(eq=False)
class Slot:
    """One actor of the pool: `placing` (Ray has not given it resources yet), `loading`, or
    `ready` (it takes work)."""

    handle: Any
    placed_ref: Any
    load_ref: Any
    started: float
    state: str = "placing"
    id: int = field(default_factory=lambda: next(_slot_ids))
    info: dict | None = None


class ActorPool:
    """The live actors of one stage. `size`: the actors wanted (0: as many as the cluster can
    place, one per GPU, or one without GPUs); `gpu`: ask each actor for a GPU (None: when the
    cluster has GPUs now); `capacity_wait_s`: how long work may wait with no actor placed
    before `dispatch` fails it."""

    def __init__(
        self,
        spec: ActorSpec,
        size: int,
        *,
        gpu: bool | None = None,
        capacity_wait_s: float = DEFAULT_CAPACITY_WAIT_S,
    ):
        self.spec = spec
        self.requested = size
        self.capacity_wait_s = capacity_wait_s
        if gpu is None:
            gpu = ray.cluster_resources().get("GPU", 0) > 0
        self.demand = Demand(1, GPU_ACTOR_CPUS) if gpu else Demand(0, CPU_ACTOR_CPUS)
        options: dict[str, Any] = {  # actor options (Ray's type stubs know only task options)
            "num_gpus": self.demand.gpus,
            "num_cpus": self.demand.cpus,
            "max_restarts": 0,
            "max_task_retries": 0,
            "max_concurrency": spec.tasks_per_actor + 2,  # + placement, load, progress polls
            "runtime_env": {"env_vars": actor_env()},  # log settings; libraries kept quiet
        }
        self._remote: Any = ray.remote(**options)(_hosted(spec.cls))
        self.slots: list[Slot] = []
        self.room = 0  # actors the live nodes can hold
        self.cluster = ""  # the cluster in words, at the last scan
        self._next_scan = 0.0
        self._starved_since: float | None = time.monotonic()
        self._load_deaths = 0
        self._ever_ready = False
        self._reported: tuple[int, float] = (0, 0.0)  # (waiting, when) last logged
        self._scan()

    # ------------------------------------------------------------------ size
    def _scan(self) -> None:
        room, self.cluster = cluster_room(self.demand)
        if room != self.room:
            log.info(
                "the cluster can hold %s (each needs %s): %s",
                self.spec.named(room),
                self.demand,
                self.cluster,
            )
        self.room = room
        self._next_scan = time.monotonic() + RESCAN_S

    def target(self, wanted: int) -> int:
        """Actors to keep when `wanted` actors would have work (the busy ones plus one per
        queued task): never more actors than work."""
        if self.requested:
            size = self.requested
        elif self.demand.gpus:
            size = max(1, self.room)  # one asked for even when none fits: an autoscaler sees it
        else:
            size = 1
        return min(size, wanted)

    def maintain(self, wanted: int) -> None:
        """Start actors up to the target for `wanted` (see `target`), drop unplaced ones beyond;
        re-read the cluster every `RESCAN_S`. Cheap between scans (the dispatch loop calls it
        every turn)."""
        now = time.monotonic()
        if now >= self._next_scan:
            self._scan()
        target = self.target(wanted)
        if len(self.slots) < target:
            log.info(
                "starting %s (%d wanted, %d running)",
                self.spec.named(target - len(self.slots)),
                target,
                len(self.slots),
            )
        while len(self.slots) < target:
            self._start(now)
        for slot in [s for s in reversed(self.slots) if s.state == "placing"]:
            if len(self.slots) <= target:
                break
            self._drop(slot)
        placed = any(s.state != "placing" for s in self.slots)
        if placed:
            self._starved_since = None
        elif self._starved_since is None:
            self._starved_since = now
        self._report(now)

    def _start(self, now: float) -> None:
        handle = self._remote.remote(*self.spec.args)
        self.slots.append(Slot(handle, handle.placed.remote(), handle.load.remote(), now))

    def _drop(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)
        with contextlib.suppress(Exception):  # already gone
            ray.kill(slot.handle, no_restart=True)

    # ------------------------------------------------------------------ actors coming up
    def pending_refs(self) -> list[Any]:
        """The placement and load answers still awaited (the dispatch loop waits on them too)."""
        refs = []
        for slot in self.slots:
            if slot.state == "placing":
                refs.append(slot.placed_ref)
            if slot.state != "ready":
                refs.append(slot.load_ref)
        return refs

    def settle(self, ref: Any) -> None:
        """A placement or load answer arrived: the actor moves on, or is dropped when it died
        (its node left); a model that cannot load raises `StartError` (the run cannot start)."""
        for slot in self.slots:
            if ref == slot.placed_ref:
                self._placed(slot)
                return
            if ref == slot.load_ref:
                self._loaded(slot)
                return

    def _placed(self, slot: Slot) -> None:
        try:
            ray.get(slot.placed_ref)
        except ACTOR_LOST as error:
            self._died_loading(slot, error)
            return
        if slot.state == "placing":
            slot.state = "loading"

    def _loaded(self, slot: Slot) -> None:
        try:
            slot.info = ray.get(slot.load_ref)
        except ACTOR_LOST as error:
            self._died_loading(slot, error)
            return
        except ray.exceptions.RayTaskError as error:
            self.shutdown()
            raise StartError(f"{self.spec.what} could not start: {_reason(error)}") from None
        slot.state = "ready"
        self._ever_ready = True
        log.info(
            "%s: one ready on node %s (pid %s)",
            self.spec.what,
            slot.info.get("node"),
            slot.info.get("pid"),
        )

    def _died_loading(self, slot: Slot, error: BaseException) -> None:
        """An actor died before it was ready (its node left, the process was killed): dropped,
        and started again by `maintain`; when every actor so far died that way, the cause is
        the actor itself and the run stops."""
        self._drop(slot)
        self._load_deaths += 1
        log.warning("one of the %s died while starting: %s", self.spec.what, _first_line(error))
        expected = max(1, self.requested or self.room)  # a whole node's actors may go at once
        if not self._ever_ready and self._load_deaths >= 3 + 2 * expected:
            self.shutdown()
            raise StartError(
                f"{self.spec.what} could not start: died {self._load_deaths} times while "
                f"loading, last: {_reason(error)}"
            )

    def wait_ready(self, count: int = 1) -> dict:
        """Block until `count` actors are ready (eval asks one for its fingerprint); the first
        one's info. No actor placed within the capacity wait: `StartError` with the reason."""
        while len(self.ready()) < count:
            self.maintain(count)
            starved = self.starved_for()
            if starved is not None and starved >= self.capacity_wait_s:
                raise StartError(self.capacity_reason())
            pending = self.pending_refs()
            if not pending:
                time.sleep(0.5)
                continue
            done, _ = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                self.settle(ref)
        return self.ready()[0].info or {}

    # ------------------------------------------------------------------ the actors at work
    def ready(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.state == "ready"]

    @property
    def actors(self) -> list[Any]:
        """The handles of every actor started and not lost (ready ones first)."""
        order = {"ready": 0, "loading": 1, "placing": 2}
        return [s.handle for s in sorted(self.slots, key=lambda s: order[s.state])]

    def lost(self, slot: Slot) -> None:
        """`slot`'s actor died at work (its node left, it was killed): dropped; `maintain`
        starts another when the cluster has room."""
        if slot in self.slots:
            self._drop(slot)

    def starved_for(self) -> float | None:
        """Seconds since the pool last had an actor placed, or None while it has one."""
        if self._starved_since is None:
            return None
        return time.monotonic() - self._starved_since

    def capacity_reason(self) -> str:
        return (
            f"no {self.spec.what} could be placed within {self.capacity_wait_s:g} s "
            f"(--capacity-wait): each needs {self.demand}; cluster {self.cluster}"
        )

    def notes(self) -> list[str]:
        """The pool in one line for the progress display while not every actor is ready."""
        counts = {state: sum(s.state == state for s in self.slots) for state in _STATES}
        if counts["ready"] == len(self.slots) and self.slots:
            return []
        waiting = self._waiting(time.monotonic())
        parts = [f"{counts['ready']} ready", f"{counts['loading']} loading"]
        if counts["placing"] - waiting:
            parts.append(f"{counts['placing'] - waiting} starting")
        line = f"{self.spec.what}: " + ", ".join(parts)
        if waiting or not self.slots:
            line += (
                f", {waiting} waiting for resources (each needs {self.demand}; "
                f"cluster {self.cluster})"
            )
        return [line]

    def _waiting(self, now: float) -> int:
        """Actors Ray has not placed `STARTING_S` after they were asked for (a worker process
        starts within a few seconds when there is room)."""
        return sum(s.state == "placing" and now - s.started > STARTING_S for s in self.slots)

    def _report(self, now: float) -> None:
        """Log why actors wait when their number changes, and again every `REPORT_EVERY_S`."""
        waiting = self._waiting(now) if any(s.state == "placing" for s in self.slots) else 0
        last, when = self._reported
        if waiting == last and (not waiting or now - when < REPORT_EVERY_S):
            return
        self._reported = (waiting, now)
        if waiting:
            log.warning(
                "%s waiting for resources: each needs %s; cluster %s",
                self.spec.named(waiting),
                self.demand,
                self.cluster,
            )

    def poll(self, method: str, timeout_s: float = 0.2) -> list[Any]:
        """Answers of every ready actor's `method` within `timeout_s` (dead or slow skipped)."""
        refs = [getattr(slot.handle, method).remote() for slot in self.ready()]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        answers = []
        for ref in ready:
            with contextlib.suppress(*ACTOR_LOST):
                answers.append(ray.get(ref))
        return answers

    def shutdown(self) -> None:
        for slot in list(self.slots):
            self._drop(slot)


_STATES = ("placing", "loading", "ready")


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
    """One line from an actor's failed start: the actor's own `StartError` when it raised one,
    else the traceback's last line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, StartError):
        return str(cause)
    text = str(error)
    found = re.findall(r"StartError: (.+)", text)
    if found:
        return found[-1].strip()
    return _first_line(error)[:500]
