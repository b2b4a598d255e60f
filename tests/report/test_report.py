"""`restyle report`: a run folder on S3 becomes a static HTML folder a person can open, checked
in a real headless Chromium (DevTools protocol): no console errors, every thumbnail loads, the
contact sheet sorts and pages; a screenshot is kept in the test's tmp folder."""

from __future__ import annotations

import json
import os

import pytest
from support.chromium import browser_path, open_browser
from support.committed_run import write_run
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.outputs.run_layout import committed, summary_uri
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import write_scores
from pipeline.report.build import write_report
from pipeline.storage import Storage

IDS = {0: [f"item-{i:02d}" for i in range(16)], 1: [f"item-{i:02d}" for i in range(16, 30)]}


def score_run(storage, run_uri: str) -> dict[str, float]:
    csd = {}
    for files in committed(RunState(storage, run_uri)):
        rows = []
        for n, item_id in enumerate(IDS[files.commit.shard]):
            csd[item_id] = round(0.3 + ((n * 7 + files.commit.shard * 3) % 11) / 20, 3)
            rows.append(
                {"id": item_id, "key": item_id, "eval": "e", "csd": csd[item_id], "clip_t": 0.2}
            )
        write_scores(storage, files.scores, rows, {"fingerprint": "e"})
    storage.write_bytes(
        summary_uri(run_uri),
        json.dumps({"eval": "e", "sets": {"fid": 12.5, "cmmd": 0.31}}).encode(),
    )
    return csd


@pytest.mark.skipif(
    browser_path() is None and not os.environ.get("RESTYLE_REQUIRE_BROWSER"),
    reason="needs Debian's chromium (apt-get install chromium); CI requires it",
)
def test_report_of_an_s3_run_opens_in_chromium_with_every_thumbnail(s3_server, s3_bucket, tmp_path):
    storage = s3_server.storage()
    run_uri = f"{s3_bucket}/out/run"
    write_run(storage, run_uri, IDS, failed={0: "corrupt-1", 1: "corrupt-2"})
    csd = score_run(storage, run_uri)

    local = tmp_path / "report"
    summary = write_report(storage, run_uri, str(local))
    assert summary.items == 32 and summary.thumbnails == 90  # 30 ok x (result, subject, style)
    assert sorted(p.name for p in local.iterdir()) == ["index.html", "thumbs"]
    html = (local / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    # Beside the run, on S3, by default (the CLI with the standard AWS variables).
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }
    result = CliRunner().invoke(app, ["report", run_uri, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["index"] == f"{run_uri}/report/index.html"
    assert storage.exists(f"{run_uri}/report/thumbs/item-00.result.jpg")

    browser = open_browser()
    try:
        visit = browser.visit((local / "index.html").as_uri(), tmp_path / "report.png")
        print(f"report screenshot: {visit.screenshot}")
        assert visit.console_errors == []
        assert visit.images["broken"] == [] and visit.images["total"] == 24 * 3  # one page
        rows = "document.querySelectorAll('#sheet tbody tr')"
        first_id = f"{rows}[0].cells[3].firstChild.textContent"
        assert browser.evaluate(f"{rows}.length") == 24
        assert "page 1 of 2 (30 items)" in browser.evaluate(
            "document.getElementById('pageinfo').textContent"
        )
        browser.evaluate(
            "const s = document.getElementById('sort'); s.value = 'csd:asc'; s.dispatchEvent(new Event('change'))"
        )
        worst = min(csd, key=lambda i: (csd[i], i))
        assert browser.evaluate(first_id) in {i for i in csd if csd[i] == csd[worst]}
        browser.evaluate(
            "const t = document.getElementById('sort'); t.value = 'csd:desc'; t.dispatchEvent(new Event('change'))"
        )
        assert csd[browser.evaluate(first_id)] == max(csd.values())
        browser.evaluate("document.getElementById('next').click()")
        assert browser.evaluate(f"{rows}.length") == 6
        text = browser.evaluate("document.body.innerText")
        for expected in (
            "bad_input: 2",
            "corrupt-1",
            "csd: median",
            "fid",
            "12.5000",
            "model busy",
        ):
            assert expected in text, expected
        assert (
            browser.evaluate("document.querySelectorAll('svg').length") >= 3
        )  # 2 histograms + throughput
        assert visit.screenshot.stat().st_size > 10_000
    finally:
        browser.close()


def test_thumbnails_of_references_named_by_the_provenance(tmp_path):
    """A run that did not store its references: the subject and style thumbnails come from the
    URIs in each sample's provenance `inputs`."""
    storage = Storage()
    run_uri = str(tmp_path / "run")
    write_run(storage, run_uri, {0: ["a", "b"]}, references=False)
    summary = write_report(storage, run_uri, str(tmp_path / "report"))
    assert summary.thumbnails == 6  # 2 ok x (result, subject, style)
    assert (tmp_path / "report" / "thumbs" / "a.style.jpg").exists()
