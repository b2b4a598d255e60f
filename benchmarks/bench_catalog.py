"""Catalog scale: `restyle plan`, a resume and `restyle status` over many shards on S3.

    python benchmarks/bench_catalog.py --shards 1000 2000 --items-per-shard 1000 --delay-ms 20

For each shard count, a real SeaweedFS server on loopback gets a manifest folder of N Parquet
files (`--manifest-rows` rows each) and a run folder as the runner leaves it: half the shards
committed (tar, records, marker) for the plan and resume, then all of them for status. Every
request of the measured driver goes through the project's fault proxy (tests/support/
fault_proxy.py), run in a process of its own, adding `--delay-ms` per request. Each measured
pass runs in a fresh driver process, which reports its wall time, CPU time and peak RSS:

- resume: what `restyle run` does before Ray starts (`list_shards` + `RunState.main_commits`);
- plan: the resume pass plus the row counts of the shards to do (`count_all_items`), as
  `restyle plan` does;
- status: `outputs.status.run_status` over the whole run (N x items-per-shard items), its
  counts taken from the markers' `shard_counts`, as a commit writes them;
- the baseline (`--baseline-shards`), on a smaller folder (it is linear): one HEAD + GET per
  marker and one footer read after another, the code before issue 13 item 1; and status over
  markers without `shard_counts` (as restyle wrote them before), which reads every records
  file's status column;
- baseline-status, on every folder: the status of the code before item 2 (every marker and
  every records file's status column read), for the ratio in one run;
- the marker index (`pipeline.outputs.marker_index`): every folder is measured without it
  (`resume`, `plan`, `status`: no index object) and with it, in the same run: `index-write`
  builds and writes it as the driver does at the end of a pass (the write timed apart from
  the reads), then `resume-index` (half the shards committed, the index current) and, once
  all shards are committed, `status-stale` (the index from the half-done pass: half the
  markers read), then `status` without and `status-index` with a current index;
- the listing: `resume-index-botocore` and `status-index-botocore` are those passes as the
  code before did them: the run folder in one listing, every listing's pages (the manifest's
  too) parsed by botocore; `-onelisting`: pages parsed from their XML
  (`pipeline.storage.s3_listing`), the run folder still in one listing; the plain passes list
  it in ranges of `run_state.SHARDS_PER_RANGE` shards at once. All in one run, for the ratios.

`--profile DIR` runs each pass under cProfile (DIR/<shards>-<phase>.prof); `--phases` runs only
the passes named (with those they need: `index-write` before the `-index` passes).

Figures are per shard count; fit them to extrapolate (cost = a + b x shards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FINGERPRINT = "bench-catalog"


# ---------------------------------------------------------------------------- population
def manifest_bytes(rows: int) -> bytes:
    import pyarrow as pa

    from pipeline.storage.parquet import table_to_bytes

    return table_to_bytes(
        pa.table(
            {
                "id": [f"item-{i:07d}" for i in range(rows)],
                "prompt": [f"a photo in the style {i % 17}" for i in range(rows)],
                "subject": [f"s3://catalog/images/{i:07d}.jpg" for i in range(rows)],
            }
        )
    )


def item_status(i: int, items: int) -> str:
    """Mostly ok, a few failures of two classes, the last row skipped."""
    if i == items - 1:
        return "skipped"
    return "ok" if i % 100 else ("bad_input" if i % 200 else "model_error")


def shard_counts(items: int, with_counts: bool) -> dict[str, int] | None:
    """The marker's counts of a records file of `records_bytes` (None: an older marker)."""
    if not with_counts:
        return None
    return dict(Counter(item_status(i, items) for i in range(items)))


