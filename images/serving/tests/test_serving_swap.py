"""The timed swap: every worker takes a newly published model at published_at + swap_delay, so a
client whose requests land on different workers never sees a version and then the one before it."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
from pydantic import ValidationError
from serving_helpers import GUIDE_REQUEST, wait_for

from app.config import Settings
from app.model import ModelHolder

ROW = np.array([GUIDE_REQUEST["features"]])


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def published_at(models_dir) -> float:
    pointer = json.loads((models_dir / "iris-classifier" / "current.json").read_text())
    return datetime.fromisoformat(pointer["published_at"]).timestamp()


def version(holder: ModelHolder) -> str:
    model, _ = holder.predict(ROW)
    return model.version


def test_a_new_model_is_staged_until_published_at_plus_the_delay(models_dir, publish, trained):
    publish(trained["small"], 1)
    clock = Clock(published_at(models_dir))
    holder = ModelHolder(models_dir, "iris-classifier", swap_delay=5, clock=clock)
    assert holder.load().status == "loaded"  # the first model serves at once
    publish(trained["big"], 2)
    t2 = published_at(models_dir)
    clock.now = t2 + 1
    outcome = holder.load()
    assert outcome.status == "staged"
    assert version(holder) == "1"
    assert holder.staged is not None and holder.staged[0].version == "2" and holder.staged[1] == t2 + 5
    clock.now = t2 + 4.999
    assert version(holder) == "1"
    clock.now = t2 + 5
    assert version(holder) == "2"
    assert holder.staged is None
    assert holder.load().status == "unchanged"
    assert version(holder) == "2"


def test_workers_that_notice_at_different_times_switch_together(models_dir, publish, trained):
    publish(trained["small"], 1)
    clock = Clock(published_at(models_dir))
    early = ModelHolder(models_dir, "iris-classifier", swap_delay=5, clock=clock)
    late = ModelHolder(models_dir, "iris-classifier", swap_delay=5, clock=clock)
    early.load(), late.load()
    publish(trained["big"], 2)
    t2 = published_at(models_dir)
    answers = []
    clock.now = t2 + 0.5
    assert early.load().status == "staged"  # the early worker has the new model, the late one not yet
    for step in (1.0, 2.0, 4.9):
        clock.now = t2 + step
        answers += [version(early), version(late)]
    clock.now = t2 + 5.2
    answers.append(version(early))
    assert late.load().status == "loaded"  # it noticed after the swap time: it swaps at once
    answers += [version(late), version(early)]
    assert answers == ["1"] * 6 + ["2"] * 3


def test_a_newer_model_replaces_a_staged_one(models_dir, publish, trained):
    publish(trained["small"], 1)
    clock = Clock(published_at(models_dir))
    holder = ModelHolder(models_dir, "iris-classifier", swap_delay=5, clock=clock)
    holder.load()
    publish(trained["big"], 2)
    clock.now = published_at(models_dir) + 1
    assert holder.load().status == "staged"
    publish(trained["small"], 3)
    t3 = published_at(models_dir)
    clock.now = t3 + 1
    assert holder.load().status == "staged"
    assert version(holder) == "1"
    clock.now = t3 + 5
    assert version(holder) == "3"


@pytest.mark.parametrize("pointer_update", [{"published_at": None}, {"published_at": "yesterday"}], ids=["none", "bad"])
def test_without_a_usable_published_at_the_swap_is_immediate(models_dir, publish, trained, pointer_update):
    publish(trained["small"], 1)
    holder = ModelHolder(models_dir, "iris-classifier", swap_delay=5)
    holder.load()
    publish(trained["big"], 2)
    path = models_dir / "iris-classifier" / "current.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **pointer_update}))
    assert holder.load().status == "loaded"
    assert version(holder) == "2"


def test_the_api_shows_the_staged_model_then_serves_it(make_client, publish, trained, models_dir):
    publish(trained["small"], 1)
    client = make_client(swap_delay_seconds=2)
    publish(trained["big"], 2)
    wait_for(lambda: "next" in client.get("/model").json(), timeout=5, what="version 2 to be staged")
    info = client.get("/model").json()
    assert info["version"] == "1" and info["next"]["version"] == "2"
    serves_from = datetime.fromisoformat(info["next"]["serves_from"]).timestamp()
    assert serves_from == pytest.approx(published_at(models_dir) + 2)
    seen = []

    def serving_v2() -> bool:
        seen.append(client.post("/predict", json=GUIDE_REQUEST).json()["model_version"])
        return seen[-1] == "2"

    wait_for(serving_v2, timeout=10, what="version 2 to be served")
    assert seen == sorted(seen)  # 1 ... 1 2, never back
    assert "next" not in client.get("/model").json()


def test_swap_delay_setting_is_validated():
    assert Settings().swap_delay_seconds == 5
    with pytest.raises(ValidationError, match="swap_delay_seconds"):
        Settings(swap_delay_seconds=-1)
