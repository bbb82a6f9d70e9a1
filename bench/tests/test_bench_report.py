"""The markdown writer and the plot of docs/benchmarks.md, on a hand-made result set."""

from __future__ import annotations

import copy

import pytest
from bench_helpers import target_rows

from bench import report


def cell(rps: float, p50: float, p99: float, errors: int = 0) -> dict:
    return {
        "requests": int(rps * 10),
        "seconds": 10.0,
        "rps": rps,
        "p50_ms": p50,
        "p75_ms": p50,
        "p90_ms": p99,
        "p99_ms": p99,
        "non_2xx": errors,
        "socket_errors": 0,
        "timeouts": 0,
        "errors": errors,
    }


def timing(us: float, rows: int) -> dict:
    return {"us_per_call": us, "us_per_row": us / rows, "repeats": 7, "number": 100, "rows": rows}


@pytest.fixture
def results() -> dict:
    return {
        "started_at": "2026-11-28 13:00 UTC",
        "elapsed_s": 150.0,
        "servers": [
            {"key": "serving", "label": "serving app", "command": "python -m app.serve", "note": "(WORKERS=2)"},
            {"key": "mlflow", "label": "mlflow models serve", "command": "mlflow models serve -w 2"},
            {"key": "floor", "label": "FastAPI floor", "command": "uvicorn bench.floor:app"},
        ],
        "scenarios": [
            {"key": "row-c1", "label": "1 row, c=1"},
            {"key": "row-c32", "label": "1 row, c=32"},
            {"key": "batch-c8", "label": "100 rows, c=8"},
        ],
        "load": {
            "serving": {"row-c1": cell(900, 1.1, 1.8), "row-c32": cell(3000, 10, 20), "batch-c8": cell(800, 9, 30, 3)},
            "mlflow": {"row-c1": cell(40, 24, 40), "row-c32": cell(100, 300, 800), "batch-c8": cell(40, 170, 350)},
            "floor": {"row-c1": cell(1200, 0.8, 1.2), "row-c32": cell(5000, 6, 12), "batch-c8": cell(2000, 4, 9)},
        },
        "inference": {
            "serving_path": "forest-trees",
            "serving": {"row": timing(40.0, 1), "batch100": timing(900.0, 100)},
            "sklearn": {"row": timing(18000.0, 1), "batch100": timing(19000.0, 100)},
            "parity": {"rows": 1150, "same_class": True, "max_abs_diff": 0.0},
        },
        "image": {"ref": "ops-demo:serving-abc", "created": "2026-11-28 12:49 UTC", "size_mb": 480.0, "ready_s": 2.5},
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gib": 24.0,
            "kernel": "6.1",
            "load_before": "1.00 1.00 1.00",
            "load_after": "2.00 1.50 1.20",
        },
        "versions": {"Python": "3.11.7", "wrk": "4.1.0"},
        "settings": {
            "n_estimators": 300,
            "max_depth": 15,
            "run_name": "optimized",
            "model_uri": "models:/iris-classifier/1",
            "duration_s": 10.0,
            "warmup_s": 2.0,
            "pinning": "wrk pinned to CPU 1.",
            "wrk_example": "taskset -c 1 wrk -t1 -c32 -d10s --latency -s row.lua URL",
        },
        "command": "npm run bench",
    }


def test_targets_are_judged_from_the_numbers(results):
    rows = target_rows(report.render_section(results))
    assert rows["single-row requests/s at c=32, serving / mlflow models serve"] == ("30.0x", "**met**")
    assert rows["single-row requests/s at c=32, serving / FastAPI floor"] == ("60%", "**not met**")
    assert rows["100-row requests/s at c=8, serving / FastAPI floor"] == ("40%", "**not met**")
    assert rows["serving p99 latency, single row at c=1"] == ("1.80 ms", "**met**")
    assert rows["inference alone, one row (forest-trees)"] == ("40.0 us/row", "**met**")
    assert rows["serving image size"] == ("480 MB", "**not met**")
    assert rows["serving container start -> ready, model present"] == ("2.5 s", "**met**")

    results["load"]["serving"]["row-c32"]["rps"] = 4500  # exactly 90% of the floor, 45x mlflow
    results["load"]["serving"]["batch-c8"]["rps"] = 1200  # exactly 60% of the floor
    results["load"]["serving"]["row-c1"]["p99_ms"] = 2.0  # the target is strictly under 2 ms
    results["inference"]["serving"]["row"] = timing(55.0, 1)
    rows = target_rows(report.render_section(results))
    assert rows["single-row requests/s at c=32, serving / FastAPI floor"] == ("90%", "**met**")
    assert rows["100-row requests/s at c=8, serving / FastAPI floor"] == ("60%", "**met**")
    assert rows["serving p99 latency, single row at c=1"] == ("2.00 ms", "**not met**")
    assert rows["inference alone, one row (forest-trees)"] == ("55.0 us/row", "**not met**")


