"""The driver's own cost of handing out shards: `execution.dispatch` over `execution.pool`.

    python benchmarks/bench_dispatch.py --tasks 2000 --actors 2 --idle-s 20

On a local Ray (CPU actors), a pool of `--actors` actors whose `process` returns at once, so
every CPU second the driver spends is the dispatch loop's: `--tasks` tasks handed out (the
per-shard cost: driver CPU ms per task), then one task that sleeps `--idle-s` seconds (the poll
loop while shards run: driver CPU as a share of one core). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time


class InstantActor:
    """An actor whose work costs nothing: what is measured is the driver."""

    def __init__(self) -> None:
        self.count = 0

    def info(self) -> dict:
        return {"pid": 0, "node": ""}

    def process(self, task: float) -> float:
        if task:
            time.sleep(task)
        self.count += 1
        return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()

    import ray

    from pipeline.execution.dispatch import dispatch
    from pipeline.execution.pool import ActorPool, ActorSpec

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        spec = ActorSpec(InstantActor, (), tasks_per_actor=2, what="bench actors")
        pool = ActorPool(spec, args.actors)
        if hasattr(pool, "wait_ready"):  # the pool before issue 13 loaded in its constructor
            pool.wait_ready(args.actors)
        done: list[float] = []

        def run(tasks: list[float]) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            dispatch(
                pool,
                tasks,
                submit=lambda actor, task, seq: actor.process.remote(task),
                on_result=lambda task, value: done.append(value),
                on_failure=lambda task, reason: None,
                max_attempts=1,
            )
            return time.perf_counter() - wall, time.process_time() - cpu

        run([0.0] * 20)  # warm: every actor ready, the first calls' set-up paid
        wall_s, cpu_s = run([0.0] * args.tasks)
        idle_wall_s, idle_cpu_s = run([args.idle_s])
        pool.shutdown()
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "actors": args.actors,
                "wall_s": round(wall_s, 3),
                "driver_cpu_ms_per_task": round(1000 * cpu_s / args.tasks, 3),
                "idle_wall_s": round(idle_wall_s, 2),
                "idle_driver_cpu_share": round(idle_cpu_s / idle_wall_s, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
