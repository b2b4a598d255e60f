"""One driver per run: the run lease, driver heartbeats and per-shard claims, in `<run>/_drivers/`.

    _drivers/lease.json                   the holder: token, host, pid, since, expires_at
    _drivers/drivers/<token>.json         every live driver's heartbeat (holder and helpers)
    _drivers/claims/shard-<k>[.retry-<nn>].json   the driver that took shard k (kept)

A driver creates `lease.json` with a conditional create (S3: If-None-Match: *; a local folder:
a complete file linked into place, which fails when the name exists). A thread renews it every
ttl/3 with a conditional replace (If-Match on the version it wrote), so a driver that lost its
lease learns so at the next renewal instead of overwriting its successor. A lease past its
expiry (the driver was killed) is taken over by the next driver with a conditional replace of
the version it read: of several drivers taking over at once, exactly one wins.

A second driver on a run whose lease is live is refused (`RunLeaseHeldError`, naming the holder),
or with `--join` becomes a helper. Holder and helpers alike take a shard only after claiming it
(`claim`): a conditional create of the shard's claim; a claim whose driver's heartbeat is gone or
expired is taken over by a conditional replace, unless the shard was committed meanwhile. So no
shard is ever run by two live drivers.

At the end a driver removes its heartbeat and (the holder) the lease and the heartbeats of
drivers that were killed; claims stay, a record of which driver did what (a later driver takes
them over: their drivers are gone).

A store that ignores the conditional headers is detected once by a probe (a second create of
the same object that succeeds); the lease then falls back to write, wait, read back the unique
token: best effort, documented as such (two drivers racing within the wait can both win).
Clocks of the drivers' hosts must agree to well within the TTL. A driver recorded on this host
whose process is gone counts as expired at once (a killed run resumes without waiting).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline.errors import RunLeaseHeldError
from pipeline.outputs.layout import DRIVERS_FOLDER
from pipeline.storage import Storage, StorageError, StorageNotFoundError

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 60.0
FALLBACK_SETTLE_S = 1.0  # write-then-read-back: how long a racing writer has to land


@dataclass(frozen=True)
class DriverRecord:
    """Who a driver is and until when it counts as alive."""

    token: str
    host: str
    pid: int
    since: float
    expires_at: float
    role: str = "holder"  # or "helper"

    @classmethod
    def mine(cls, ttl_s: float, role: str) -> DriverRecord:
        now = time.time()
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now + ttl_s, role)

    @classmethod
    def parse(cls, data: bytes) -> DriverRecord:
        """The record in `data`; one that cannot be read (an empty object left by a store that
        died mid-write) reads as long expired, so it is taken over like a dead driver's."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return cls("", "?", 0, 0.0, 0.0)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def renewed(self, ttl_s: float) -> DriverRecord:
        return DriverRecord(
            self.token, self.host, self.pid, self.since, time.time() + ttl_s, self.role
        )

    @property
    def expired(self) -> bool:
        """Past its expiry, or known dead: a process of this host that no longer runs (a
        killed driver's run is free at once for the next driver on the same machine)."""
        if time.time() >= self.expires_at:
            return True
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False  # elsewhere, or this very process: the expiry alone tells
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it runs, as another user
        return False

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host} pid {self.pid} since {since}"


class Conditional:
    """Conditional create/replace on `storage`, or the write-then-read-back fallback."""

    def __init__(self, storage: Storage, native: bool = True):
        self.storage = storage
        self.native = native

    @classmethod
    def probe(cls, storage: Storage, folder: str) -> Conditional:
        """Native on local folders; on S3, native unless a second conditional create of one
        probe object succeeds (the store ignores If-None-Match)."""
        if not storage.is_remote(folder):
            return cls(storage)
        uri = f"{folder}/probe-{uuid.uuid4().hex}"
        try:
            storage.create_exclusive(uri, b"1")
            ignored = storage.create_exclusive(uri, b"2") is not None
        finally:
            storage.delete(uri)
        if ignored:
            log.warning(
                "the store ignores conditional writes (If-None-Match): the run lease falls "
                "back to write-then-read-back, which two drivers starting within %.0f s of "
                "each other can both pass",
                FALLBACK_SETTLE_S,
            )
        return cls(storage, native=not ignored)

    def create(self, uri: str, data: bytes) -> str | None:
        if self.native:
            return self.storage.create_exclusive(uri, data)
        if self.storage.exists(uri):
            return None
        self.storage.write_bytes(uri, data)
        return self._read_back(uri, data)

    def replace(self, uri: str, data: bytes, version: str) -> str | None:
        if self.native:
            return self.storage.replace_if(uri, data, version)
        try:
            if self.storage.read_versioned(uri)[1] != version:
                return None
        except StorageNotFoundError:
            return None
        self.storage.write_bytes(uri, data)
        return self._read_back(uri, data)

    def _read_back(self, uri: str, data: bytes) -> str | None:
        time.sleep(FALLBACK_SETTLE_S)
        try:
            found, version = self.storage.read_versioned(uri)
        except StorageNotFoundError:
            return None
        return version if found == data else None


