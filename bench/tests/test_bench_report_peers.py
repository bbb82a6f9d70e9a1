"""The report with peers and interleaved rounds: per-round ratios, spreads, protocol paths, workers, starts."""

from __future__ import annotations

import pytest
from bench_helpers import target_rows

from bench import report

SCENARIOS = [
    {"key": "row-c1", "label": "1 row, c=1"},
    {"key": "row-c32", "label": "1 row, c=32"},
    {"key": "batch-c8", "label": "100 rows, c=8"},
]
SERVERS = [
    ("serving", "serving app"),
    ("serving-v2", "serving app V2"),
    ("serving-invocations", "serving app /invocations"),
    ("floor", "FastAPI floor"),
    ("gofloor", "Go floor"),
    ("mlserver", "MLServer"),
    ("kserve", "KServe"),
    ("mlflow", "mlflow models serve"),
]


def cell(rps: float, p99: float = 1.0, conns=(4, 4), shares=(0.5, 0.5), switches: float = 0.2) -> dict:
    return {
        "requests": int(rps * 10),
        "seconds": 10.0,
        "rps": rps,
        "p50_ms": p99 / 2,
        "p75_ms": p99 / 2,
        "p90_ms": p99,
        "p99_ms": p99,
        "non_2xx": 0,
        "socket_errors": 0,
        "timeouts": 0,
        "errors": 0,
        "procs": {
            "processes": [
                {"pid": 100 + i, "name": "python", "cpu_s": s, "ctxsw": 1, "threads": 3, "conns": c, "cpu_share": s}
                for i, (c, s) in enumerate(zip(conns, shares, strict=True))
            ],
            "cpu_s": 1.0,
            "cpu_ms_per_request": 0.25,
            "ctxsw_per_request": switches,
        },
    }


# requests/s per round (3 rounds) for every scenario: serving, the others as a fraction or a multiple of it
RPS = {
    "serving": [1000, 1100, 900],
    "serving-v2": [950, 1000, 880],
    "serving-invocations": [800, 1050, 850],
    "floor": [1100, 1150, 1000],
    "gofloor": [5000, 5000, 5000],
    "mlserver": [20, 25, 22],
    "kserve": [10, 12, 11],
    "mlflow": [20, 10, 50],  # serving / mlflow: 50x, 110x, 18x: spread > 2x
}


@pytest.fixture
def results() -> dict:
    rounds = {}
    for key, rates in RPS.items():
        rounds[key] = [
            {sc["key"]: cell(r * (0.5 if sc["key"] == "batch-c8" else 1)) for sc in SCENARIOS} for r in rates
        ]
    # the serving app's 100-row batches: one round with every connection on one worker, at half the rate
    rounds["serving"][1]["batch-c8"] = cell(300, conns=(8, 0), shares=(0.97, 0.03), switches=2.4)
    rounds["floor"][0]["batch-c8"]["procs"]["ctxsw_per_request"] = 0.3
    load = {key: {sc["key"]: report.combine_rounds([r[sc["key"]] for r in rr]) for sc in SCENARIOS} for key, rr in rounds.items()}  # fmt: skip  # noqa: E501
    return {
        "started_at": "2026-12-03 18:00 UTC",
        "elapsed_s": 900.0,
        "servers": [{"key": k, "label": lbl, "server": k.split("-")[0], "command": k} for k, lbl in SERVERS],
        "scenarios": SCENARIOS,
        "load": load,
        "rounds": rounds,
        "starts": {
            "serving": [
                {"ready_s": t, "rss_mib": m, "pss_mib": m * 0.7, "workers_rss_mib": m * 0.8, "processes": 3}
                for t, m in ((1.2, 140), (1.4, 145), (1.3, 160))
            ],  # fmt: skip  # noqa: E501
            "gofloor": [{"ready_s": 0.01, "rss_mib": 10, "pss_mib": 9, "workers_rss_mib": 0, "processes": 1}],
        },
        "cold_starts": {
            "command": "python -m app.serve",
            "runs": [{"ready_s": t, "rss_mib": 130} for t in (1.6, 1.4, 1.5)],
        },  # fmt: skip  # noqa: E501
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gib": 24.0,
            "kernel": "6.1",
            "load_before": "1",
            "load_after": "1",
        },  # fmt: skip  # noqa: E501
        "versions": {"Python": "3.11.7"},
        "settings": {
            "n_estimators": 300,
            "max_depth": 15,
            "run_name": "optimized",
            "model_uri": "models:/iris-classifier/1",
            "duration_s": 10.0,
            "warmup_s": 2.0,
            "rounds": 3,
            "pinning": "Servers pinned to CPU 0, wrk to CPU 1.",
            "server_cpus": "0",
            "wrk_cpu": "1",
            "wrk_example": "taskset -c 1 wrk ...",
        },
        "command": "npm run bench",
    }