def records_bytes(items: int, input_uri: str) -> bytes:
    """A records file as a commit writes it: mostly ok, a few failures, one skipped row."""
    from pipeline.outputs.records import ItemRecord, records_to_parquet

    records = []
    for i in range(items):
        status = item_status(i, items)
        records.append(
            ItemRecord(
                id=f"item-{i:07d}",
                key=f"item-{i:07d}",
                status=status,
                error=None if status in ("ok", "skipped") else "subject: cannot decode image",
                seed=1000 + i,
                width=1024,
                height=1024,
                steps=28,
                guidance=3.5,
                prompt=f"a photo in the style {i % 17}",
                output_key=f"s3://out/run/part-000000.tar#item-{i:07d}" if status == "ok" else None,
                input_shard=input_uri,
                input_row=i,
                read_s=0.01,
                model_s=2.5,
                encode_s=0.02,
            )
        )
    return records_to_parquet(records)


def populate(
    storage, bucket: str, shards: int, items: int, rows: int, done: int, with_counts: bool
) -> dict:
    """Manifest files for `shards`, and commits for the first `done` of them (`with_counts`:
    markers as this restyle writes them, else as one before issue 13 item 2 did)."""
    from pipeline.outputs.commit import ShardStats
    from pipeline.outputs.layout import LAYOUT_VERSION, ShardPaths

    manifest = f"{bucket}/catalog-{shards}"
    run = f"{bucket}/out-{shards}/run"
    inputs = [f"{manifest}/part-{k:06d}.parquet" for k in range(shards)]
    manifest_data = manifest_bytes(rows)
    records_data = records_bytes(items, inputs[0])

    def write_shard(k: int) -> None:
        storage.write_bytes(inputs[k], manifest_data)
        if k >= done:
            return
        paths = ShardPaths(run, k)
        stats = ShardStats(
            shard=k,
            input_shard=inputs[k],
            run="run",
            fingerprint=FINGERPRINT,
            count=items,
            started_at=1000.0 + k,
            finished_at=1400.0 + k,
            model_s=380.0,
            worker={"host": f"node-{k % 8}", "pid": 100 + k % 8},
            shard_counts=shard_counts(items, with_counts),
        )
        storage.write_bytes(paths.tar, b"")  # listed, never read by these passes
        storage.write_bytes(paths.records, records_data)
        storage.write_bytes(paths.marker, stats.to_json())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(write_shard, range(shards)))
    storage.write_bytes(
        f"{run}/run.json",
        json.dumps(
            {"fingerprint": FINGERPRINT, "layout": LAYOUT_VERSION, "input_shards": inputs}
        ).encode(),
    )
    return {"manifest": manifest + "/", "run": run, "inputs": inputs}


def complete(storage, bucket: str, shards: int, items: int, done: int, with_counts: bool) -> None:
    """Commit the rest of the shards (for status over the whole catalog)."""
    from pipeline.outputs.commit import ShardStats
    from pipeline.outputs.layout import ShardPaths

    run = f"{bucket}/out-{shards}/run"
    manifest = f"{bucket}/catalog-{shards}"
    records_data = records_bytes(items, f"{manifest}/part-000000.parquet")

    def commit(k: int) -> None:
        paths = ShardPaths(run, k)
        stats = ShardStats(
            shard=k,
            input_shard=f"{manifest}/part-{k:06d}.parquet",
            run="run",
            fingerprint=FINGERPRINT,
            count=items,
            started_at=1000.0 + k,
            finished_at=1400.0 + k,
            model_s=380.0,
            worker={"host": f"node-{k % 8}", "pid": 100 + k % 8},
            shard_counts=shard_counts(items, with_counts),
        )
        storage.write_bytes(paths.tar, b"")
        storage.write_bytes(paths.records, records_data)
        storage.write_bytes(paths.marker, stats.to_json())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(commit, range(done, shards)))


