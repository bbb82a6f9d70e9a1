import hashlib
import json
import threading
import time

import pytest
from sklearn.linear_model import LogisticRegression

from trainer import export
from trainer.export import (
    POINTER_FILE,
    load_version,
    make_metadata,
    publish_model,
    read_current,
)
from trainer.forest_npz import UnsupportedModel
from trainer.model import train_model


@pytest.fixture(scope="module")
def trained():
    return train_model(10, 3)


def _meta(result, version="1", run_id="abc123"):
    return make_metadata(result, version=version, run_id=run_id, run_name="unit")


def test_publish_writes_version_and_pointer(tmp_path, trained):
    version_dir = publish_model(tmp_path, "iris-classifier", trained.model, _meta(trained))
    assert version_dir.parent == tmp_path / "iris-classifier" / "versions"
    assert version_dir.name.startswith("v1-")
    meta = json.loads((version_dir / "metadata.json").read_text())
    for key in (
        "version",
        "run_id",
        "run_name",
        "params",
        "metrics",
        "feature_names",
        "class_names",
        "sklearn_version",
        "format",
        "created_at",
        "name",
    ):
        assert key in meta, key
    assert meta["format"] == "forest-npz-v1"
    for name in ("model.npz", "model.joblib"):
        data = (version_dir / name).read_bytes()
        assert meta["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["files"][name]["bytes"] == len(data)
    assert meta["files"]["model.joblib"]["format"] == "sklearn-joblib"
    assert meta["compiled"]["table"] is True and meta["compiled"]["n_trees"] == 10
    assert meta["name"] == "iris-classifier"
    assert meta["version"] == "1"
    assert meta["metrics"] == trained.metrics

    pointer = json.loads((tmp_path / "iris-classifier" / POINTER_FILE).read_text())
    assert set(pointer) == {"dir", "version", "run_id", "published_at"}
    assert pointer["dir"] == version_dir.name
    assert pointer["version"] == "1"
    assert pointer["run_id"] == "abc123"
    assert pointer["published_at"].endswith("Z")

    current = read_current(tmp_path, "iris-classifier")
    assert current["path"] == version_dir
    model, meta2 = load_version(current["path"])
    assert meta2 == meta
    assert (model.predict(trained.X_test) == trained.model.predict(trained.X_test)).all()
    # Nothing temporary is left behind.
    leftovers = [p.name for p in (tmp_path / "iris-classifier").rglob(".*")]
    assert leftovers == []


def test_republish_moves_pointer_and_keeps_old_version(tmp_path, trained):
    first = publish_model(tmp_path, "m", trained.model, _meta(trained, "1"))
    second = publish_model(tmp_path, "m", trained.model, _meta(trained, "2", "def"))
    assert first != second and first.is_dir() and second.is_dir()
    current = read_current(tmp_path, "m")
    assert (current["version"], current["run_id"], current["path"]) == ("2", "def", second)


def test_read_current_without_a_model(tmp_path):
    assert read_current(tmp_path, "iris-classifier") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"dir": "x"}', "missing key"),
        ('{"dir": "../../etc", "version": "1", "run_id": "r", "published_at": "t"}', "plain directory name"),
        ('{"dir": "v9-gone", "version": "1", "run_id": "r", "published_at": "t"}', "does not exist"),
    ],
)
def test_read_current_rejects_bad_pointers(tmp_path, content, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / POINTER_FILE).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_current(tmp_path, "m")


def test_publish_rejects_incomplete_metadata_and_unsafe_names(tmp_path, trained):
    with pytest.raises(ValueError, match="run_id"):
        publish_model(tmp_path, "m", trained.model, {"version": "1"})
    with pytest.raises(ValueError, match="model_name"):
        publish_model(tmp_path, "../escape", trained.model, _meta(trained))
    with pytest.raises(ValueError, match=r"metadata\['version'\]"):
        publish_model(tmp_path, "m", trained.model, _meta(trained, version="1/../../x"))
    assert not (tmp_path / "m" / POINTER_FILE).exists()


def test_failed_write_leaves_no_version_and_keeps_pointer(tmp_path, trained, monkeypatch):
    good = publish_model(tmp_path, "m", trained.model, _meta(trained, "1"))
    real_write = export._write_file

    def disk_full_at_the_second_file(path, data):
        if path.name == "model.joblib":
            raise OSError("No space left on device")
        real_write(path, data)

    monkeypatch.setattr(export, "_write_file", disk_full_at_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        publish_model(tmp_path, "m", trained.model, _meta(trained, "2"))
    assert sorted(p.name for p in (tmp_path / "m" / "versions").iterdir()) == [good.name]
    assert read_current(tmp_path, "m")["path"] == good


def test_a_model_serving_cannot_read_is_refused_before_anything_is_written(tmp_path, trained):
    linear = LogisticRegression(max_iter=300).fit(trained.X_train, trained.y_train)
    with pytest.raises(UnsupportedModel, match="LogisticRegression"):
        publish_model(tmp_path, "m", linear, _meta(trained, "1"))
    assert not (tmp_path / "m" / POINTER_FILE).exists()
    assert list((tmp_path / "m").rglob("*.npz")) == []


def test_readers_never_see_a_partial_model(tmp_path, trained):
    """A reader polling current.json while models are published always loads a complete one."""
    publish_model(tmp_path, "m", trained.model, _meta(trained, "0"))
    last = "15"
    first_read = threading.Event()
    errors: list[BaseException] = []
    seen: list[str] = []

    def reader():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                current = read_current(tmp_path, "m")
                model, meta = load_version(current["path"])
                assert meta["version"] == current["version"]
                model.predict(trained.X_test[:1])
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return
            seen.append(meta["version"])
            first_read.set()
            if meta["version"] == last:
                return

    thread = threading.Thread(target=reader)
    thread.start()
    assert first_read.wait(timeout=30)
    for i in range(1, int(last) + 1):
        publish_model(tmp_path, "m", trained.model, _meta(trained, str(i)))
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert seen[0] in ("0", "1") and seen[-1] == last
    # Versions only move forward.
    assert [int(v) for v in seen] == sorted(int(v) for v in seen)
