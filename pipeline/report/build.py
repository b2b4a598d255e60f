"""`restyle report <run>`: gather, thumbnail, render, write one folder.

The folder (index.html + thumbs/) goes to a local path or beside the run (`<run>/report/`, on
S3 too); every file is written whole through `Storage`, index.html last, so a half-written
report never has a page pointing at missing thumbnails.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.outputs.run_state import RunState
from pipeline.report.data import read_report_data
from pipeline.report.page import render
from pipeline.report.thumbnails import write_thumbnails
from pipeline.storage import Storage

REPORT_FOLDER = "report"


@dataclass
class ReportSummary:
    index: str
    items: int
    thumbnails: int


def write_report(storage: Storage, run_uri: str, out: str | None = None) -> ReportSummary:
    state = RunState(storage, run_uri.rstrip("/"))
    folder = (out or f"{state.run_uri}/{REPORT_FOLDER}").rstrip("/")
    data = read_report_data(state)

    def write(relative: str, payload: bytes) -> None:
        storage.write_bytes(f"{folder}/{relative}", payload)

    thumbs = write_thumbnails(storage, data, write)
    write("index.html", render(data).encode("utf-8"))
    return ReportSummary(f"{folder}/index.html", len(data.items), thumbs)