# ---------------------------------------------------------------------------- measured passes
def measured(phase: str, manifest: str, run: str) -> dict:
    """One pass in this (fresh) process; returns its figures."""
    from pipeline.manifests import count_all_items, count_items, list_shards
    from pipeline.outputs import marker_index
    from pipeline.outputs.commit import read_marker
    from pipeline.outputs.layout import ShardPaths
    from pipeline.outputs.run_state import RunState
    from pipeline.outputs.status import run_status, status_counts
    from pipeline.storage import Storage
    from pipeline.storage.concurrent import map_bounded

    if phase.endswith(("-botocore", "-onelisting")):  # the run folder in one listing
        from pipeline.outputs import run_state

        run_state.SHARDS_PER_RANGE = 10**9
    if phase.endswith("-botocore"):  # its pages parsed by botocore: the code before
        from pipeline.storage.s3_listing import PageReader

        # the page reader leaves every page to botocore, as it does a page it cannot read
        PageReader.__call__ = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    phase = phase.removesuffix("-botocore").removesuffix("-onelisting")
    storage = Storage()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result: dict = {}
    if phase in ("resume", "plan", "resume-index"):
        shards = list_shards(manifest, storage)
        done = RunState(storage, run).main_commits([(s.index, s.uri) for s in shards], FINGERPRINT)
        result.update(shards=len(shards), done=len(done))
        if phase == "plan":
            todo = [s for s in shards if s.index not in done]
            result["items_todo"] = count_all_items(todo, storage)
    elif phase in ("baseline-resume", "baseline-plan"):
        shards = list_shards(manifest, storage)
        done = {}
        for s in shards:  # the code before: one HEAD (+ GET) per marker
            stats = read_marker(storage, ShardPaths(run, s.index).marker)
            if stats is not None and stats.fingerprint == FINGERPRINT:
                done[s.index] = stats
        result.update(shards=len(shards), done=len(done))
        if phase == "baseline-plan":
            todo = [s for s in shards if s.index not in done]
            result["items_todo"] = sum(count_items(s, storage) for s in todo)
    elif phase in ("status", "status-index", "status-stale"):
        status = run_status(RunState(storage, run))
        result.update(items=status.items, ok=status.ok, failed=status.failed)
    elif phase == "index-write":  # the driver at a pass's end: every marker read, then one PUT
        state = RunState(storage, run)
        state.commits()
        entries = state.index_entries()
        write0 = time.perf_counter()
        assert marker_index.write(storage, run, entries)
        result.update(markers=len(entries), write_s=time.perf_counter() - write0)
    elif phase == "no-index":
        storage.delete(marker_index.index_uri(run))
    elif phase == "baseline-status":  # the code before item 2: every records file read
        state = RunState(storage, run)
        listing = state.listing()
        state.commits(listing)  # each marker read once, for shards and images/s
        records = [uri for _, uri in sorted(listing.records.items())]
        counts: Counter = Counter()
        for shard in map_bounded(lambda uri: status_counts(state, uri), records):
            counts.update(shard)
        result.update(items=sum(counts.values()), ok=counts["ok"])
    result.update(
        wall_s=time.perf_counter() - wall0,
        cpu_s=time.process_time() - cpu0,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return result


def profiled(phase: str, manifest: str, run: str, profile: str | None = None) -> dict:
    """`measured`, under cProfile when a stats file is given (its figures then include the
    profiler's overhead: compare passes within one profiled run, not with an unprofiled one)."""
    if profile is None:
        return measured(phase, manifest, run)
    import cProfile

    profiler = cProfile.Profile()
    result = profiler.runcall(measured, phase, manifest, run)
    profiler.dump_stats(profile)
    return result


INDEX_PAIRS = (("resume", "resume-index"), ("status", "status-index"))
LISTING_PAIRS = (
    ("resume", "resume-index-botocore", "resume-index"),
    ("status", "status-index-botocore", "status-index"),
    ("resume, XML parse only", "resume-index-botocore", "resume-index-onelisting"),
    ("status, XML parse only", "status-index-botocore", "status-index-onelisting"),
)


def index_ratios(row: dict) -> dict:
    """Without / with the marker index, wall and CPU, where both passes ran; and whether
    their results were the same."""
    return pass_ratios(row, [(before, before, after) for before, after in INDEX_PAIRS])


def pass_ratios(row: dict, pairs) -> dict:
    """(name, before, after) -> before / after, wall and CPU, where both passes ran; and
    whether their results were the same."""
    ratios = {}
    for name, before, after in pairs:
        if before in row and after in row:
            a, b = row[before], row[after]
            same = {k: v for k, v in a.items() if k not in ("wall_s", "cpu_s", "peak_rss_mib")}
            ratios[name] = {
                "wall": a["wall_s"] / b["wall_s"],
                "cpu": a["cpu_s"] / b["cpu_s"],
                "same_result": all(b.get(k) == v for k, v in same.items()),
            }
    return ratios


def run_child(phase: str, manifest: str, run: str, env: dict, profile: Path | None = None) -> dict:
    """One measured pass in a fresh process; with `profile` (a folder), under cProfile, its
    stats saved as <folder>/<shards>-<phase>.prof (read them with `python -m pstats`)."""
    command = [sys.executable, __file__, "--child", phase, manifest, run]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        shards = run.rstrip("/").split("/")[-2].removeprefix("out-")
        command = [*command, str(profile / f"{shards}-{phase}.prof")]
    out = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def proxy_process(upstream: str, delay_ms: float) -> tuple[subprocess.Popen, str]:
    proxy = Path(__file__).resolve().parents[1] / "tests" / "support" / "fault_proxy.py"
    process = subprocess.Popen(
        [sys.executable, str(proxy), upstream, "--delay-ms", str(delay_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(profiled(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--items-per-shard", type=int, default=1000)
    parser.add_argument("--manifest-rows", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--baseline-shards", type=int, default=200)
    parser.add_argument("--skip-status", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="a folder: run each pass under cProfile"
    )
    parser.add_argument(
        "--phases", nargs="+", default=None, help="only these passes (default: all of them)"
    )
    args = parser.parse_args()

    from support.s3_server import SeaweedS3Server

    figures: dict = {"delay_ms": args.delay_ms, "items_per_shard": args.items_per_shard, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        server = SeaweedS3Server.start(Path(tmp))
        proxy, endpoint = proxy_process(server.endpoint_url, args.delay_ms)
        try:
            storage = server.storage()  # population goes straight to the server
            bucket = server.new_bucket("catalog")
            env = {
                **os.environ,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
                "AWS_REGION": "us-east-1",
            }
            sizes = [("baseline", args.baseline_shards)] if args.baseline_shards else []
            sizes += [("new", n) for n in args.shards]
            for kind, shards in sizes:
                t0 = time.perf_counter()
                done = shards // 2
                with_counts = kind == "new"
                where = populate(
                    storage,
                    bucket,
                    shards,
                    args.items_per_shard,
                    args.manifest_rows,
                    done,
                    with_counts,
                )
                row: dict = {"shards": shards, "populate_s": time.perf_counter() - t0}
                phases = ["resume", "plan", "index-write", "resume-index-botocore"]
                phases += ["resume-index-onelisting", "resume-index"]
                if kind == "baseline":
                    phases = ["baseline-resume", "baseline-plan", *phases]
                if not args.skip_status:
                    phases += ["complete", "status-stale", "no-index", "status"]
                    phases += ["baseline-status", "index-write-all", "status-index-botocore"]
                    phases += ["status-index-onelisting", "status-index"]
                for phase in phases:
                    if phase == "complete":
                        complete(storage, bucket, shards, args.items_per_shard, done, with_counts)
                        continue
                    child = phase.removesuffix("-all")  # index-write over the whole run
                    if args.phases is not None and child not in args.phases:
                        continue
                    row[phase] = run_child(
                        child, where["manifest"], where["run"], env, args.profile
                    )
                    print(shards, phase, row[phase], flush=True)
                row["index_ratios"] = index_ratios(row)
                print(shards, "without / with the index", row["index_ratios"], flush=True)
                row["listing_ratios"] = pass_ratios(row, LISTING_PAIRS)
                print(shards, "listing by botocore / by XML", row["listing_ratios"], flush=True)
                figures["runs"].append(row)
        finally:
            assert proxy.stdin is not None
            proxy.stdin.close()
            proxy.wait(timeout=30)
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
