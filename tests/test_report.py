"""The reports and their charts: one source of numbers, readable axes, words that match the numbers."""

from __future__ import annotations

import re

import pytest

from archsmith.design import design_from_text
from archsmith.report import MEMORY_COLUMNS, design_plan, memory_charts, memory_tables, render_design
from archsmith.units import human_bytes


def markdown_table(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module", params=[{"memory": "24GB"}, {"params": "125M"}], ids=["24GB-budget", "125M"])
def rendered(request):
    result = design_from_text(**request.param)
    plan = design_plan(result)
    return result, plan, render_design(result), memory_charts(result, plan)


def test_charts_draw_exactly_the_tables_rows_and_columns(rendered):
    import matplotlib.pyplot as plt

    result, plan, files, charts = rendered
    tables = memory_tables(result, plan)
    sources = {"architecture_memory.png": ("architecture_report.md", "candidate", 1),
               "capacity_memory.png": ("capacity_plan.md", "strategy", 2)}
    for chart, (report, first_header, skip) in sources.items():
        ax = charts[chart].axes[0]
        unit = 2**30 if ax.get_ylabel().startswith("GiB") else 2**20
        table = markdown_table(files[report], first_header)
        data = tables[chart]["rows"]
        assert len(table) == len(data) == len(ax.containers[0].patches)
        assert [c.get_label() for c in ax.containers] == [header for _, header in MEMORY_COLUMNS]  # buffers included
        for (key, header), bars in zip(MEMORY_COLUMNS, ax.containers):
            column = skip + [h for _, h in MEMORY_COLUMNS].index(header)
            for bar, row, cells in zip(bars.patches, data, table):
                drawn = round(bar.get_height() * unit)
                assert drawn == row[key], (chart, header)  # to the byte
                assert cells[column] == human_bytes(drawn)
        totals = [t.get_text() for t in ax.texts]
        assert totals == [cells[skip + len(MEMORY_COLUMNS)] for cells in table] == [human_bytes(r["total_bytes"]) for r in data]
        for i, stack in enumerate(zip(*(c.patches for c in ax.containers))):  # each stack's top is the table's total
            assert human_bytes((stack[-1].get_y() + stack[-1].get_height()) * unit) == totals[i]
        plt.close(charts[chart])


def test_chart_axis_fits_the_bars_and_the_limit(rendered):
    import matplotlib.pyplot as plt

    result, plan, _, charts = rendered
    limit = plan["limit"]["bytes"]
    for fig in charts.values():
        ax = fig.axes[0]
        unit = 2**30 if ax.get_ylabel().startswith("GiB") else 2**20
        tallest = max(p.get_y() + p.get_height() for c in ax.containers for p in c.patches)
        lines = [line for line in ax.get_lines() if len(line.get_ydata()) == 2]  # the limit line (not the legend's proxy)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        if limit / unit <= 1.5 * tallest:
            assert [line.get_ydata()[0] for line in lines] == [limit / unit]
            assert ax.get_ylim()[1] >= limit / unit
        else:  # far above the bars: stated in the legend, and the bars fill the axis
            assert lines == [] and any(human_bytes(limit) in t and "above the axis" in t for t in legend)
            assert ax.get_ylim()[1] <= 1.2 * tallest
        plt.close(fig)


def test_capacity_plan_uses_the_budget(rendered):
    result, plan, files, _ = rendered
    text = files["capacity_plan.md"]
    assert f"Usable memory: {human_bytes(plan['limit']['bytes'])} per GPU" in text
    rows = markdown_table(text, "strategy")
    assert [r[-1] == "yes" for r in rows] == [r["total_bytes"] <= plan["limit"]["bytes"] for r in plan["strategies"]]
    assumed = [r for r in rows if "(assumed)" in r[0]]
    assert len(assumed) == 1 and assumed[0][-1] == "yes" and assumed[0][0].startswith(result["training"]["strategy"])
    for line in result["assumptions"]:
        assert line in text and line in files["architecture_report.md"]


def test_report_words_match_the_numbers(rendered):
    result, _, files, _ = rendered
    report = files["architecture_report.md"]
    assert "keeps the" not in report
    aspect = result["recommended"].summary["aspect"]
    assert re.search(rf"aspect {aspect} \(hidden / layers\).*target aspect {result['template']['aspect']}", report)
    header = next(line for line in files["capacity_plan.md"].splitlines() if "KV cache at" in line and line.startswith("|"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[0] == "precision" and len(set(cells)) == len(cells)
    path = markdown_table(report, "template")
    assert [row[0] for row in path] == [s["template"] for s in result["scaling_path"]]
    assert [row[1] for row in path] == [s["shape"] for s in result["scaling_path"]]


def test_the_tokens_row_says_where_its_tokens_come_from():
    given = render_design(design_from_text(params="125M", tokens="10B"))["architecture_report.md"]
    assert "| training tokens (given) | 10B |" in given and "\n| Chinchilla tokens |" not in given  # (the scaling path keeps its own)
    default = render_design(design_from_text(params="125M"))["architecture_report.md"]
    assert "| training tokens (Chinchilla, 20 per parameter) |" in default
