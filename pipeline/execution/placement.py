"""What one actor asks Ray for, and how many such actors the live nodes can hold.

A GPU actor needs 1 GPU and 1 CPU on the same node, so a node declaring 8 GPUs but 2 CPUs
holds 2 of them; a CPU-only actor takes half a CPU (a 2-core machine hangs when actors hold
every CPU). The cluster in words (`free 2 GPU, 0 CPU of 8 GPU, 2 CPU on 1 node`) is what the
pool's messages show when actors wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

CPU_ACTOR_CPUS = 0.5  # CPU-only actors take half a CPU, so Ray never starves its own tasks
GPU_ACTOR_CPUS = 1.0


@dataclass(frozen=True)
class Demand:
    """The resources one actor asks Ray for."""

    gpus: int
    cpus: float

    def __str__(self) -> str:
        cpus = f"{self.cpus:g} CPU"
        return f"{self.gpus} GPU + {cpus}" if self.gpus else cpus

    def fits(self, resources: dict[str, float]) -> int:
        """How many such actors `resources` (one node's, or the free ones) can hold."""
        count = math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)
        if self.gpus:
            count = min(count, math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        return max(0, count)


def cluster_room(demand: Demand) -> tuple[int, str]:
    """How many actors of `demand` the live nodes can hold, node by node from what each declares
    (a GPU without a CPU to spare on its node holds none), and the cluster in words: `free 2 GPU, 0 CPU of 8 GPU, 2 CPU
    on 1 node`."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    room = sum(demand.fits(node.get("Resources", {})) for node in nodes)
    return room, _cluster_words(len(nodes))


def _cluster_words(nodes: int) -> str:
    total, free = ray.cluster_resources(), ray.available_resources()

    def amounts(resources: dict[str, float]) -> str:
        return f"{resources.get('GPU', 0):g} GPU, {resources.get('CPU', 0):g} CPU"

    return f"free {amounts(free)} of {amounts(total)} on {nodes} node{'s' * (nodes != 1)}"
