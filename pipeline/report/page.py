"""index.html: one self-contained page (inline CSS, inline script, data as JSON in the page,
thumbnails beside it). The contact sheet is drawn by a small script: paginated, sortable by
any metric (best or worst first), text always set with textContent (prompts are data)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.report import charts
from pipeline.report.data import ReportData

PAGE_SIZE = 24

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:12px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{margin:0;width:320px}
.chart svg{width:320px;height:140px;background:#f4f6f8}.bar{fill:#4a7bd0}.axis{stroke:#555}
.line{fill:none;stroke:#c0392b;stroke-width:2}.chart text{font-size:10px;fill:#333}
table{border-collapse:collapse}td,th{padding:4px 8px;vertical-align:top;text-align:left}
#sheet td{border-top:1px solid #eee}#sheet img{width:128px;height:auto;display:block}
.scores{font-family:ui-monospace,monospace;font-size:12px}.muted{color:#777}
pre{white-space:pre-wrap;font-size:12px;max-height:360px;overflow:auto;background:#f4f6f8;padding:8px}
.controls{display:flex;gap:12px;align-items:center;margin-bottom:8px}
"""

SCRIPT = """
const data = JSON.parse(document.getElementById('items').textContent);
const metrics = JSON.parse(document.getElementById('metrics').textContent);
const pageSize = %d;
let page = 0, order = [...data];
const sortSel = document.getElementById('sort');
function cell(row, content) { const td = document.createElement('td'); td.append(...content); row.append(td); }
function img(item, role) {
  if (!item.images[role]) { const s = document.createElement('span'); s.className = 'muted'; s.textContent = '-'; return [s]; }
  const i = document.createElement('img'); i.src = item.images[role]; i.alt = role + ' of ' + item.id; i.loading = 'eager'; return [i];
}
function text(t, cls) { const d = document.createElement('div'); d.textContent = t; if (cls) d.className = cls; return d; }
function resort() {
  const [key, dir] = sortSel.value.split(':');
  order = [...data].sort((a, b) => {
    const x = key === 'id' ? a.id : a.scores[key], y = key === 'id' ? b.id : b.scores[key];
    if (x === undefined && y === undefined) return 0;
    if (x === undefined) return 1; if (y === undefined) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * (dir === 'desc' ? -1 : 1);
  });
  page = 0; draw();
}
function draw() {
  const body = document.querySelector('#sheet tbody'); body.replaceChildren();
  for (const item of order.slice(page * pageSize, (page + 1) * pageSize)) {
    const row = document.createElement('tr');
    cell(row, img(item, 'subject'));
    const styles = ['style', 'style1', 'style2', 'style3'].filter(r => item.images[r]);
    cell(row, styles.length ? styles.flatMap(r => img(item, r)) : img(item, 'style'));
    cell(row, img(item, 'result'));
    const scores = Object.entries(item.scores).map(([k, v]) => k + ' ' + v.toFixed(4)).join('  ');
    cell(row, [text(item.id), text('prompt: ' + item.prompt), text('caption: ' + item.caption, 'muted'),
               text(scores || 'not scored', 'scores')]);
    body.append(row);
  }
  const pages = Math.max(1, Math.ceil(order.length / pageSize));
  document.getElementById('pageinfo').textContent = 'page ' + (page + 1) + ' of ' + pages + ' (' + order.length + ' items)';
  document.getElementById('prev').disabled = page === 0;
  document.getElementById('next').disabled = page + 1 >= pages;
}
for (const m of metrics) for (const [dir, word] of [['desc', 'best first'], ['asc', 'worst first']]) {
  const o = document.createElement('option');
  const better = m.higher ? dir : (dir === 'desc' ? 'asc' : 'desc');
  o.value = m.name + ':' + better; o.textContent = m.name + ', ' + word; sortSel.append(o);
}
sortSel.addEventListener('change', resort);
document.getElementById('prev').addEventListener('click', () => { page--; draw(); });
document.getElementById('next').addEventListener('click', () => { page++; draw(); });
resort();
"""


def _json_script(element_id: str, value: Any) -> str:
    payload = json.dumps(value, sort_keys=True).replace("</", "<\\\\/")
    return f'<script type="application/json" id="{element_id}">{payload}</script>'


def _table(rows: list[tuple[str, str]]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def render(data: ReportData) -> str:
    items = [
        {
            "id": i.id,
            "prompt": i.prompt,
            "caption": i.caption,
            "scores": i.scores,
            "images": i.images,
        }
        for i in data.ok
    ]
    names = data.metric_names()
    metrics = [{"name": m, "higher": ITEM_METRICS[m].higher_is_better} for m in names]
    histograms = "".join(
        charts.histogram(m, [i.scores[m] for i in data.items if m in i.scores]) for m in names
    )
    sets = data.summary.get("sets", {})
    set_rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sets.items()]
    failures = data.failures()
    failure_html = (
        "".join(
            f"<h3>{escape(kind)}: {entry['count']}</h3><ul>"
            + "".join(
                f"<li><b>{escape(e['id'])}</b>: {escape(e['error'])}</li>"
                for e in entry["examples"]
            )
            + "</ul>"
            for kind, entry in sorted(failures.items())
        )
        or "<p>No failed items.</p>"
    )
    config = json.dumps(data.run_json.get("config", {}), indent=1, sort_keys=True)
    weights = data.run_json.get("weights", {})
    counts = {
        s: sum(1 for i in data.items if i.status == s) for s in {i.status for i in data.items}
    }
    overview = [
        ("run", data.run_uri),
        ("model", str(data.run_json.get("config", {}).get("model", "?"))),
        ("fingerprint", str(data.run_json.get("fingerprint", "?"))),
        ("items", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"),
        ("model busy", f"{data.model_busy():.0%} of actor time"),
        ("random weights", str(data.run_json.get("random_weights", False))),
    ]
    sort_default = '<option value="id:asc">id</option>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>restyle report: {escape(data.run_uri)}</title>
<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>
<h1>restyle report</h1><div class="muted">{escape(data.run_uri)}</div>
<section>{_table(overview)}</section>
<h2>Contact sheet</h2><section>
<div class="controls"><label>sort <select id="sort">{sort_default}</select></label>
<button id="prev">previous</button><span id="pageinfo"></span><button id="next">next</button></div>
<table id="sheet"><thead><tr><th>subject</th><th>style reference(s)</th><th>result</th><th>item</th></tr></thead>
<tbody></tbody></table></section>
<h2>Scores</h2><section><div class="charts">{histograms or "<p>Not scored: run <code>restyle eval</code>.</p>"}</div>
{_table(set_rows) if set_rows else ""}</section>
<h2>Failures by class</h2><section>{failure_html}</section>
<h2>Throughput</h2><section><div class="charts">{charts.throughput(data.throughput())}</div>
<p>model busy {data.model_busy():.0%} of actor time</p></section>
<h2>Configuration and weights</h2><section>{_table([(k, str(v)) for k, v in sorted(weights.items())])}
<pre>{escape(config)}</pre></section>
{_json_script("items", items)}{_json_script("metrics", metrics)}
<script>{SCRIPT % PAGE_SIZE}</script></body></html>
"""
