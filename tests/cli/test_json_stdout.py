"""Under `--json`, stdout holds restyle's one JSON object and nothing else: what a library, C
code or a child process prints meanwhile lands on stderr, so `restyle ... --json | jq` always
parses. (Ray's forwarded prints under a real run: tests/execution/test_cluster_watch.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from pipeline.cli.common import json_stdout, print_json
from pipeline.cli.main import app

NOISY = """
import os, subprocess
from pipeline.cli.common import json_stdout, print_json

print("before the command")
with json_stdout():
    print("a library's print")
    os.write(1, b"C code writing to fd 1\\n")
    subprocess.run(["echo", "a child process"], check=True)
    print_json({"answer": 42})
print("after the command")
"""


def test_prints_fd_writes_and_children_go_to_stderr_and_stdout_comes_back_after():
    result = subprocess.run(
        [sys.executable, "-c", NOISY], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    before, answer, after = result.stdout.partition('{\n "answer": 42\n}\n')
    assert (before, answer, after) == ("before the command\n", answer, "after the command\n")
    assert json.loads(answer) == {"answer": 42}
    for noise in ("a library's print", "C code writing to fd 1", "a child process"):
        assert noise in result.stderr.splitlines()


def test_under_an_in_memory_capture_only_sys_stdout_is_swapped(capsys):
    with json_stdout():
        print("a library's print")
        print_json({"answer": 42})
    print("after")
    out, err = capsys.readouterr()
    assert out == '{\n "answer": 42\n}\nafter\n'
    assert err == "a library's print\n"


def test_every_command_with_json_keeps_stdout_for_its_object():
    def commands(group, path=()):
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                yield from commands(command, (*path, name))
            else:
                yield " ".join((*path, name)), command

    with_json = {
        path: [p for p in command.params if "--json" in getattr(p, "opts", ())]
        for path, command in commands(typer.main.get_command(app))
    }
    with_json = {path: params for path, params in with_json.items() if params}
    assert {"run", "eval", "caption", "status", "weights list"} <= set(with_json)
    for path, (param,) in with_json.items():
        assert getattr(param.callback, "__name__", "") == "_json_only", path