class RunLease:
    """This driver's place on a run: `acquire` (holder, or helper with `join`), `claim` each
    shard before running it, `release` at the end. Heartbeats run on a daemon thread."""

    def __init__(self, storage: Storage, run_uri: str, ttl_s: float = DEFAULT_TTL_S):
        if not ttl_s > 0:
            raise ValueError(f"--lease-ttl: must be > 0 seconds, got {ttl_s}")
        self.storage = storage
        self.folder = f"{run_uri.rstrip('/')}/{DRIVERS_FOLDER}"
        self.ttl_s = ttl_s
        self.me = DriverRecord.mine(ttl_s, "holder")
        self.cond = Conditional(storage)
        self.holder = False
        self.lost = False  # the lease was taken over while we ran: claim nothing more
        self._lease_version: str | None = None
        self._alive: dict[str, tuple[float, bool]] = {}  # token -> (checked at, alive)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease_uri(self) -> str:
        return f"{self.folder}/lease.json"

    def driver_uri(self, token: str) -> str:
        return f"{self.folder}/drivers/{token}.json"

    def claim_uri(self, shard: int, retry: int = 0) -> str:
        suffix = f".retry-{retry:02d}" if retry else ""
        return f"{self.folder}/claims/shard-{shard:06d}{suffix}.json"

    # ------------------------------------------------------------------ lease
    def acquire(self, join: bool = False) -> None:
        """Hold the lease, or (`join`) help its live holder; refuse with the holder's name
        otherwise. Starts the heartbeat."""
        self.cond = Conditional.probe(self.storage, self.folder)
        for _ in range(10):  # each turn ends when the lease changed under us: rare
            version = self.cond.create(self.lease_uri, self.me.encode())
            if version is not None:
                self._hold(version)
                break
            try:
                data, current = self.storage.read_versioned(self.lease_uri)
            except StorageNotFoundError:
                continue  # released meanwhile: create again
            other = DriverRecord.parse(data)
            if other.token == self.me.token:  # our create landed; its answer was lost
                self._hold(current)
                break
            if other.expired:
                version = self.cond.replace(self.lease_uri, self.me.encode(), current)
                if version is not None:
                    log.warning(
                        "took over the expired run lease of %s (expired %.0f s ago)",
                        other.describe(),
                        time.time() - other.expires_at,
                    )
                    self._hold(version)
                    break
                continue
            if not join:
                raise RunLeaseHeldError(
                    f"{self.folder.rsplit('/', 1)[0]} is being run by another driver "
                    f"({other.describe()}, lease valid {other.expires_at - time.time():.0f} s "
                    "more): wait for it, or add --join to help it with unclaimed shards"
                )
            self.me = DriverRecord(
                self.me.token,
                self.me.host,
                self.me.pid,
                self.me.since,
                self.me.expires_at,
                "helper",
            )
            log.info("joining the run of %s as a helper", other.describe())
            break
        else:
            raise RunLeaseHeldError(f"{self.lease_uri}: the lease kept changing; try again")
        self.storage.write_bytes(self.driver_uri(self.me.token), self.me.encode())
        self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._thread.start()

    def _hold(self, version: str) -> None:
        self.holder = True
        self._lease_version = version

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except StorageError as error:  # the storage retry budget ran out: try next beat
                log.error("could not renew the run lease: %s", error)

    def renew(self) -> None:
        """Push this driver's expiry one TTL ahead (heartbeat, and the lease when held)."""
        self.me = self.me.renewed(self.ttl_s)
        self.storage.write_bytes(self.driver_uri(self.me.token), self.me.encode())
        if self.holder and self._lease_version is not None:
            version = self.cond.replace(self.lease_uri, self.me.encode(), self._lease_version)
            if version is None:
                self.holder, self.lost = False, True
                log.error(
                    "lost the run lease of %s (another driver took it over after a missed "
                    "renewal): no more shards are claimed here",
                    self.folder.rsplit("/", 1)[0],
                )
            self._lease_version = version

    def release(self) -> None:
        """Stop the heartbeat; remove this driver's heartbeat and the lease if still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.holder:
                data, _ = self.storage.read_versioned(self.lease_uri)
                if DriverRecord.parse(data).token == self.me.token:
                    self.storage.delete(self.lease_uri)
            self.storage.delete(self.driver_uri(self.me.token))
            if self.holder:
                self._remove_dead_heartbeats()
        except StorageError as error:  # it expires on its own
            log.warning("could not remove the run lease: %s", error)
        self.holder = False

    def _remove_dead_heartbeats(self) -> None:
        """Heartbeats of drivers that were killed (they cannot remove their own)."""
        for uri in self.storage.list(f"{self.folder}/drivers/"):
            try:
                if DriverRecord.parse(self.storage.read_bytes(uri)).expired:
                    self.storage.delete(uri)
            except StorageNotFoundError:
                continue

    # ------------------------------------------------------------------ claims
    def claim(
        self, shard: int, retry: int = 0, committed: Callable[[], bool] | None = None
    ) -> bool:
        """True when this driver may run the shard now: it claimed it, or took over the claim
        of a driver that is gone and the shard is not `committed()` yet. False when a live
        driver holds it (or this driver lost the lease)."""
        if self.lost:
            return False
        uri = self.claim_uri(shard, retry)
        mine = json.dumps({"token": self.me.token, "at": time.time()}).encode()
        for _ in range(5):
            if self.cond.create(uri, mine) is not None:
                return True
            try:
                data, version = self.storage.read_versioned(uri)
            except StorageNotFoundError:
                continue
            try:
                token = str(json.loads(data).get("token", ""))
            except (ValueError, AttributeError):
                token = ""  # unreadable (a store that died mid-write): nobody's
            if token == self.me.token:
                return True
            if self._is_alive(token) or (committed is not None and committed()):
                return False
            if self.cond.replace(uri, mine, version) is not None:
                log.info("took over shard %d from a driver that is gone", shard)
                return True
            return False  # another driver took it over first
        return False

    def _is_alive(self, token: str) -> bool:
        checked = self._alive.get(token)
        if checked is not None and time.monotonic() - checked[0] < self.ttl_s / 3:
            return checked[1]
        try:
            alive = not DriverRecord.parse(self.storage.read_bytes(self.driver_uri(token))).expired
        except StorageNotFoundError:
            alive = False
        self._alive[token] = (time.monotonic(), alive)
        return alive
