"""The model holder: finds the published model on the shared volume, checks it, and swaps it in.

Layout (docs/interfaces.md)::

    <models_dir>/<model_name>/current.json          {"dir", "version", "run_id", "published_at"}
    <models_dir>/<model_name>/versions/<dir>/model.npz       the compiled forest (numpy arrays, no pickle)
    <models_dir>/<model_name>/versions/<dir>/metadata.json   format, sha256 of model.npz, names, metrics

The server reads only model.npz (``numpy.load(allow_pickle=False)``, app/forest.py): loading a
model never runs code from the volume, and the image needs no scikit-learn. The holder never writes
into models_dir. A new model is loaded and checked beside the one in
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

import hashlib
import io
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

import numpy as np

from .forest import NPZ_FORMAT, Forest, ForestFormatError
from .render import Renderer

log = logging.getLogger("app.model")

POINTER_FILE = "current.json"
VERSIONS_DIR = "versions"
MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"
FORMAT = NPZ_FORMAT
N_FEATURES = 4
# A known Iris row (the guide's request): every candidate must answer it sanely before it serves.
CHECK_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float64)

FALLBACK_TRIES = 3
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelError(Exception):
    """A published model that cannot be served (unreadable, corrupt or incompatible)."""


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModel:
    """One loaded, checked model; immutable, so a request holding it sees one version throughout."""

    forest: Forest
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
            "format": meta.get("format"),
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
        hint = (
            " (exported by an earlier trainer without model.npz: train again to export it)"
            if meta.get("format") == "sklearn-joblib"
            else ""
        )
        raise ModelError(f"{path}: 'format' must be {FORMAT!r}, got {meta.get('format')!r}{hint}")
    return meta


def expected_sha256(meta: dict, version_dir: Path) -> str:
    files = meta.get("files")
    entry = files.get(MODEL_FILE) if isinstance(files, dict) else None
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ModelError(
            f"{version_dir / METADATA_FILE}: 'files' must give the sha256 of {MODEL_FILE} "
            f'({{"{MODEL_FILE}": {{"sha256": "<64 hex digits>"}}}}), got {meta.get("files")!r}'
        )
    return digest


def read_forest(version_dir: Path, sha256: str) -> Forest:
    """Read model.npz once, check its checksum, then parse and check the arrays from those bytes."""
    path = version_dir / MODEL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing") from exc
    except OSError as exc:
        raise ModelError(f"{path} could not be read: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelError(
            f"{path}: sha256 {actual} does not match {METADATA_FILE}'s {sha256} (truncated or replaced file)"
        )
    try:
        return Forest.load(io.BytesIO(data))
    except ForestFormatError as exc:
        raise ModelError(f"{path} could not be loaded: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - arrays of unexpected shapes make numpy raise anything
        raise ModelError(f"{path} could not be loaded: {exc!r}") from exc


def check_model(forest: Forest, meta: dict, version_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Refuse anything this server cannot answer the Iris API with; returns (class_names, feature_names)."""
    meta_path = version_dir / METADATA_FILE
    model_path = version_dir / MODEL_FILE
    class_names = _string_list(meta, "class_names", meta_path)
    feature_names = _string_list(meta, "feature_names", meta_path)
    if len(feature_names) != N_FEATURES:
        raise ModelError(f"{meta_path}: 'feature_names' must name {N_FEATURES} features, got {len(feature_names)}")
    if forest.n_features != N_FEATURES:
        raise ModelError(f"{model_path}: the model takes {forest.n_features} features, the API sends {N_FEATURES}")
    if forest.n_classes != len(class_names):
        raise ModelError(
            f"{model_path}: the model's {forest.n_classes} classes do not match the "
            f"{len(class_names)} class names {list(class_names)}"
        )
    try:
        proba = np.asarray(forest.predict_proba(CHECK_ROW), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any failure on the check row refuses the model
        raise ModelError(f"{model_path}: predicting the check row failed: {exc!r}") from exc
    if (
        proba.shape != (1, len(class_names))
        or not np.all(np.isfinite(proba))
        or not math.isclose(float(proba.sum()), 1.0, abs_tol=1e-6)
    ):
        raise ModelError(
            f"{model_path}: the check row gave probabilities {proba.tolist()} "
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
    forest = read_forest(version_dir, expected_sha256(meta, version_dir))
    class_names, feature_names = check_model(forest, meta, version_dir)
    return LoadedModel(
        forest=forest,
        version=str(meta["version"]),
        run_id=meta.get("run_id"),
        dir=version_dir.name,
        class_names=class_names,
        feature_names=feature_names,
        metadata=meta,
        pointer=pointer,
        loaded_at=_now(),
        proba=forest.predict_proba,
        inference=forest.inference,
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
