"""The SSIM term of the loss (``train --ssim-weight W``): it is the cards' SSIM, it adds
``W * (1 - SSIM)`` to whichever loss it wraps, it survives a checkpoint, and training
with it saves the same served model. Bad weights are refused with the other training
flags' (``test_feedback.py``)."""

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from gpu import train as gpu_train
from model_export.frames import data
from model_export.frames import train as train_module
from model_export.frames.evaluate import ssim as card_ssim
from model_export.frames.feedback import FedBackLoss, single_pass
from model_export.frames.ssim_loss import PlusSsim, ssim
from model_export.frames.train import TrainConfig, checkpoint_path, train
from tests.test_feedback import Captured, tiny_stack  # noqa: F401 - a fixture


def frames(seed: int, n: int = 2, t: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Real digit frames and a noisy, shifted copy of them (not a symmetric pair)."""
    rng = np.random.default_rng(seed)
    truth = data.generate_split(n, "test", frames=t)
    noisy = np.roll(truth, 1, axis=-2) + rng.normal(0, 0.1, truth.shape)
    return truth, np.clip(noisy, 0, 1).astype(np.float32)


def test_it_is_the_ssim_the_cards_report() -> None:
    truth, pred = frames(0)
    ours = np.asarray(ssim(truth, pred))
    # evaluate.ssim scores frame by frame (scikit-image); ours is each sequence's mean
    cards = np.array([card_ssim(p, t).mean() for p, t in zip(pred, truth, strict=True)])
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, cards, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ssim(truth, truth)), 1.0, atol=1e-6)


def test_the_term_adds_to_the_loss_it_wraps() -> None:
    truth, pred = frames(1)
    bce = float(keras.losses.BinaryCrossentropy()(truth, pred))
    mean_ssim = float(np.mean(np.asarray(ssim(truth, pred))))
    assert float(PlusSsim("binary_crossentropy", 0.5)(truth, pred)) == pytest.approx(
        bce + 0.5 * (1 - mean_ssim), rel=1e-4
    )
    # a loss object: FedBackLoss's per-sequence value, frames past the 2 teacher ones fed back
    fed = FedBackLoss("binary_crossentropy", teacher_frames=2, weight=0.25)
    wrapped = PlusSsim(fed, 2.0)
    assert float(wrapped(truth, pred)) == pytest.approx(
        float(fed(truth, pred)) + 2.0 * (1 - mean_ssim), rel=1e-4
    )
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    assert isinstance(again._inner, FedBackLoss) and again._inner.weight == 0.25
    assert float(again(truth, pred)) == pytest.approx(float(wrapped(truth, pred)), rel=1e-6)


# Keras on PyTorch (the GPU machine's backend) from `make .venv-backends/torch/.installed`
# (bench/backends/torch.txt, about 5 GB): CI does not build it, so this skips there.
TORCH_PYTHON = Path(__file__).resolve().parents[1] / ".venv-backends/torch/bin/python"

_ON_TORCH = """
import json, sys
import numpy as np
from model_export.frames.feedback import FedBackLoss
from model_export.frames.ssim_loss import PlusSsim, ssim
truth, pred = (np.load(sys.argv[1])[k] for k in ("truth", "pred"))
fed = PlusSsim(FedBackLoss("binary_crossentropy", teacher_frames=2, fed_base="mean_absolute_error"), 0.1)
print(json.dumps({"ssim": np.asarray(ssim(truth, pred).cpu()).tolist(),
                  "loss": float(fed(truth, pred))}))
"""


@pytest.mark.skipif(not TORCH_PYTHON.exists(), reason=f"no Keras-on-PyTorch venv at {TORCH_PYTHON}")
def test_the_term_is_the_same_on_the_pytorch_backend(tmp_path: Path) -> None:
    # The long runs train on the GPU machine with KERAS_BACKEND=torch: the term must be
    # the one the A/B measured here on TensorFlow.
    truth, pred = frames(3)
    np.savez(tmp_path / "pair.npz", truth=truth, pred=pred)
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [str(TORCH_PYTHON), "-c", _ON_TORCH, str(tmp_path / "pair.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    torch = json.loads(done.stdout.strip().splitlines()[-1])
    fed = PlusSsim(
        FedBackLoss("binary_crossentropy", teacher_frames=2, fed_base="mean_absolute_error"), 0.1
    )
    np.testing.assert_allclose(torch["ssim"], np.asarray(ssim(truth, pred)), atol=1e-5)
    assert torch["loss"] == pytest.approx(float(fed(truth, pred)), rel=1e-5)


def test_its_gradient_sharpens_a_blurred_frame() -> None:
    # One small step down the gradient from a blurred digit: with the SSIM term the
    # frame's SSIM rises many times more than with the squared error alone, which lets
    # the blur stay (a sign or scale error in the term fails this).
    import tensorflow as tf

    truth = data.generate_split(1, "test", frames=1)
    blurred = ((truth + np.roll(truth, 2, axis=-2) + np.roll(truth, -2, axis=-2)) / 3).astype(
        np.float32
    )
    before = float(np.asarray(ssim(truth, blurred))[0])
    gained = {}
    for name, loss in (
        ("mse", "mean_squared_error"),
        ("ssim", PlusSsim("mean_squared_error", 1.0)),
    ):
        x = tf.Variable(blurred)
        with tf.GradientTape() as tape:
            value = keras.losses.get(loss)(truth, x) if isinstance(loss, str) else loss(truth, x)
            value = tf.reduce_mean(value)
        step = (x - 2.0 * tape.gradient(value, x)).numpy()
        gained[name] = float(np.asarray(ssim(truth, step))[0]) - before
    assert gained["ssim"] > 0.005
    assert gained["ssim"] > 10 * max(gained["mse"], 0.0)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_stack")
def test_training_with_the_term_saves_the_served_model_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "LAST_EVERY", 1)
    cfg = TrainConfig(
        train_samples=2,
        validation_samples=2,
        epochs=1,
        batch_size=2,
        head="carry",
        feedback_steps=2,
        ssim_weight=0.5,
        out_dir=tmp_path / "a",
    )
    record = train(cfg)
    assert record["config"]["ssim_weight"] == 0.5  # type: ignore[index]
    best = record["best_val_loss"]
    assert isinstance(best, float) and np.isfinite(best)
    last = keras.models.load_model(tmp_path / "a" / "training" / "convlstm.last.keras")
    assert isinstance(last.loss, PlusSsim) and last.loss.weight == 0.5
    assert isinstance(last.loss._inner, FedBackLoss)
    served = keras.models.load_model(checkpoint_path(tmp_path / "a", "convlstm"))
    assert served.output_shape == (None, 40, 40, 3)
    # the served model holds the best checkpoint's every-step weights
    best_model = keras.models.load_model(tmp_path / "a" / "training" / "convlstm.best.keras")
    for a, b in zip(single_pass(best_model).get_weights(), served.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = train(
        replace(
            cfg,
            feedback_steps=1,
            init_from=tmp_path / "a" / "training" / "convlstm.last.keras",
            out_dir=tmp_path / "b",
        )
    )
    assert resumed["warm_started_layers"] == ["convlstm_1", "next_frame", "next_frame_keep"]
    assert isinstance(
        keras.models.load_model(tmp_path / "b" / "training" / "convlstm.best.keras").loss, PlusSsim
    )


def test_the_gpu_job_passes_the_weight_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def capture(cfg: TrainConfig) -> None:  # stands in for the trainer tested above
        raise Captured(cfg)

    monkeypatch.setattr(train_module, "train", capture)
    with pytest.raises(Captured) as caught:
        gpu_train.main(["--out", str(tmp_path), "--dry-run", "--ssim-weight", "0.3"])
    assert caught.value.args[0].ssim_weight == 0.3
