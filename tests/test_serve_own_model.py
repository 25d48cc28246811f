"""The whole way a user's own model goes: a Keras model saved as ``.keras``, exported with
``python -m model_export export --keras``, served from one directory by the real server,
answering ``/predict`` and the Open Inference Protocol like Keras."""

from __future__ import annotations

import base64
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.server import serve
from model_export.__main__ import main
from tests.test_export_any import CASES

pytestmark = pytest.mark.slow

# Every kind of model the exporter takes, one server for all of them.
SERVED = ["non_square", "sequential", "per_step", "feature_map", "conv3d", "convlstm1d"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, keras.Model]]:
    tmp = tmp_path_factory.mktemp("own")
    models = tmp / "models"
    originals = {}
    for name in SERVED:
        keras.utils.set_random_seed(11)
        model = CASES[name][0]()
        model.save(tmp / f"{name}.keras")
        args = ["export", "--keras", str(tmp / f"{name}.keras"), "--name", name]
        assert main([*args, "--models", str(models)]) == 0
        originals[name] = model
    return models, originals


def test_every_exported_model_answers_like_keras(
    exported: tuple[Path, dict[str, keras.Model]],
) -> None:
    models, originals = exported
    with serve(models / f"{SERVED[0]}.onnx") as server, server.client() as client:
        ready = client.get("/readyz").json()
        assert sorted(ready["models"]) == sorted(SERVED), (ready.get("failed"), ready["models"])
        for name, model in originals.items():
            x = np.random.default_rng(5).random((2, *model.input_shape[1:]), dtype=np.float32)
            expected = model.predict(x, verbose=0)

            meta = client.get(f"/v2/models/{name}").json()
            request = {
                "inputs": [
                    {
                        "name": meta["inputs"][0]["name"],
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            r = client.post(f"/v2/models/{name}/infer", json=request)
            assert r.status_code == 200, (name, r.text)
            out = r.json()["outputs"][0]
            got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            assert got.shape == expected.shape, name
            assert float(np.max(np.abs(got - expected))) <= 1e-4, name

            served = client.get(f"/v1/models/{name}").json()
            one = {"data": base64.b64encode(x[0].tobytes()).decode(), "dtype": "float32"}
            r = client.post(
                "/predict",
                json={
                    "model": name,
                    "tensor": {**one, "shape": list(x.shape[1:])},
                    "return_tensor": True,
                },
            )
            if served["output_kind"] == "tensor" or served["task"] != "next_frame":
                # Documented: such models answer over the Open Inference Protocol only.
                assert r.status_code == 422, (name, r.text)
                assert f"/v2/models/{name}/infer" in r.json()["error"]["message"]
                continue
            assert r.status_code == 200, (name, r.text)
            tensor = r.json()["tensor"]
            predicted = np.frombuffer(base64.b64decode(tensor["data"]), dtype=np.float32)
            predicted = predicted.reshape(tensor["shape"])[0]  # horizon 1
            next_frame = (
                expected[0, -1] if served["output_kind"] == "frame_per_step" else expected[0]
            )
            assert float(np.max(np.abs(predicted - next_frame))) <= 1e-4, name
