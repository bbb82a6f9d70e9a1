"""KServe's Python model server on the benchmark's model, as KServe's sklearnserver serves it.

Runs in the kserve virtualenv (bench/peers/kserve.txt), not the project's:

    <venv>/bin/python bench/peers/kserve_server.py --model_dir DIR --model_name iris-classifier \
        --http_port PORT --workers 2 --enable_grpc false

A ``kserve.Model`` subclass that loads the scikit-learn estimator from ``model_dir`` with joblib
(the first ``*.joblib``/``*.pkl``/``*.pickle`` file, as sklearnserver's ``load`` does) and answers
V1 ``POST /v1/models/<name>:predict`` ({"instances": [[...]]} -> {"predictions": [class ids]})
and V2 ``/v2/models/<name>/infer`` with ``model.predict`` (sklearnserver's default; PREDICT_PROBA
is not set). Everything else (argument parsing, uvicorn workers) is kserve's own.
"""

from __future__ import annotations

import argparse
import pathlib

import joblib
import kserve
from kserve.utils.utils import get_predict_input, get_predict_response

MODEL_EXTENSIONS = (".joblib", ".pkl", ".pickle")


class SKLearnModel(kserve.Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self._model = None

    def load(self) -> bool:
        paths = sorted(p for p in pathlib.Path(self.model_dir).iterdir() if p.suffix in MODEL_EXTENSIONS)
        if len(paths) != 1:
            raise RuntimeError(f"expected one model file ({', '.join(MODEL_EXTENSIONS)}) in {self.model_dir}")
        self._model = joblib.load(paths[0])
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        instances = get_predict_input(payload)
        result = self._model.predict(instances)
        return get_predict_response(payload, result, self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])
