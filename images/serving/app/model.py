"""The model holder: finds the published model on the shared volume, checks it, and swaps it in.

Layout (docs/interfaces.md)::

    <models_dir>/<model_name>/current.json          {"dir", "version", "run_id", "published_at"}
    <models_dir>/<model_name>/versions/<dir>/model.joblib
    <models_dir>/<model_name>/versions/<dir>/metadata.json

The holder never writes into models_dir. A new model is loaded and checked beside the one in
service; only a model that passes every check replaces it, by rebinding a single reference.
A request takes that reference once (``holder.current``) and uses the same object throughout,
so it never mixes two versions.

Every worker process (and every pod) holds its own model and notices a new pointer at its own
moment, up to one reload interval apart. So that a client whose requests land on different
workers never sees a version and then the one before it, a model loaded over an older one is
staged and takes over at one wall-clock instant that all workers compute alike: the pointer's
``published_at`` plus ``swap_delay`` seconds. A worker that loads it after that instant swaps at
once (it is the late one); the first model a worker loads serves at once.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from .render import Renderer

log = logging.getLogger("app.model")

POINTER_FILE = "current.json"
VERSIONS_DIR = "versions"
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
FORMAT = "sklearn-joblib"
N_FEATURES = 4
# A known Iris row (the guide's request): every candidate must answer it sanely before it serves.
CHECK_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float64)

FALLBACK_TRIES = 3
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Inputs are validated as finite numbers before they reach the model; skip scikit-learn's re-check.
sklearn.set_config(assume_finite=True)


class ModelError(Exception):
    """A published model that cannot be served (unreadable, corrupt or incompatible)."""


class ForestProba:
    """predict_proba of a fitted single-output forest classifier, without the per-call overhead.

    scikit-learn's ForestClassifier.predict_proba dispatches every tree through joblib and
    re-validates the input; for the small requests this API serves that costs ~30x the trees'
    own work. This averages the trees' leaf values (``tree_.predict``, float32 input as
    scikit-learn itself uses) directly. It is only used for a model after ``equivalent_on()``
    showed that it gives the same probabilities as the model's own predict_proba.
    """

    def __init__(self, forest: Any) -> None:
        self.trees = [est.tree_ for est in forest.estimators_]
        self.n_classes = int(forest.n_classes_)

    @classmethod
    def applies_to(cls, estimator: Any) -> bool:
        return (
            type(estimator) in (RandomForestClassifier, ExtraTreesClassifier)
            and getattr(estimator, "n_outputs_", None) == 1
            and len(getattr(estimator, "estimators_", ())) > 0
            and all(getattr(est, "n_classes_", None) == estimator.n_classes_ for est in estimator.estimators_)
        )

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(rows, dtype=np.float32)
        acc = self.trees[0].predict(X)  # a new (n_rows, n_classes) float64 array, safe to add into
        for tree in self.trees[1:]:
            acc += tree.predict(X)
        acc /= len(self.trees)
        return acc

    def equivalent_on(self, estimator: Any, rows: np.ndarray) -> bool:
        try:
            mine = self(rows)
        except Exception:  # noqa: BLE001 - any surprise means: use the model's own method
            return False
        return mine.shape == (len(rows), self.n_classes) and np.allclose(mine, estimator.predict_proba(rows), atol=1e-9)


def _reference_rows() -> np.ndarray:
    """The Iris rows (bundled with scikit-learn) plus the corners of their range: the fast path's proof set."""
    data = load_iris().data.astype(np.float64)
    lo, hi = data.min(axis=0), data.max(axis=0)
    corners = np.array([[(hi if (i >> j) & 1 else lo)[j] for j in range(N_FEATURES)] for i in range(2**N_FEATURES)])
    return np.vstack([data, corners, CHECK_ROW])


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModel:
    """One loaded, checked model; immutable, so a request holding it sees one version throughout."""

    estimator: Any
    version: str
    run_id: str | None
    dir: str
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    metadata: dict
    pointer: dict
    loaded_at: str
    proba: Callable[[np.ndarray], np.ndarray]
    inference: str
    renderer: Renderer

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (len(rows), len(class_names)); column i is class id i."""
        return self.proba(rows)

    def describe(self) -> dict:
        meta = self.metadata
        return {
            "name": meta.get("name"),
            "version": self.version,
            "run_id": self.run_id,
            "run_name": meta.get("run_name"),
            "params": meta.get("params", {}),
            "metrics": meta.get("metrics", {}),
            "feature_names": list(self.feature_names),
            "class_names": list(self.class_names),
            "sklearn_version": meta.get("sklearn_version"),
            "created_at": meta.get("created_at"),
            "published_at": self.pointer.get("published_at"),
            "dir": self.dir,
            "loaded_at": self.loaded_at,
            "inference": self.inference,
            "fallback": bool(self.pointer.get("fallback")),
        }


@dataclass
class LoadOutcome:
    """What one ``ModelHolder.load()`` call did: none, unchanged, loaded, staged or refused."""

    status: str
    model: LoadedModel | None = None
    reason: str | None = None
    pointer: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _string_list(meta: dict, key: str, path: Path) -> tuple[str, ...]:
    value = meta.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ModelError(f"{path}: {key!r} must be a non-empty list of names, got {value!r}")
    return tuple(value)


def read_metadata(version_dir: Path) -> dict:
    path = version_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: 'format' must be {FORMAT!r}, got {meta.get('format')!r}")
    return meta


def check_model(estimator: Any, meta: dict, version_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Refuse anything this server cannot answer the Iris API with; returns (class_names, feature_names)."""
    meta_path = version_dir / METADATA_FILE
    class_names = _string_list(meta, "class_names", meta_path)
    feature_names = _string_list(meta, "feature_names", meta_path)
    if len(feature_names) != N_FEATURES:
        raise ModelError(f"{meta_path}: 'feature_names' must name {N_FEATURES} features, got {len(feature_names)}")
    if not callable(getattr(estimator, "predict_proba", None)):
        raise ModelError(f"{version_dir / MODEL_FILE}: {type(estimator).__name__} has no predict_proba")
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in != N_FEATURES:
        raise ModelError(f"{version_dir / MODEL_FILE}: the model takes {n_in} features, the API sends {N_FEATURES}")
    classes = getattr(estimator, "classes_", None)
    expected = list(range(len(class_names)))
    if classes is None or [c.item() if hasattr(c, "item") else c for c in classes] != expected:
        raise ModelError(
            f"{version_dir / MODEL_FILE}: the model's classes {None if classes is None else list(classes)} "
            f"do not match the {len(class_names)} class names {list(class_names)} (expected ids {expected})"
        )
    try:
        proba = np.asarray(estimator.predict_proba(CHECK_ROW), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any failure on the check row refuses the model
        raise ModelError(f"{version_dir / MODEL_FILE}: predicting the check row failed: {exc!r}") from exc
    if (
        proba.shape != (1, len(class_names))
        or not np.all(np.isfinite(proba))
        or not math.isclose(float(proba.sum()), 1.0, abs_tol=1e-6)
    ):
        raise ModelError(
            f"{version_dir / MODEL_FILE}: the check row gave probabilities {proba.tolist()} "
            f"(expected {len(class_names)} finite values summing to 1)"
        )
    return class_names, feature_names


def load_version(version_dir: Path, pointer: dict) -> LoadedModel:
    """Load and check one version directory; raises ModelError naming the file and the problem."""
    meta = read_metadata(version_dir)
    if str(meta.get("version")) != str(pointer.get("version")):
        raise ModelError(
            f"{version_dir / METADATA_FILE}: version {meta.get('version')!r} does not match "
            f"{POINTER_FILE}'s version {pointer.get('version')!r}"
        )
    trained_with = meta.get("sklearn_version")
    if trained_with is not None and trained_with != sklearn.__version__:
        raise ModelError(
            f"{version_dir / METADATA_FILE}: the model was trained with scikit-learn {trained_with}, "
            f"this server runs {sklearn.__version__}; pickles are only safe within one version"
        )
    model_path = version_dir / MODEL_FILE
    try:
        estimator = joblib.load(model_path)
    except FileNotFoundError as exc:
        raise ModelError(f"{model_path} is missing") from exc
    except Exception as exc:  # noqa: BLE001 - truncated or foreign pickles raise anything
        raise ModelError(f"{model_path} could not be loaded: {exc!r}") from exc
    class_names, feature_names = check_model(estimator, meta, version_dir)
    if hasattr(estimator, "n_jobs"):
        # One request = one thread: joblib workers per call only add overhead for small inputs.
        estimator.n_jobs = 1
    proba, inference = estimator.predict_proba, "predict_proba"
    if ForestProba.applies_to(estimator):
        fast = ForestProba(estimator)
        if fast.equivalent_on(estimator, _reference_rows()):
            proba, inference = fast, "forest-trees"
        else:
            log.warning("%s: the direct tree path disagrees with predict_proba; using predict_proba", model_path)
    return LoadedModel(
        estimator=estimator,
        version=str(meta["version"]),
        run_id=meta.get("run_id"),
        dir=version_dir.name,
        class_names=class_names,
        feature_names=feature_names,
        metadata=meta,
        pointer=pointer,
        loaded_at=_now(),
        proba=proba,
        inference=inference,
        renderer=Renderer(class_names, str(meta["version"])),
    )


def load_model(version_dir: str | Path) -> LoadedModel:
    """Load one exported version directory exactly as the server does (same checks, same inference path).

    For benchmarks and tools: ``load_model(dir).predict_proba(rows)`` with ``rows`` a float64 array of
    shape (n, 4) answers what ``POST /predict`` would, column i being class id i. Raises ModelError.
    """
    path = Path(version_dir)
    meta = read_metadata(path)
    pointer = {"dir": path.name, "version": str(meta.get("version")), "run_id": meta.get("run_id")}
    return load_version(path, pointer)


class ModelHolder:
    """Holds the model in service for one worker process.

    ``load()`` checks current.json and, when it points somewhere new, loads and checks that
    model beside the current one and swaps it in. A model that fails is refused and logged; the
    same pointer is not retried until current.json changes again.
    """

    def __init__(
        self,
        models_dir: str | Path,
        model_name: str,
        swap_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(models_dir) / model_name
        self.pointer_path = self.root / POINTER_FILE
        self.swap_delay = swap_delay
        self._clock = clock
        self._current: LoadedModel | None = None
        self._staged: tuple[LoadedModel, float] | None = None  # (model, wall-clock time it takes over)
        self._seen: bytes | None = None  # raw current.json last acted on (loaded or refused)
        self._lock = threading.Lock()  # one load() at a time
        self._swap_lock = threading.Lock()  # staging and swapping

    @property
    def current(self) -> LoadedModel | None:
        """The model in service now; a staged model whose time has come is swapped in first."""
        staged = self._staged
        if staged is not None and self._clock() >= staged[1]:
            with self._swap_lock:
                if self._staged is staged:
                    self._current, self._staged = staged[0], None
        return self._current

    @property
    def staged(self) -> tuple[LoadedModel, float] | None:
        """The loaded model waiting for its swap time, and that time (epoch seconds), if any."""
        return self._staged

    @property
    def ready(self) -> bool:
        return self._current is not None

    def predict(self, rows: np.ndarray) -> tuple[LoadedModel, np.ndarray]:
        """Probabilities from the model in service, with that model; raises ModelError when none."""
        model = self.current
        if model is None:
            raise ModelError("no model loaded yet")
        return model, model.predict_proba(rows)

    def _parse_pointer(self, raw: bytes) -> dict:
        try:
            pointer = json.loads(raw)
        except ValueError as exc:
            raise ModelError(f"{self.pointer_path} is not valid JSON: {exc}") from exc
        if not isinstance(pointer, dict):
            raise ModelError(f"{self.pointer_path} must hold a JSON object, got {type(pointer).__name__}")
        dir_name = pointer.get("dir")
        if not isinstance(dir_name, str) or not _SAFE_NAME.match(dir_name):
            raise ModelError(f"{self.pointer_path}: 'dir' must be a plain directory name, got {dir_name!r}")
        if pointer.get("version") is None:
            raise ModelError(f"{self.pointer_path}: 'version' is missing")
        return pointer

    def load(self) -> LoadOutcome:
        """Pick up a newly published model if there is one. Safe to call from any thread."""
        with self._lock:
            try:
                raw = self.pointer_path.read_bytes()
            except FileNotFoundError:
                return LoadOutcome("none", self._current)
            except OSError as exc:
                log.warning("cannot read %s: %s", self.pointer_path, exc)
                return LoadOutcome("none", self._current, reason=str(exc))
            if raw == self._seen:
                return LoadOutcome("unchanged", self._current)
            self._seen = raw
            pointer: dict = {}
            try:
                pointer = self._parse_pointer(raw)
                candidate = load_version(self.root / VERSIONS_DIR / pointer["dir"], pointer)
            except ModelError as exc:
                if self._current is not None:
                    log.error(
                        "refused model %s: %s (still serving version %s)",
                        pointer.get("version", "?"),
                        exc,
                        self._current.version,
                    )
                    return LoadOutcome("refused", self._current, reason=str(exc), pointer=pointer)
                # A worker that starts (or restarts) while current.json names a broken model would
                # otherwise answer 503 beside workers still serving the last good one.
                fallback = self._newest_loadable(exclude=pointer.get("dir"))
                log.error(
                    "refused model %s: %s (%s)",
                    pointer.get("version", "?"),
                    exc,
                    f"serving the newest earlier version {fallback.version} from {fallback.dir} instead"
                    if fallback
                    else "no earlier version loads either; not ready",
                )
                if fallback is not None:
                    self._current = fallback
                return LoadOutcome("refused", fallback, reason=str(exc), pointer=pointer)
            previous = self.current
            swap_at = self._swap_time(pointer)
            if previous is not None and swap_at is not None and self._clock() < swap_at:
                with self._swap_lock:
                    self._staged = (candidate, swap_at)
                log.info(
                    "loaded model %s version %s (run %s) from %s; it replaces version %s at %s (published_at + %ss)",
                    self.root.name,
                    candidate.version,
                    candidate.run_id,
                    candidate.dir,
                    previous.version,
                    datetime.fromtimestamp(swap_at, UTC).isoformat(timespec="milliseconds"),
                    self.swap_delay,
                )
                return LoadOutcome("staged", candidate, pointer=pointer)
            with self._swap_lock:
                self._current, self._staged = candidate, None  # the swap: one reference, rebound atomically
            log.info(
                "loaded model %s version %s (run %s) from %s%s",
                self.root.name,
                candidate.version,
                candidate.run_id,
                candidate.dir,
                f", replacing version {previous.version}" if previous else "",
            )
            return LoadOutcome("loaded", candidate, pointer=pointer)

    def _swap_time(self, pointer: dict) -> float | None:
        """published_at + swap_delay as epoch seconds; None (swap at once) without a usable published_at."""
        if self.swap_delay <= 0:
            return None
        published = pointer.get("published_at")
        if not isinstance(published, str):
            return None
        try:
            when = datetime.fromisoformat(published)
        except ValueError:
            log.warning("%s: published_at %r is not ISO 8601; swapping at once", self.pointer_path, published)
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp() + self.swap_delay

    def _newest_loadable(self, exclude: str | None) -> LoadedModel | None:
        """The most recently created version directory that passes every check (tries at most a few)."""
        candidates = []
        try:
            entries = list((self.root / VERSIONS_DIR).iterdir())
        except OSError:
            return None
        for path in entries:
            # Hidden names are the exporter's half-written temporaries.
            if path.name == exclude or not _SAFE_NAME.match(path.name) or not path.is_dir():
                continue
            try:
                meta = read_metadata(path)
                candidates.append((str(meta.get("created_at") or ""), path.stat().st_mtime, path, meta))
            except (ModelError, OSError):
                continue
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        for _, _, path, meta in candidates[:FALLBACK_TRIES]:
            pointer = {"dir": path.name, "version": str(meta.get("version")), "run_id": meta.get("run_id")}
            try:
                return load_version(path, {**pointer, "fallback": True})
            except ModelError as exc:
                log.warning("earlier version in %s does not load either: %s", path, exc)
        return None
