"""`curate report` on a real small run (filters, two verifiers, exact and near dedup, embeddings,
a kmeans_diversity selection), rendered in headless Chromium: the DOM has the funnel's table of
rates with one line per step, example rows per drop kind and per cluster, pool sizes beside
selected rows, full verifier details (not JSON cut at its first `:`), no chart without data,
and the wall-clock time; the screenshot is a drawn page, not a blank one."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import curate_cmd, headless_chromium, write_jsonl

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

pytestmark = [pytest.mark.model, pytest.mark.slow]

MATH = [
    {"instruction": "What is 17 * 24?", "output": "17 * 24 = 408. The answer is 408.", "answer": "408"},
    {"instruction": "What is 17 * 25?", "output": "That is \\boxed{415}.", "answer": "425"},
    {"instruction": "What is 3 + 4?", "output": "I think it is seven-ish, hard to say.", "answer": "7"},
]
CONSTRAINTS = [
    {"instruction": "Write a tagline.", "output": "Fresh, bright, new", "constraints": [{"id": "no_comma", "kwargs": {}}]},
    {"instruction": "Write a title.", "output": "<<Spring>> flowers bloom",
     "constraints": [{"id": "title", "kwargs": {}}, {"id": "no_comma", "kwargs": {}}]},
]


@pytest.fixture(scope="module")
def report(tmp_path_factory, alpaca_rows):
    tmp = tmp_path_factory.mktemp("report")
    base = alpaca_rows[:80]
    same_instruction = [dict(r, output=r["output"] + " In short, that is all.") for r in alpaca_rows[10:13]]
    near = [dict(r, instruction=r["instruction"] + " Thanks!") for r in alpaca_rows[20:24]
            if len(r["instruction"].split()) > 8]
    rows = base + alpaca_rows[:4] + same_instruction + near + [{"instruction": "Say hi.", "output": "Hi"}] + MATH + CONSTRAINTS
    src = write_jsonl(tmp / "seeds.jsonl", rows, extra_lines=[b"{not json"])
    cfg = tmp / "c.yaml"
    cfg.write_text(json.dumps({
        "input": [str(src)], "db": str(tmp / "r.duckdb"), "shard_size": 32,
        "stages": [{"filters": {"min_response_words": 2}}, {"verify_math": {}}, {"verify_constraints": {}},
                   {"exact_dedup": {"text": "instruction"}}, {"near_dedup": {"threshold": 0.7}},
                   {"embed": {"text": "instruction", "batch_size": 64}}],
        "selectors": [{"kmeans_diversity": {"budget": 0.5, "k": 4, "seed": 0, "name": "diverse"}}],
    }))
    done = subprocess.run([*curate_cmd(), "run", str(cfg), "--progress", "off", "--no-export"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp / "report.html"
    done = subprocess.run([*curate_cmd(), "report", "--db", str(tmp / "r.duckdb"), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


class _Cells(HTMLParser):
    """Text of every table cell, each table's id and class, and every img's class and src."""

    def __init__(self):
        super().__init__()
        self.cells, self.imgs, self.tables, self._cell, self._depth = [], [], [], None, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append((a.get("id"), a.get("class")))
        if tag == "img":
            self.imgs.append((a.get("class"), a.get("src") or ""))
        if tag in ("td", "th"):
            self._cell, self._depth = [], 0
        elif self._cell is not None:
            self._depth += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _section(dom: str, section: str) -> str:
    start = dom.index(f'<section id="{section}">')
    return dom[start:dom.index("</section>", start)]


def _rows_of(table_html: str) -> list[list[str]]:
    p = _Cells()
    p.feed(table_html)
    header = len(re.findall(r"<th\b", table_html.split("</thead>")[0]))
    return [p.cells[i:i + header] for i in range(header, len(p.cells), header)]


def _check_page(dom: str):
    """What the issue asked for, on the page (the file, or the DOM Chromium rendered)."""
    # The funnel: a table of rates, one line per step; a global stage (key half in the stream,
    # decision at the barrier) is one line; the two phases' `store` steps are told apart.
    funnel = _section(dom, "funnel")
    rates = funnel[funnel.index('id="funnel-rates"'):funnel.index("</table>", funnel.index('id="funnel-rates"'))]
    steps = [r[0] for r in _rows_of("<table" + rates.split(">", 1)[1])]
    assert steps == ["ingest", "filters", "verify_math", "verify_constraints", "store (phase 1)", "exact_dedup",
                     "near_dedup", "embed", "store (phase 2)"], steps
    assert "% of its rows dropped" in funnel and 'class="chart"' in funnel
    by_step = {r[0]: r for r in _rows_of("<table" + rates.split(">", 1)[1])}
    assert by_step["exact_dedup"][1].startswith("global") and int(by_step["exact_dedup"][5]) == 3  # same instruction, other answer
    assert int(by_step["store (phase 1)"][5]) == 4  # identical rows
    assert int(by_step["near_dedup"][5]) >= 1
    # Drop reasons by kind, each with example rows (id, reason, cut texts).
    drops = _section(dom, "drop-reasons")
    assert 'id="drop-examples"' in drops
    for kind in ("store: duplicate", "exact_dedup: duplicate", "near_dedup: near_duplicate", "verify_math: math_answer",
                 "filters: response_words", "verify_constraints: constraints"):
        assert f"{kind} <span" in drops, kind
    assert "math_answer:wrong_answer" in drops and "What is 17 * 25?" in drops and "invalid JSON" in drops
    assert "chars)</span>" in drops  # long responses are cut, with their length
    # Clusters: pool rows beside selected rows, said so, and example rows per cluster.
    clusters = _section(dom, "clusters")
    assert "pool rows and selected rows per cluster" in clusters and "recomputed" in clusters
    table = clusters[clusters.index('<table class="clusters"'):]
    table = table[:table.index("</table>") + 8]
    sizes = [(int(r[1]), int(r[2])) for r in _rows_of(table)]
    assert len(sizes) == 4 and all(0 < sel <= pool for pool, sel in sizes)
    assert abs(sum(sel for _, sel in sizes) - 0.5 * sum(pool for pool, _ in sizes)) <= 1  # budget 0.5 of the whole pool
    assert len(re.findall(r'class="example-cluster"', clusters)) == 4
    # Verifier failures: the JSON detail's kind, the drop it caused, and the whole detail.
    verifiers = _section(dom, "verifiers")
    p = _Cells()
    p.feed(verifiers)
    assert {"wrong_answer", "no_answer", "unsatisfied"} <= set(p.cells)
    assert "verify_math: math_answer" in p.cells
    for cell in p.cells:
        if cell.startswith("{"):
            json.loads(cell)  # whole JSON, never `{"kind"` cut at its first `:`
    assert any('"reference": "425"' in cell for cell in p.cells)
    # Wall-clock time and per-step time.
    time_ = _section(dom, "time")
    assert 'id="wall-clock"' in time_ and 'id="timeline"' in time_ and 'id="stage-time"' in time_
    assert re.search(r"<td>[^<]*\d s\)?</td>", _section(dom, "summary"))  # the run's wall-clock in its table
    # No chart without data: every chart is a real PNG; sections without data say so in words.
    p = _Cells()
    p.feed(dom)
    assert p.imgs and all(cls == "chart" and src.startswith("data:image/png;base64,") for cls, src in p.imgs)
    for _, src in p.imgs:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 3000
    llm = _section(dom, "llm")
    assert "<img" not in llm and "no generated rows in this run" in llm
    # Self-contained: nothing to fetch (example texts may quote URLs; no attribute loads one).
    assert not re.search(r'\b(src|href)="(?!data:|#)', dom) and "<link" not in dom and "<script src" not in dom


def test_report_page_has_what_the_issue_asked_for(report):
    _check_page(report.read_text())


def test_report_renders_in_headless_chromium(report, tmp_path):
    common = headless_chromium(tmp_path / "chrome")
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    _check_page(dom.stdout)

    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri()], capture_output=True, timeout=180)
    assert shot.exists(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    if os.environ.get("CURATE_REPORT_SCREENSHOT"):  # keep it, e.g. as a CI artifact
        shutil.copyfile(shot, os.environ["CURATE_REPORT_SCREENSHOT"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # text, tables and charts, not a blank page
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (1280, 4000)
    small = image.resize((64, 200))
    assert len(small.getcolors(64 * 200)) > 50  # many colours: not one flat colour
    # Drawn all the way down: every 500-pixel band of the page holds ink (text, a table or a chart).
    for top in range(0, 4000, 500):
        band = image.crop((0, top, 1280, top + 500)).convert("L")
        assert band.getextrema()[0] < 128, f"nothing drawn between y={top} and y={top + 500}"
