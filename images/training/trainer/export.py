"""Export of a promoted model to the shared models volume (no MLflow needed to read it back).

Layout (docs/interfaces.md)::

    <models_dir>/<model_name>/versions/<dir>/model.npz       compiled forest, numpy arrays (what serving reads)
    <models_dir>/<model_name>/versions/<dir>/model.joblib    the fitted scikit-learn estimator
    <models_dir>/<model_name>/versions/<dir>/metadata.json   format, sha256 of both files, names, metrics
    <models_dir>/<model_name>/current.json   {"dir", "version", "run_id", "published_at"}

A version directory is written completely under a hidden temporary name (``.tmp-...``) in the
same ``versions/`` directory, fsynced, and renamed into place; only then is ``current.json``
replaced atomically (temp file in the same directory, fsync, ``os.replace``). A reader that
follows ``current.json`` therefore never sees half a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import sklearn

from trainer.forest_npz import DEFAULT_TABLE_MAX_CELLS, NPZ_FILE, NPZ_FORMAT, compile_model, npz_bytes

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
POINTER_FILE = "current.json"
VERSIONS_DIR = "versions"
FORMAT = NPZ_FORMAT

# Keys the caller must supply; format, name, sklearn_version and created_at are filled in.
REQUIRED_METADATA_KEYS = ("version", "run_id", "run_name", "params", "metrics", "feature_names", "class_names")
POINTER_KEYS = ("dir", "version", "run_id", "published_at")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_name(field: str, value: object) -> str:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not _SAFE_NAME.match(text):
        raise ValueError(
            f"{field} must be 1-128 characters of letters, digits, '.', '_' or '-' "
            f"(not starting with a separator), got {value!r}"
        )
    return text


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def make_metadata(result: Any, *, version: str | int, run_id: str, run_name: str, name: str | None = None) -> dict:
    """metadata.json content for a ``trainer.model.TrainResult`` (duck-typed)."""
    meta = {
        "version": str(version),
        "run_id": run_id,
        "run_name": run_name,
        "params": dict(result.params),
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "feature_names": list(result.feature_names),
        "class_names": list(result.class_names),
    }
    if name is not None:
        meta["name"] = name
    return meta


def _file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def publish_model(
    models_dir: str | os.PathLike,
    model_name: str,
    model: Any,
    metadata: dict,
    *,
    table_max_cells: int = DEFAULT_TABLE_MAX_CELLS,
) -> Path:
    """Write a model and its metadata as a new version directory and point current.json at it.

    The forest is compiled to model.npz (trainer/forest_npz.py; with a decision-region table when
    it has at most ``table_max_cells`` cells) beside model.joblib. Returns the path of the new
    version directory. Raises ValueError naming the key when the metadata is incomplete or a name
    is unsafe for a path, ``forest_npz.UnsupportedModel`` for a model that is not a tree ensemble.
    """
    model_name = _check_name("model_name", model_name)
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    missing = [k for k in REQUIRED_METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"metadata is missing required key(s) {missing}; required: {list(REQUIRED_METADATA_KEYS)}")
    version = _check_name("metadata['version']", metadata["version"])
    arrays, compiled = compile_model(model, table_max_cells=table_max_cells)
    npz = npz_bytes(arrays)
    pickled = io.BytesIO()
    joblib.dump(model, pickled)
    joblib_data = pickled.getvalue()

    meta = dict(metadata)
    meta["version"] = version
    meta["format"] = FORMAT
    meta["files"] = {NPZ_FILE: _file_entry(npz), MODEL_FILE: {**_file_entry(joblib_data), "format": "sklearn-joblib"}}
    meta["compiled"] = compiled
    meta.setdefault("name", model_name)
    meta.setdefault("sklearn_version", sklearn.__version__)
    meta.setdefault("created_at", _utc_now())

    root = Path(models_dir) / model_name
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dir_name = f"v{version}-{stamp}-{secrets.token_hex(3)}"
    tmp = versions / f".tmp-{dir_name}"
    final = versions / dir_name
    tmp.mkdir()
    try:
        _write_file(tmp / NPZ_FILE, npz)
        _write_file(tmp / MODEL_FILE, joblib_data)
        _write_file(tmp / METADATA_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    pointer = {"dir": dir_name, "version": version, "run_id": meta["run_id"], "published_at": _utc_now()}
    write_pointer(root, pointer)
    return final


def write_pointer(model_root: str | os.PathLike, pointer: dict) -> None:
    """Atomically replace ``<model_root>/current.json`` (temp file, fsync, os.replace)."""
    root = Path(model_root)
    missing = [k for k in POINTER_KEYS if k not in pointer]
    if missing:
        raise ValueError(f"pointer is missing key(s) {missing}; required: {list(POINTER_KEYS)}")
    tmp = root / f".{POINTER_FILE}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    try:
        _write_file(tmp, (json.dumps(pointer, sort_keys=True) + "\n").encode())
        os.replace(tmp, root / POINTER_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def read_current(models_dir: str | os.PathLike, model_name: str) -> dict | None:
    """The parsed current.json plus ``"path"`` (the version directory), or None when none is published.

    Raises ValueError when the pointer is not valid JSON, lacks a key, or names a directory that
    does not exist.
    """
    model_name = _check_name("model_name", model_name)
    root = Path(models_dir) / model_name
    path = root / POINTER_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        pointer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(pointer, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(pointer).__name__}")
    missing = [k for k in POINTER_KEYS if k not in pointer]
    if missing:
        raise ValueError(f"{path} is missing key(s) {missing}")
    dir_name = pointer["dir"]
    if not isinstance(dir_name, str) or not _SAFE_NAME.match(dir_name):
        raise ValueError(f"{path}: 'dir' must be a plain directory name, got {dir_name!r}")
    version_dir = root / VERSIONS_DIR / dir_name
    if not version_dir.is_dir():
        raise ValueError(f"{path} points at {version_dir}, which does not exist")
    return {**pointer, "path": version_dir}


def load_version(version_dir: str | os.PathLike) -> tuple[Any, dict]:
    """Load ``model.joblib`` (the scikit-learn estimator) and ``metadata.json`` from a version directory."""
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{version_dir / METADATA_FILE}: format must be {FORMAT!r}, got {metadata.get('format')!r}")
    model = joblib.load(version_dir / MODEL_FILE)
    return model, metadata
