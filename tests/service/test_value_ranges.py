"""Value ranges stated, not assumed (issue 26): ``export --keras`` without ``--task``
says whether the input is an image or a tensor, and a tensor has no range unless
``--range`` declares one. Real tf2onnx exports of small series models (a Conv1D and a
ConvLSTM1D over standardised values), served in process over the Open Inference
Protocol with negative values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convlstm_card import ModelCard, read_card
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app

pytest.importorskip("tf2onnx", reason="tf2onnx is installed with the `train` extra")
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def conv1d() -> Any:
    import keras

    inputs = keras.Input((12, 2))  # 12 time steps of 2 standardised features
    x = keras.layers.Conv1D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def convlstm1d() -> Any:
    import keras

    inputs = keras.Input((3, 4, 1))  # 3 sub-sequences of 4 steps of 1 feature
    x = keras.layers.ConvLSTM1D(4, 2, padding="same")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def export(directory: Path, name: str, build: Any, *flags: str) -> Path:
    """Export through the CLI, as a user would; the ONNX file's path."""
    import keras

    from model_export.__main__ import main

    keras.utils.set_random_seed(11)
    source = directory / f"{name}.keras"
    build().save(source)
    models = directory / "models"
    args = ["export", "--keras", str(source), "--name", name, "--models", str(models), *flags]
    assert main(args) == 0
    return models / f"{name}.onnx"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ranges")
    return {
        "conv1d": export(directory, "conv1d", conv1d),
        "convlstm1d": export(directory, "convlstm1d", convlstm1d),
        "declared": export(directory, "declared", conv1d, "--range", "-1", "1"),
    }


def test_export_says_what_it_chose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export(tmp_path, "conv1d", conv1d)
    out = capsys.readouterr().out
    assert "input (N, 12, 2): not frames of 1, 3 or 4 channels, so a tensor, in no range" in out


@pytest.mark.parametrize("name", ["conv1d", "convlstm1d"])
def test_a_series_model_without_task_is_a_tensor_in_no_range(
    exported: dict[str, Path], name: str
) -> None:
    card = read_card(exported[name].with_suffix(".json"))
    assert (card.task, card.input.kind, card.input.range) == ("tensor", "tensor", None)
    assert card.parity is not None and "standard normal" in next(iter(card.parity["inputs"]))


def test_cards_from_before_kind_still_load_as_images() -> None:
    assert ModelCard.model_validate(json.loads(COMMITTED_MODEL.with_suffix(".json").read_text()))
    committed = read_card(COMMITTED_MODEL.with_suffix(".json"))
    assert (committed.input.kind, committed.input_kind) == (None, "image")


def infer_body(x: np.ndarray, name: str = "inputs") -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ]
    }


@pytest.mark.parametrize("name", ["conv1d", "convlstm1d"])
async def test_negative_values_are_served(exported: dict[str, Path], name: str) -> None:
    import keras

    path = exported[name]
    card = read_card(path.with_suffix(".json"))
    shape = [int(d) for d in card.input.shape[1:]]
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32) * 3
    assert (x < -1).any()
    settings = Settings(model_path=path, warmup_runs=0, serve_model_dir=False)
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post(f"/v2/models/{name}/infer", json=infer_body(x))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    model = keras.models.load_model(path.parent.parent / f"{name}.keras")
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4)


async def test_a_declared_range_is_enforced(exported: dict[str, Path]) -> None:
    path = exported["declared"]
    card = read_card(path.with_suffix(".json"))
    assert (card.input.kind, card.input.range) == ("tensor", (-1.0, 1.0))
    x = np.full((1, 12, 2), -0.5, dtype=np.float32)
    settings = Settings(model_path=path, warmup_runs=0, serve_model_dir=False)
    async with running_app(settings) as app, asgi_client(app) as client:
        ok = await client.post("/v2/models/declared/infer", json=infer_body(x))
        assert ok.status_code == 200, ok.text
        x[0, 3, 1] = -2.0
        r = await client.post("/v2/models/declared/infer", json=infer_body(x))
    assert r.status_code == 422
    assert "must be in [-1, 1]" in r.json()["error"]
