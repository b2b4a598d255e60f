"""Each actor spools into a scratch folder of its own; a killed actor's folder is removed by the
next actor that starts on the node, and a live actor's never is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.processing.scratch import ScratchSpace, actor_scratch, remove_stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_actors_scratch_and_loose_spools_are_removed_a_live_ones_kept(tmp_path: Path):
    host = socket.gethostname()
    dead = tmp_path / f"actor-{host}-{_dead_pid()}"
    live = tmp_path / f"actor-{host}-{os.getppid()}"
    other_host = tmp_path / f"actor-elsewhere-{_dead_pid()}"
    for folder in (dead, live, other_host):
        folder.mkdir()
        (folder / "restyle-shard-x.tar").write_bytes(b"spool")
    loose = tmp_path / "restyle-shard-abc.tar"  # written by restyle before per-actor folders
    loose.write_bytes(b"spool")
    mine = actor_scratch(tmp_path)
    assert mine.name == f"actor-{host}-{os.getpid()}" and mine.is_dir()
    assert not dead.exists() and not loose.exists()
    assert live.exists() and other_host.exists()  # alive, or not this node's to judge
    assert remove_stale(tmp_path) == []


def test_the_folder_goes_when_the_actor_process_exits(tmp_path: Path):
    code = (
        "import sys; from pathlib import Path; from pipeline.processing.scratch import "
        "actor_scratch; f = actor_scratch(Path(sys.argv[1])); (f / 'spool').write_bytes(b'x');"
        " print(f)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert not Path(out.stdout.strip()).exists()


def test_the_folder_exists_only_while_a_shard_holds_it(tmp_path: Path):
    """An actor stopped between shards (Ray SIGKILLs actors at the end of a run, so atexit never
    runs) leaves no folder: it is there only while some shard spools into it."""
    folder = tmp_path / "actor-x"
    space = ScratchSpace(folder)
    assert not folder.exists()
    with space.held() as first:
        assert Path(first) == folder and folder.is_dir()
        (folder / "restyle-shard-1.tar").write_bytes(b"spool")
        with space.held():  # a queued shard spools beside the running one
            (folder / "restyle-shard-2.tar").write_bytes(b"spool")
        assert (folder / "restyle-shard-1.tar").exists()  # still held by the first shard
    assert not folder.exists()
    with space.held():
        assert folder.is_dir()
    assert not folder.exists()
