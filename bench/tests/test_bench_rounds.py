"""The benchmark's plan: interleaved rounds, CPU pinning, the endpoint selection, the protocols' bodies."""

from __future__ import annotations

import pytest

from bench import run


def test_rounds_interleave_every_server():
    order = run.schedule(["serving", "floor", "mlflow"], 3)
    assert [key for _, key in order] == ["serving", "floor", "mlflow"] * 3
    assert [n for n, _ in order] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert run.schedule(["serving"], 1) == [(1, "serving")]


def test_default_round_order_and_rounds():
    assert run.SERVER_ORDER[0] == "serving"
    args = run.parse_args([])
    assert args.rounds == 3 and args.pin == "auto"
    assert args.servers == list(run.ENDPOINT_KEYS)
    assert (args.parity_slices, args.parity_seconds) == (4, 2)


@pytest.mark.parametrize("argv", [["--parity-slices", "-1"], ["--parity-seconds", "0"], ["--parity-seconds", "0.5"]])
def test_parity_options_out_of_range_are_refused(argv):
    with pytest.raises(SystemExit):
        run.parse_args(argv)


@pytest.mark.parametrize(
    ("spec", "cores", "taskset", "servers", "wrk_cpu"),
    [
        ("auto", 2, True, "0", "1"),
        ("auto", 4, True, "0-2", "3"),
        ("auto", 1, True, None, None),
        ("auto", 2, False, None, None),
        ("none", 8, True, None, None),
        ("0-1:3", 4, True, "0-1", "3"),
    ],
)
def test_pinning_plan(spec, cores, taskset, servers, wrk_cpu):
    got_servers, got_wrk, sentence = run.plan_pinning(spec, cores, taskset)
    assert (got_servers, got_wrk) == (servers, wrk_cpu)
    assert ("pinned to CPU" in sentence) == (servers is not None)
    if servers is None and spec != "none":
        assert "no taskset" in sentence or "single CPU" in sentence


def test_pinning_spec_is_checked():
    with pytest.raises(ValueError, match="SERVER_CPUS:WRK_CPUS"):
        run.plan_pinning("0", 2, True)
    with pytest.raises(SystemExit):
        run.parse_args(["--pin", "bogus"])
    assert run.cpu_count("0") == 1 and run.cpu_count("0-2") == 3 and run.cpu_count("0,2-3") == 3


def test_unknown_server_is_refused(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--servers", "serving,nginx"])
    assert "unknown nginx" in capsys.readouterr().err


def test_select_keeps_predict_and_drops_empty_servers(tmp_path):
    def server(key, *endpoints):
        eps = [run.Endpoint(e, e, "/", run.project_body, run.check_project) for e in endpoints]
        return run.Server(key, key, ["true"], tmp_path, {}, "/", eps)

    specs = [server("serving", "serving", "serving-v2", "serving-invocations"), server("floor", "floor")]
    kept = run.select(specs, ["serving-v2"])
    assert [s.key for s in kept] == ["serving"]
    assert [e.key for e in kept[0].endpoints] == ["serving", "serving-v2"]


def test_serving_command_override():
    assert run.serving_argv(None, 8000, "/venv/bin/python") == ["/venv/bin/python", "-m", "app.serve"]
    argv = run.serving_argv("{python} -m granian --host {host} --port {port} --workers {workers} app.main:app", 9, "/p")
    assert argv == ["/p", "-m", "granian", "--host", "127.0.0.1", "--port", "9", "--workers", "2",
                    "app.main:app"]  # fmt: skip


def test_protocol_bodies_and_checks():
    rows = [[5.1, 3.5, 1.4, 0.2], [6.5, 3.0, 5.5, 1.8]]
    v2 = run.v2_body(rows)["inputs"][0]
    assert (v2["shape"], v2["datatype"], v2["data"][:5]) == ([2, 4], "FP64", [5.1, 3.5, 1.4, 0.2, 6.5])
    assert run.dataframe_split_body(rows)["dataframe_split"]["data"] == rows
    assert run.v1_body(rows) == {"instances": rows}
    mlserver = {"outputs": [{"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [0, 2]}]}
    kserve_v2 = {"outputs": [{"name": "output-0", "shape": [2], "datatype": "INT64", "data": [0, 2]}]}
    serving_v2 = {"outputs": [{"name": "predict", "data": [0, 2]}, {"name": "predict_proba", "data": [1.0] * 6}]}
    for answer in (mlserver, kserve_v2, serving_v2):
        assert run.check_v2(answer, 2) is None
    assert "class 0" in run.check_v2({"outputs": [{"name": "predict", "data": [1, 2]}]}, 2)
    assert "expected 2" in run.check_v2({"outputs": [{"name": "predict", "data": [0]}]}, 2)
    assert run.check_mlflow({"predictions": [0, 2]}, 2) is None


def test_a_servers_paths_rotate_from_round_to_round():
    eps = [run.Endpoint(k, k, "/" + k, run.project_body, run.check_project) for k in ("a", "b", "c")]
    orders = [[e.key for e in run.endpoint_order(eps, n)] for n in (1, 2, 3, 4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert run.endpoint_order([], 1) == []