def test_stats_median_range_and_spread():
    st = report.stats([3.0, 1.0, 2.5])
    assert (st["median"], st["min"], st["max"], st["n"]) == (2.5, 1.0, 3.0, 3)
    assert st["spread"] == 3.0
    assert report.stats([]) is None
    assert report.stats([0.0, 1.0])["spread"] == float("inf")


def test_ratios_are_taken_per_round(results):
    ratios = report.round_ratios(results, "row-c32", "serving", "mlflow")
    assert ratios == pytest.approx([50.0, 110.0, 18.0])
    st = report.ratio_stats(results, "row-c32", "serving", "mlflow")
    assert st["median"] == pytest.approx(50.0) and st["spread"] == pytest.approx(110 / 18)
    # without per-round data: the ratio of the medians
    del results["rounds"]
    assert report.round_ratios(results, "row-c32", "serving", "floor") == pytest.approx([1000 / 1100])


def test_a_failed_round_is_left_out_of_the_ratios(results):
    results["rounds"]["mlflow"][1] = {sc["key"]: {"failed": "exited with 1"} for sc in SCENARIOS}
    assert report.round_ratios(results, "row-c1", "serving", "mlflow") == pytest.approx([50.0, 18.0])


def test_ratio_table_with_every_peer_and_the_spread_called_out(results):
    section = report.render_section(results, plot_name=None)
    header = (
        "| scenario | serving / FastAPI floor | serving / Go floor | serving / MLServer | serving / KServe "
        "| serving / mlflow models serve |"
    )
    assert header in section
    assert "| 1 row, c=32 | 91% (90-96%) | 20% (18-22%) | 44.0x (40.9-50.0x) | 91.7x (81.8-100.0x) " in section
    assert "50.0x (18.0-110.0x) **spread 6.1x** |" in section
    assert "**Ratios that moved more than 2x between rounds**" in section
    assert "serving / mlflow models serve at 1 row, c=32 (18.00-110.00, 6.1x between rounds)" in section
    assert "the median of the 3 rounds' ratios" in section


def test_protocol_paths_against_predict(results):
    section = report.render_section(results, plot_name=None)
    assert "| scenario | V2 `/v2/models/<name>/infer` / `/predict` | MLflow `/invocations` (dataframe_split) / `/predict` |" in section  # fmt: skip  # noqa: E501
    assert "| 1 row, c=1 | 95% (91-98%) | 94% (80-95%) |" in section
    rows = target_rows(section)
    assert rows["V2 `/v2/models/<name>/infer` requests/s / `/predict`, lowest scenario"] == ("95% (1 row, c=1)", "**met**")  # fmt: skip  # noqa: E501
    name = "MLflow `/invocations` (dataframe_split) requests/s / `/predict`, lowest scenario"
    assert rows[name] == ("94% (1 row, c=1)", "**met**")
    results["rounds"]["serving-invocations"][0]["row-c32"]["rps"] = 100
    results["rounds"]["serving-invocations"][2]["row-c32"]["rps"] = 100
    assert target_rows(report.render_section(results, plot_name=None))[name] == ("11% (1 row, c=32)", "**not met**")


def test_issue_targets(results):
    rows = target_rows(report.render_section(results, plot_name=None))
    assert rows["single-row requests/s at c=32, serving / FastAPI floor"] == ("91%", "**met**")
    assert rows["100-row requests/s at c=8, serving / FastAPI floor"] == ("90%", "**met**")
    assert rows["serving start -> /ready 200 (`python -m app.serve`, model present; median)"] == ("1.50 s", "**met**")
    assert rows["serving RSS after load, supervisor + 2 workers (median)"] == ("145 MiB", "**met**")
    results["cold_starts"]["runs"] = [{"ready_s": 1.6, "rss_mib": 1}]
    results["starts"]["serving"][0]["rss_mib"] = 151
    results["starts"]["serving"][1]["rss_mib"] = 170
    rows = target_rows(report.render_section(results, plot_name=None))
    assert rows["serving start -> /ready 200 (`python -m app.serve`, model present; median)"] == ("1.60 s", "**not met**")  # fmt: skip  # noqa: E501
    assert rows["serving RSS after load, supervisor + 2 workers (median)"] == ("160 MiB", "**not met**")
    del results["cold_starts"], results["starts"]
    rows = target_rows(report.render_section(results, plot_name=None))
    assert rows["serving RSS after load, supervisor + 2 workers (median)"] == ("not measured", "n/a")