def test_tables_ratios_and_context(results):
    section = report.render_section(results)
    assert section.startswith(report.BEGIN) and section.rstrip().endswith(report.END)
    assert "| 1 row, c=32 | serving app | 3,000 | 10.00 | 20.00 | 0 | 30,000 |" in section
    assert "| 100 rows, c=8 | serving app | 800 | 9.00 | 30.00 | 3 | 8,000 |" in section
    assert "| scenario | serving / FastAPI floor | serving / mlflow models serve |" in section
    assert "| 1 row, c=1 | 75% | 22.5x |" in section
    assert "| 100 rows, c=8 | 40% | 20.0x |" in section
    assert "| scikit-learn `predict_proba` | 18,000 | 19,000 | 190 |" in section
    assert "450x for one row" in section
    assert "![requests/s and p99 latency per scenario and server](benchmarks.png)" in section
    for expected in ("Test CPU, 2 cores, 24.0 GiB, Linux 6.1", "Python 3.11.7, wrk 4.1.0", "wrk pinned to CPU 1."):
        assert expected in section
    assert "Reproduce: `npm run bench`" in section
    assert "`python -m app.serve` (WORKERS=2)" in section


def test_missing_measurements_say_so(results):
    results = copy.deepcopy(results)
    results["load"]["mlflow"] = {k: {"failed": "exited with 1 | boom"} for k in ("row-c1", "row-c32", "batch-c8")}
    results["image"] = {"note": "Not measured: no Docker engine answers"}
    section = report.render_section(results, plot_name=None)
    rows = target_rows(section)
    assert rows["single-row requests/s at c=32, serving / mlflow models serve"] == ("not measured", "n/a")
    assert rows["serving image size"] == ("not measured", "n/a")
    assert "| 1 row, c=1 | mlflow models serve | failed: exited with 1 / boom | | | | |" in section
    assert "| 1 row, c=32 | 60% | n/a |" in section
    assert "Not measured: no Docker engine answers." in section
    assert "benchmarks.png" not in section


def test_write_markdown_replaces_only_the_generated_section(tmp_path, results):
    path = tmp_path / "benchmarks.md"
    report.write_markdown(path, report.render_section(results))
    created = path.read_text()
    assert created.startswith("# Serving benchmark")
    assert created.count(report.BEGIN) == 1

    notes_before, notes_after = "# Mine\n\nHand-written intro.\n\n", "\n## What stands in the way\n\nNotes.\n"
    path.write_text(notes_before + report.render_section(results) + notes_after)
    results["load"]["serving"]["row-c32"]["rps"] = 4000
    report.write_markdown(path, report.render_section(results))
    text = path.read_text()
    assert text.startswith(notes_before) and text.endswith(notes_after)
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert "| 1 row, c=32 | serving app | 4,000 |" in text
    assert "| 1 row, c=32 | serving app | 3,000 |" not in text

    report.write_markdown(path, report.render_section(results))
    assert path.read_text() == text  # idempotent


def test_plot_is_a_png(tmp_path, results):
    results["load"]["floor"]["batch-c8"] = {"failed": "did not start"}
    path = tmp_path / "benchmarks.png"
    report.write_plot(results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_rounds_combine_into_medians_and_sums(results):
    rounds = [cell(1000, 1.0, 2.0), cell(3000, 3.0, 9.0, errors=2), cell(2000, 2.0, 4.0), {"failed": "exited with 1"}]
    combined = report.combine_rounds(rounds)
    assert (combined["rps"], combined["p50_ms"], combined["p99_ms"]) == (2000, 2.0, 4.0)
    assert (combined["requests"], combined["errors"], combined["rounds"]) == (60000, 2, 3)
    assert (combined["rps_min"], combined["rps_max"], combined["failed_rounds"]) == (1000, 3000, 1)
    assert report.combine_rounds([{"failed": "boom"}, {"failed": "again"}]) == {"failed": "boom"}

    results["load"]["serving"]["row-c32"] = combined
    results["settings"]["rounds"] = 4
    section = report.render_section(results)
    row = (
        "| 1 row, c=32 | serving app | 2,000 (1,000-3,000) **spread**, 1 round(s) failed | 2.00 | 4.00 (2.00-9.00) "
        "| 2 | 60,000 |"
    )
    assert row in section
    assert "4 interleaved rounds: every server was started 4 times in turn (A, B, C, A, B, C, ...)" in section
