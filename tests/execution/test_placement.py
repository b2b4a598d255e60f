"""How many actors a node holds: a GPU actor needs a GPU and a CPU on the same node."""

from __future__ import annotations

from pipeline.execution.placement import CPU_ACTOR_CPUS, GPU_ACTOR_CPUS, Demand

GPU_ACTOR = Demand(1, GPU_ACTOR_CPUS)
CPU_ACTOR = Demand(0, CPU_ACTOR_CPUS)


def test_a_node_with_more_gpus_than_cpus_holds_one_gpu_actor_per_cpu():
    assert GPU_ACTOR.fits({"GPU": 8.0, "CPU": 2.0}) == 2
    assert GPU_ACTOR.fits({"GPU": 2.0, "CPU": 16.0}) == 2
    assert GPU_ACTOR.fits({"GPU": 1.0, "CPU": 0.5}) == 0  # half a CPU beside the GPU: none
    assert GPU_ACTOR.fits({"CPU": 64.0}) == 0


def test_cpu_actors_take_half_a_cpu_and_the_words_say_what_each_needs():
    assert CPU_ACTOR.fits({"CPU": 2.0}) == 4
    assert CPU_ACTOR.fits({"CPU": 1.4}) == 2
    assert str(GPU_ACTOR) == "1 GPU + 1 CPU" and str(CPU_ACTOR) == "0.5 CPU"