def test_load_table_shows_ranges_of_throughput_and_p99(results):
    results["rounds"]["serving"][0]["row-c1"]["p99_ms"] = 3.0
    results["load"]["serving"]["row-c1"] = report.combine_rounds([r["row-c1"] for r in results["rounds"]["serving"]])
    section = report.render_section(results, plot_name=None)
    assert "| 1 row, c=1 | serving app | 1,000 (900-1,100) | 0.50 | 1.00 (1.00-3.00) | 0 | 30,000 |" in section
    assert "| 1 row, c=32 | mlflow models serve | 20 (10-50) **spread** |" in section


def test_workers_starts_and_the_batch_explanation(results):
    section = report.render_section(results, plot_name=None)
    assert "### Where the CPU went (per process, each round)" in section
    assert "| 100 rows, c=8 | serving app | 500: conns 4/4, CPU 50/50%; 300: conns 8, CPU 97/3%; 450: " in section
    assert "Rounds where one worker held 75% or more of wrk's connections or used 65% or more of the CPU: 1 " in section
    assert "(median 300 req/s); the others: 2 (median 475 req/s)" in section
    assert "no SO_REUSEPORT" in section and "pinned to one CPU" in section
    assert "Context switches per request: serving 0.20 at 100 rows, c=8" in section
    assert "FastAPI floor 0.20 at 100 rows, c=8" in section
    assert "### Start and memory" in section
    assert "| serving app, cold starts (`python -m app.serve`, not pinned) | 3 | 1.50 (1.40-1.60) |" in section
    assert "| serving app | 3 | 1.30 (1.20-1.40) | 145 (140-160) | 116 (112-128) | 102 (98-112) | 3 |" in section
    assert "| Go floor | 1 | 0.01 | 10 | 0 | 9 | 1 |" in section


def test_plot_with_every_peer(tmp_path, results):
    path = tmp_path / "b.png"
    report.write_plot(results, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_thread_hop_sentence_follows_the_numbers(results):
    assert "so by this measure it is small." in "\n".join(report.balance_notes(results))
    for r in results["rounds"]["serving"]:
        r["batch-c8"]["procs"]["ctxsw_per_request"] = 2.2
    notes = "\n".join(report.balance_notes(results))
    assert "serving 2.20 at 100 rows, c=8" in notes
    assert "the 2.0 extra switches per request over the floor are that hop." in notes
    del results["rounds"]["floor"]
    assert "run_in_threadpool)." in "\n".join(report.balance_notes(results))


def test_protocol_ratios_come_from_the_parity_cycles_when_the_run_made_them(results):
    """Short alternating runs (bench/run.py, parity_cycles) replace the load runs' per-round ratios."""
    cycles = [0.90, 0.95, 0.92, 0.97, 0.91, 0.93]
    results["parity"] = {
        "slices": 2,
        "seconds": 2.0,
        "ratios": {
            sc["key"]: {"serving-v2": cycles, "serving-invocations": [1.0, 1.02, 0.99, 0.98, 1.01, 1.0]}
            for sc in SCENARIOS
        },
    }
    results["parity"]["ratios"]["batch-c8"]["serving-v2"] = [0.80, 0.85, 0.84, 0.86, 0.81, 0.83]
    section = report.render_section(results, plot_name=None)
    assert "2 cycles per round of 2 s runs of each path in turn" in section
    assert "the median of the 6 cycles' ratios" in section
    assert "| 1 row, c=1 | 92% (90-97%) | 100% (98-102%) |" in section
    rows = target_rows(section)
    name = "V2 `/v2/models/<name>/infer` requests/s / `/predict`, lowest scenario"
    assert rows[name] == ("84% (100 rows, c=8)", "**not met**")
    # a cycle spread over 2x is flagged like a round's
    results["parity"]["ratios"]["row-c32"]["serving-invocations"] = [0.4, 1.0, 1.0]
    section = report.render_section(results, plot_name=None)
    assert "MLflow `/invocations` (dataframe_split) / /predict at 1 row, c=32 (0.40-1.00, 2.5x between cycles)" in section  # fmt: skip  # noqa: E501
    assert "**Ratios that moved more than 2x between rounds (the protocol paths: cycles)**" in section
    # without cycles for a path, its ratios are the rounds' again, and the cell says so
    del results["parity"]["ratios"]["row-c1"]["serving-v2"]
    section = report.render_section(results, plot_name=None)
    assert "| 1 row, c=1 | 95% (91-98%) (load runs: no parity cycle) | 100% (98-102%) |" in section
    # one round with cycles still gets its cycles' spreads checked
    results["settings"]["rounds"] = 1
    assert "2.5x between cycles" in report.render_section(results, plot_name=None)
