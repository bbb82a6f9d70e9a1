"""Hot reload in one process: a newly published model is picked up; a broken one is refused and logged."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading

import numpy as np
import pytest
import sklearn
from serving_helpers import GUIDE_REQUEST, metric_value, rewrite_npz, wait_for
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from trainer.forest_npz import compile_model

from app.model import ModelError, ModelHolder, load_model


def served_version(client) -> str | None:
    resp = client.get("/model")
    return resp.json()["version"] if resp.status_code == 200 else None


def refusals(client) -> float:
    return metric_value(client.get("/metrics").text, "serving_model_reloads_total", result="refused") or 0


def test_new_model_is_picked_up_within_the_interval(client, publish, trained):
    assert served_version(client) == "1"
    publish(trained["big"], 2)
    wait_for(lambda: served_version(client) == "2", timeout=5, what="version 2 to be served")
    body = client.post("/predict", json=GUIDE_REQUEST).json()
    assert body["model_version"] == "2"
    expected = trained["big"].model.predict_proba(np.array([GUIDE_REQUEST["features"]]))[0]
    assert list(body["probabilities"].values()) == pytest.approx(expected.tolist())
    text = client.get("/metrics").text
    assert metric_value(text, "serving_model_info", version="2", run_id="run-2") == 1
    assert metric_value(text, "serving_model_info", version="1", run_id="run-1") == 0
    assert metric_value(text, "serving_model_reloads_total", result="loaded") == 2


def truncate_model(d):
    path = d / "model.npz"
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])


def empty_model(d):
    (d / "model.npz").write_bytes(b"")


def remove_model(d):
    (d / "model.npz").unlink()


def garbage_metadata(d):
    (d / "metadata.json").write_text("{not json")


def edit_metadata(**changes):
    def damage(d):
        meta = json.loads((d / "metadata.json").read_text())
        meta.update(changes)
        (d / "metadata.json").write_text(json.dumps(meta))

    return damage


def compiled_forest(n_features, n_classes):
    """A real forest on other data, compiled by the trainer: model.npz of another shape."""

    def damage(d):
        rng = np.random.default_rng(0)
        model = RandomForestClassifier(n_estimators=3, random_state=0)
        model.fit(rng.random((30, n_features)), np.arange(30) % n_classes)
        rewrite_npz(d, lambda _: compile_model(model)[0])

    return damage


def pickled_object(d):
    rewrite_npz(d, lambda a: {**a, "value": np.array([{"code": "runs on load"}], dtype=object)})


def drop_arrays(d):
    rewrite_npz(d, lambda a: {k: v for k, v in a.items() if k not in ("left", "threshold")})


def table_disagrees(d):
    rewrite_npz(d, lambda a: {**a, "table_values": np.ascontiguousarray(a["table_values"][:, ::-1])})


def child_out_of_range(d):
    rewrite_npz(d, lambda a: {**a, "left": np.where(a["left"] == 1, len(a["left"]) + 5, a["left"]).astype(np.int32)})


def loop_to_root(d):
    """An inner node below the root gets the root as its right child: a cycle, not a tree."""

    def change(a):
        right = a["right"].copy()
        inner = [i for i in range(1, len(right)) if a["left"][i] != i]
        right[inner[0]] = 0
        return {**a, "right": right}

    rewrite_npz(d, change)


def vector_for_a_scalar(d):
    rewrite_npz(d, lambda a: {**a, "n_features": np.array([4, 4])})


def too_shallow(d):
    rewrite_npz(d, lambda a: {**a, "max_depth": a["max_depth"] - 1})


DAMAGES = {
    "truncated-model": (truncate_model, "does not match metadata.json's"),
    "empty-model": (empty_model, "does not match metadata.json's"),
    "missing-model": (remove_model, "model.npz is missing"),
    "metadata-not-json": (garbage_metadata, "not readable JSON"),
    "metadata-wrong-format": (edit_metadata(format="onnx"), "'format' must be"),
    "metadata-earlier-trainer": (edit_metadata(format="sklearn-joblib"), "train again to export it"),
    "metadata-no-checksum": (edit_metadata(files={}), "'files' must give the sha256 of model.npz"),
    "metadata-5-features": (edit_metadata(feature_names=["a", "b", "c", "d", "e"]), "must name 4 features"),
    "metadata-2-classes": (edit_metadata(class_names=["setosa", "versicolor"]), "do not match"),
    "metadata-other-version": (edit_metadata(version="99"), "does not match"),
    "model-takes-3-features": (compiled_forest(3, 3), "takes 3 features"),
    "model-has-2-classes": (compiled_forest(4, 2), "do not match"),
    "npz-holds-a-pickle": (pickled_object, "could not be loaded"),
    "npz-lacks-arrays": (drop_arrays, "['left', 'threshold'] are missing"),
    "table-disagrees-with-trees": (table_disagrees, "disagrees with the trees"),
    "child-out-of-range": (child_out_of_range, "indexes outside"),
    "node-loops-to-root": (loop_to_root, "do not form trees"),
    "depth-understated": (too_shallow, "deeper than max_depth"),
    "vector-for-a-scalar": (vector_for_a_scalar, "could not be loaded"),
}


@pytest.mark.parametrize(("damage", "reason"), DAMAGES.values(), ids=DAMAGES.keys())
def test_broken_model_is_refused_logged_and_the_old_one_keeps_serving(
    client, publish, publish_broken, trained, models_dir, caplog, damage, reason
):
    good = models_dir / "iris-classifier" / "versions"
    good_dir = next(good.iterdir())
    caplog.set_level(logging.ERROR, logger="app.model")
    publish_broken(good_dir, 2, damage)
    wait_for(lambda: refusals(client) == 1, timeout=5, what="the broken model to be refused")
    refused = [r.getMessage() for r in caplog.records if "refused model 2" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]
    assert reason in refused[0]
    assert "still serving version 1" in refused[0]
    assert served_version(client) == "1"
    assert client.get("/ready").json() == {"ready": True, "model_version": "1"}
    resp = client.post("/predict", json=GUIDE_REQUEST)
    assert resp.status_code == 200
    assert resp.json()["model_version"] == "1"

    # The next good model is still picked up after a refusal.
    publish(trained["big"], 3)
    wait_for(lambda: served_version(client) == "3", timeout=5, what="version 3 after the refusal")
    assert refusals(client) == 1  # the broken pointer was not retried


@pytest.mark.parametrize(
    "pointer",
    [b"{half", b"[]", json.dumps({"dir": "../../etc", "version": "2"}).encode(), json.dumps({"dir": "x"}).encode()],
    ids=["not-json", "not-object", "dir-escapes", "no-version"],
)
def test_bad_pointer_is_refused(client, models_dir, pointer):
    (models_dir / "iris-classifier" / "current.json").write_bytes(pointer)
    wait_for(lambda: refusals(client) == 1, timeout=5, what="the bad pointer to be refused")
    assert served_version(client) == "1"
    assert client.post("/predict", json=GUIDE_REQUEST).status_code == 200


def test_holder_load_outcomes(models_dir, publish, publish_broken, trained):
    holder = ModelHolder(models_dir, "iris-classifier")
    assert holder.load().status == "none"
    assert not holder.ready
    first = publish(trained["small"], 1)
    outcome = holder.load()
    assert outcome.status == "loaded"
    assert holder.ready
    assert holder.current.version == "1"
    assert holder.load().status == "unchanged"
    publish_broken(first, 2, truncate_model)
    refused = holder.load()
    assert refused.status == "refused"
    assert "does not match metadata.json's" in refused.reason
    assert holder.current is outcome.model  # untouched
    assert holder.load().status == "unchanged"  # not retried until current.json changes
    model, proba = holder.predict(np.array([GUIDE_REQUEST["features"]]))
    assert model.version == "1"
    assert proba.shape == (1, 3)


def test_holder_never_writes_into_models_dir(models_dir, publish, publish_broken, trained):
    publish(trained["small"], 1)

    def snapshot():
        return sorted((str(p.relative_to(models_dir)), p.stat().st_mtime_ns) for p in models_dir.rglob("*"))

    before = snapshot()
    holder = ModelHolder(models_dir, "iris-classifier")
    holder.load()
    holder.predict(np.array([GUIDE_REQUEST["features"]]))
    assert snapshot() == before


def test_current_sklearn_version_is_what_the_trainer_records(models_dir, publish, trained):
    version_dir = publish(trained["small"], 1)
    assert json.loads((version_dir / "metadata.json").read_text())["sklearn_version"] == sklearn.__version__


def test_a_request_in_flight_during_the_swap_is_answered_wholly_by_the_old_model(client, publish, trained):
    """Deterministic: hold a request inside the old model, swap, release; the answer is all old."""
    app = client.app
    holder = app.state.holder
    old = holder.current
    entered, release = threading.Event(), threading.Event()

    def held_proba(rows):
        entered.set()
        assert release.wait(timeout=10)
        return old.proba(rows)

    # Same model, but held mid-prediction (an unknown inference path runs in a worker thread).
    holder._current = dataclasses.replace(old, proba=held_proba, inference="held")
    answer: dict = {}
    request = threading.Thread(target=lambda: answer.update(r=client.post("/predict", json=GUIDE_REQUEST)))
    request.start()
    try:
        assert entered.wait(timeout=10)
        publish(trained["big"], 2)
        # The swap, while the request is inside the old model (by this call or the reload loop,
        # whichever takes the holder's lock first; either way it is done when load() returns).
        holder.load()
        assert holder.current.version == "2"
    finally:
        release.set()
        request.join(timeout=10)
    body = answer["r"].json()
    assert body["model_version"] == "1"
    expected = trained["small"].model.predict_proba(np.array([GUIDE_REQUEST["features"]]))[0]
    assert list(body["probabilities"].values()) == pytest.approx(expected.tolist())
    assert client.post("/predict", json=GUIDE_REQUEST).json()["model_version"] == "2"


def test_fresh_worker_meeting_a_broken_model_serves_the_newest_earlier_good_one(
    models_dir, make_client, publish, publish_broken, trained
):
    publish(trained["small"], 1)
    second = publish(trained["big"], 2)
    publish_broken(second, 3, truncate_model)
    client = make_client()  # starts after v3 was published, like a restarted worker
    assert client.get("/ready").json() == {"ready": True, "model_version": "2"}
    info = client.get("/model").json()
    assert info["version"] == "2"
    assert info["fallback"] is True
    text = client.get("/metrics").text
    assert metric_value(text, "serving_model_reloads_total", result="refused") == 1
    assert metric_value(text, "serving_model_info", version="2", run_id="run-2") == 1
    # The next good publication replaces the fallback as usual.
    publish(trained["small"], 4)
    wait_for(lambda: served_version(client) == "4", timeout=5, what="version 4")
    assert client.get("/model").json()["fallback"] is False


def test_holder_fallback_skips_broken_earlier_versions_and_gives_up_cleanly(
    models_dir, publish, publish_broken, trained
):
    first = publish(trained["small"], 1)
    publish_broken(first, 2, garbage_metadata)
    publish_broken(first, 3, truncate_model)
    publish_broken(first, 4, remove_model)
    holder = ModelHolder(models_dir, "iris-classifier")
    outcome = holder.load()
    assert outcome.status == "refused"
    assert holder.current is not None and holder.current.version == "1"

    truncate_model(first)  # now no version loads: a fresh holder stays not ready
    fresh = ModelHolder(models_dir, "iris-classifier")
    assert fresh.load().status == "refused"
    assert not fresh.ready
    assert holder.current.version == "1"  # a loaded model is never dropped


def test_an_unexpected_error_while_checking_is_logged_and_retried(monkeypatch, make_client, publish, trained, caplog):
    publish(trained["small"], 1)
    real_load = ModelHolder.load
    calls = []

    def flaky_load(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return real_load(self)

    monkeypatch.setattr(ModelHolder, "load", flaky_load)
    caplog.set_level(logging.ERROR, logger="app")
    client = make_client()  # the first check (in lifespan) fails: the app still starts
    assert client.get("/health").status_code == 200
    wait_for(lambda: served_version(client) == "1", timeout=5, what="the retry to load version 1")
    assert any("model reload check failed" in r.getMessage() for r in caplog.records)


def test_load_model_is_the_servers_inference_path(models_dir, publish, trained):
    version_dir = publish(trained["big"], 7)
    model = load_model(version_dir)
    assert model.version == "7"
    iris = load_iris()
    np.testing.assert_allclose(model.predict_proba(iris.data), trained["big"].model.predict_proba(iris.data), atol=1e-9)
    holder = ModelHolder(models_dir, "iris-classifier")
    holder.load()
    assert holder.current.inference == model.inference
    with pytest.raises(ModelError, match="is missing"):
        load_model(models_dir / "nowhere")
