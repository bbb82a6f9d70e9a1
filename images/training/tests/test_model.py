import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.model import CLASS_NAMES, FEATURE_NAMES, evaluate, load_split, train_model

IMAGE_DIR = Path(__file__).resolve().parents[1]


def test_train_model_fits_and_reports_metrics():
    result = train_model(n_estimators=20, max_depth=4)
    assert result.model.n_estimators == 20
    assert result.model.max_depth == 4
    assert result.feature_names == FEATURE_NAMES
    assert result.class_names == ["setosa", "versicolor", "virginica"]
    expected = {"accuracy", "f1_macro"} | {f"{m}_{c}" for m in ("precision", "recall") for c in CLASS_NAMES}
    assert set(result.metrics) == expected
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.metrics["accuracy"] > 0.85
    # 30% of 150, stratified: 15 of each class.
    assert result.X_test.shape == (45, 4)
    assert np.bincount(result.y_test).tolist() == [15, 15, 15]
    assert result.confusion.sum() == 45
    assert result.model.predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]


def test_split_and_training_are_deterministic():
    a, b = load_split(), load_split()
    np.testing.assert_array_equal(a.X_test, b.X_test)
    r1, r2 = train_model(10, 3), train_model(10, 3)
    assert r1.metrics == r2.metrics
    np.testing.assert_array_equal(r1.model.predict(r1.X_test), r2.model.predict(r2.X_test))


def test_a_stump_is_worse_than_a_forest():
    stump, forest = train_model(1, 1), train_model(50, 5)
    assert stump.metrics["accuracy"] < forest.metrics["accuracy"]
    assert evaluate(forest.model, stump.X_test, stump.y_test) == forest.metrics


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("n_estimators", {"n_estimators": 0, "max_depth": 3}),
        ("max_depth", {"n_estimators": 3, "max_depth": -1}),
        ("n_estimators", {"n_estimators": "10", "max_depth": 3}),
        ("max_depth", {"n_estimators": 3, "max_depth": True}),
    ],
)
def test_bad_parameters_name_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        train_model(**kwargs)


def test_model_module_does_not_import_mlflow_or_matplotlib():
    code = (
        "import sys; import trainer.model, trainer.export; "
        "bad = [m for m in ('mlflow', 'matplotlib') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=IMAGE_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
