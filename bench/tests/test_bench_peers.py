"""The peers' pinned requirements: complete pins, the trainer's scikit-learn, MLServer's working uvloop."""

from __future__ import annotations

import re

import pytest

from bench import peers
from bench.inference import REPO

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$")


def pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert PIN.match(line), f"{path.name}: not an exact pin: {line!r}"
        name, version = line.split("==")
        out[name.lower().replace("_", "-")] = version
    return out


@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_every_package_is_pinned_and_sklearn_is_the_trainers(name):
    trainer = pins(REPO / "images" / "training" / "requirements.txt")
    mine = pins(peers.PEERS[name])
    assert mine["scikit-learn"] == trainer["scikit-learn"]  # the trainer's model.joblib must load
    assert mine["joblib"] and mine["numpy"]
    assert name in mine


def test_mlserver_keeps_the_uvloop_it_starts_with():
    mine = pins(peers.PEERS["mlserver"])
    assert mine["uvloop"] == "0.21.0"  # 0.23: "There is no current event loop in thread 'MainThread'"
    assert "mlserver-sklearn" in mine


def test_virtualenvs_live_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("OPS_DEMO_CACHE", str(tmp_path))
    assert peers.cache_dir() == tmp_path / "bench-venvs"
    monkeypatch.delenv("OPS_DEMO_CACHE")
    assert REPO not in peers.cache_dir().parents


def test_an_up_to_date_virtualenv_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("OPS_DEMO_CACHE", str(tmp_path))
    target = tmp_path / "bench-venvs" / "kserve"
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "python").write_text("")
    (target / peers.STAMP).write_text(peers.requirements_hash(peers.PEERS["kserve"]) + "\n")
    calls = []
    monkeypatch.setattr(peers.subprocess, "run", lambda *a, **k: calls.append(a))
    assert peers.venv("kserve", log=calls.append) == target
    assert calls == []
