"""The fed-back training objective (``train --feedback-steps K``): the graph feeds the
model's own predictions back exactly as serving does, training on it saves the same
15 -> 1 model, and bad values are refused before anything is drawn or written."""

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from gpu import train as gpu_train
from model_export.__main__ import main
from model_export.frames import data
from model_export.frames import model as model_module
from model_export.frames import train as train_module
from model_export.frames.evaluate import rollout
from model_export.frames.feedback import FedBackLoss, build_fed_back, single_pass
from model_export.frames.model import Head, Variant, build_convlstm
from model_export.frames.train import TrainConfig, checkpoint_path, train

pytestmark = pytest.mark.slow


def tiny(
    variant: Variant, *, every_step: bool = False, frames: int | None = 15, head: Head = "sigmoid"
) -> keras.Model:
    """One ConvLSTM2D of 4 filters: the objective does not depend on the stack's width,
    and the release stack's three passes take tens of seconds to trace."""
    return build_convlstm(every_step=every_step, frames=frames, head=head, filters=(4,))


@pytest.fixture
def tiny_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "build", tiny)  # to_inference's
    monkeypatch.setattr(train_module, "build", tiny)


def sequences(n: int, frames: int) -> np.ndarray:
    return data.generate_split(n, "test", frames=frames)


def test_targets_hold_the_fed_back_frames_after_the_every_step_ones() -> None:
    seqs = sequences(2, 18)
    x, y = data.inputs_and_targets(seqs, every_step=True, feedback_steps=3)
    assert x.shape[1] == 15 and y.shape[1] == 17
    np.testing.assert_array_equal(x, seqs[:, :15])
    np.testing.assert_array_equal(y, seqs[:, 1:])
    # K = 1 splits a 16-frame sequence as before: 15 inputs, the 15 frames after each
    x1, y1 = data.inputs_and_targets(seqs[:, :16], every_step=True)
    np.testing.assert_array_equal(x1, seqs[:, :15])
    np.testing.assert_array_equal(y1, seqs[:, 1:16])
    with pytest.raises(ValueError, match="every-step"):
        data.inputs_and_targets(seqs, every_step=False, feedback_steps=3)


def test_each_pass_sees_the_previous_passes_predictions_as_serving_does() -> None:
    keras.utils.set_random_seed(3)
    step = build_convlstm(every_step=True, filters=(4,), head="carry")
    fed = build_fed_back(step, 3)
    seqs = sequences(4, 18)
    x, truth = seqs[:, :15], seqs[:, 15:]
    out = np.asarray(fed.predict(x, verbose=0))
    assert out.shape == (4, 17, 40, 40, 3)
    np.testing.assert_allclose(out[:, :15], step.predict(x, verbose=0), atol=1e-6)

    # The second pass's window: true frames 2-15, then the first pass's prediction.
    window = keras.Model(fed.input, fed.get_layer("window_2").output).predict(x, verbose=0)
    np.testing.assert_array_equal(window[:, :-1], x[:, 1:])
    np.testing.assert_allclose(window[:, -1], out[:, 14], atol=1e-6)

    # The fed-back steps are the served model's roll-out (evaluate.rollout, the scheme
    # the service uses), not its answer to a window holding the true frame 16.
    served = build_convlstm(filters=(4,), head="carry")  # to_inference, for this stack
    served.set_weights(step.get_weights())

    def predict(frames: np.ndarray) -> np.ndarray:
        return np.asarray(served.predict(frames, verbose=0))

    np.testing.assert_allclose(out[:, 14:], rollout(predict, x, 3), atol=1e-5)
    teacher_forced = predict(np.concatenate([x[:, 1:], truth[:, :1]], axis=1))
    assert np.abs(out[:, 15] - teacher_forced).max() > 1e-2


def test_gradients_flow_through_the_fed_back_prediction() -> None:
    import tensorflow as tf  # the test venv's backend; the graph itself is backend-free

    keras.utils.set_random_seed(4)
    step = build_convlstm(every_step=True, filters=(4,), head="carry")
    fed = build_fed_back(step, 2)
    x = tf.constant(sequences(2, 15))
    with tf.GradientTape(persistent=True) as tape:
        through = fed(x)[:, 15]  # pass 2: frames 2-15 and pass 1's prediction of 16
        first = tf.stop_gradient(step(x)[:, -1:])
        stopped = step(tf.concat([x[:, 1:], first], axis=1))[:, -1]
        sums = tf.reduce_sum(through), tf.reduce_sum(stopped)
    np.testing.assert_allclose(through.numpy(), stopped.numpy(), atol=1e-6)
    kernel = step.get_layer("convlstm_1").trainable_variables[0].value
    g_through, g_stopped = (tape.gradient(total, kernel).numpy() for total in sums)
    # The same frame 17, but only the graph's gradient also reaches the weights through
    # pass 1's prediction of frame 16 (a stop_gradient there would make the two equal).
    assert np.abs(g_through - g_stopped).max() > 1e-3 * np.abs(g_stopped).max()


def test_loss_is_the_every_step_mean_plus_the_weighted_fed_back_mean() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.uniform(size=(2, 17, 4, 4, 3)).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, size=(2, 17, 4, 4, 3)).astype("float32")
    loss = FedBackLoss("mean_squared_error", teacher_frames=15, weight=0.25)
    per_frame = ((y_true - y_pred) ** 2).mean(axis=(2, 3, 4))
    expected = (per_frame[:, :15].mean(axis=1) + 0.25 * per_frame[:, 15:].mean(axis=1)).mean()
    assert float(loss(y_true, y_pred)) == pytest.approx(float(expected), rel=1e-5)
    again = FedBackLoss.from_config(loss.get_config())
    assert float(again(y_true, y_pred)) == pytest.approx(float(expected), rel=1e-5)


def test_the_fed_back_frames_can_have_a_loss_of_their_own() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.uniform(size=(2, 17, 4, 4, 3)).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, size=(2, 17, 4, 4, 3)).astype("float32")
    loss = FedBackLoss("binary_crossentropy", teacher_frames=15, weight=2.0, fed_base="mae")
    bce = -(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred))
    teacher = bce.mean(axis=-1).mean(axis=(2, 3))[:, :15].mean(axis=1)
    fed = np.abs(y_true - y_pred).mean(axis=(2, 3, 4))[:, 15:].mean(axis=1)
    expected = (teacher + 2.0 * fed).mean()
    assert float(loss(y_true, y_pred)) == pytest.approx(float(expected), rel=1e-4)
    same = FedBackLoss("binary_crossentropy", teacher_frames=15, weight=2.0)
    assert float(same(y_true, y_pred)) != pytest.approx(float(expected), rel=1e-3)
    again = FedBackLoss.from_config(loss.get_config())
    assert again.fed_base == "mae"
    assert float(again(y_true, y_pred)) == pytest.approx(float(expected), rel=1e-4)


def test_one_feedback_step_trains_todays_graph(tmp_path: Path, tiny_stack: None) -> None:
    cfg = TrainConfig(train_samples=2, validation_samples=2, epochs=1, batch_size=2)
    record = train(replace(cfg, out_dir=tmp_path))
    assert record["config"]["feedback_steps"] == 1  # type: ignore[index]
    trained = keras.models.load_model(tmp_path / "training" / "convlstm.best.keras")
    assert trained.name == "convlstm" and trained.output_shape == (None, 15, 40, 40, 3)
    assert trained.loss == "binary_crossentropy"
    assert single_pass(trained) is trained


def test_fed_back_training_saves_the_served_model_and_resumes(
    tmp_path: Path, tiny_stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "LAST_EVERY", 1)
    cfg = TrainConfig(
        train_samples=2,
        validation_samples=2,
        epochs=1,
        batch_size=2,
        head="carry",
        feedback_steps=3,
        feedback_weight=0.5,
        feedback_loss="l1",
        out_dir=tmp_path / "a",
    )
    record = train(cfg)
    assert record["config"]["feedback_steps"] == 3  # type: ignore[index]
    assert record["config"]["feedback_weight"] == 0.5  # type: ignore[index]
    assert record["config"]["feedback_loss"] == "l1"  # type: ignore[index]
    best = record["best_val_loss"]
    assert isinstance(best, float) and np.isfinite(best) and record["batches_run"] == 1
    saved = json.loads((tmp_path / "a" / "training" / "convlstm.json").read_text())
    assert saved["config"]["feedback_steps"] == 3

    served = keras.models.load_model(checkpoint_path(tmp_path / "a", "convlstm"))
    assert served.input_shape == (None, 15, 40, 40, 3)
    assert served.output_shape == (None, 40, 40, 3)
    assert not any(layer.name.startswith(("window_", "newest_")) for layer in served.layers)
    # the training checkpoints are the fed-back graph, its loss included
    last = keras.models.load_model(tmp_path / "a" / "training" / "convlstm.last.keras")
    assert last.output_shape == (None, 17, 40, 40, 3)
    assert isinstance(last.loss, FedBackLoss) and last.loss.weight == 0.5
    assert (last.loss.base, last.loss.fed_base) == ("binary_crossentropy", "mean_absolute_error")
    for a, b in zip(
        single_pass(
            keras.models.load_model(tmp_path / "a" / "training" / "convlstm.best.keras")
        ).get_weights(),
        served.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)

    # --resume from the fed-back run's last checkpoint and --skip-samples, K = 3 and K = 1
    for k, out in ((3, "b"), (1, "c")):
        again = replace(
            cfg,
            feedback_steps=k,
            feedback_weight=1.0,
            feedback_loss=None,
            init_from=tmp_path / "a" / "training" / "convlstm.last.keras",
            train_skip=2,
            out_dir=tmp_path / out,
        )
        resumed = train(again)
        assert resumed["warm_started_layers"] == ["convlstm_1", "next_frame", "next_frame_keep"]
        assert resumed["config"]["train_skip"] == 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--feedback-steps", "0"], "--feedback-steps 0: give 1"),
        (["--feedback-steps", "16"], "--feedback-steps 16: give 1"),
        (["--feedback-steps", "3", "--supervise", "last"], "--supervise last"),
        (["--feedback-steps", "3", "--feedback-weight", "0"], "--feedback-weight 0.0"),
        (["--feedback-weight", "2"], "--feedback-weight goes with --feedback-steps"),
        (["--feedback-loss", "l1"], "--feedback-loss goes with --feedback-steps"),
        (
            ["--data", "x.npy", "--feedback-loss", "l1"],
            "--feedback-loss goes with --feedback-steps",
        ),
        (["--feedback-steps", "16", "--data", "x.npy"], "--feedback-steps 16: give 1"),
        (
            ["--feedback-steps", "2", "--data", "x.npy", "--loss", "l1"],
            "--loss go with --data digits",
        ),
        (["--ssim-weight", "-1"], "--ssim-weight -1.0: give a weight >= 0"),
        (["--ssim-weight", "nan"], "--ssim-weight nan: give a weight >= 0"),
        (["--data", "x.npy", "--ssim-weight", "1"], "--ssim-weight go with --data digits"),
    ],
)
def test_bad_values_are_refused_before_training(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *flags, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class Captured(Exception):
    pass


def test_the_gpu_job_passes_the_option_on_and_refuses_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def capture(cfg: TrainConfig) -> None:  # stands in for the trainer tested above
        raise Captured(cfg)

    monkeypatch.setattr(train_module, "train", capture)
    flags = ["--feedback-steps", "3", "--feedback-weight", "0.5", "--feedback-loss", "l1"]
    with pytest.raises(Captured) as caught:
        gpu_train.main(["--out", str(tmp_path), "--dry-run", *flags])
    cfg = caught.value.args[0]
    assert (cfg.feedback_steps, cfg.feedback_weight, cfg.feedback_loss) == (3, 0.5, "l1")

    with pytest.raises(SystemExit) as stopped:
        gpu_train.main(["--out", str(tmp_path), "--dry-run", "--feedback-steps", "16"])
    assert stopped.value.code == 2
    assert "--feedback-steps 16: give 1" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--feedback-steps 0"):
        train(TrainConfig(feedback_steps=0, out_dir=tmp_path / "lib"))
    assert not (tmp_path / "lib").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--feedback-weight", "0.5"], "--feedback-weight goes with --feedback-steps K > 1"),
        (["--feedback-loss", "l1"], "--feedback-loss goes with --feedback-steps K > 1"),
        (["--varied-share", "1.5"], "--varied-share 1.5: give a share in [0, 1]"),
        (["--varied-share", "nan"], "--varied-share nan: give a share in [0, 1]"),
        (["--skip-samples", "-1"], "--skip-samples -1: give N >= 0"),
        (["--ssim-weight", "-2"], "--ssim-weight -2.0: give a weight >= 0"),
    ],
)
def test_the_gpu_job_refuses_what_train_refuses(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        gpu_train.main(["--out", str(tmp_path / "out"), "--dry-run", *flags])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_gpu_job_passes_the_varied_family_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def capture(cfg: TrainConfig) -> None:  # stands in for the trainer
        raise Captured(cfg)

    monkeypatch.setattr(train_module, "train", capture)
    flags = ["--varied-share", "0.5", "--augment", "--skip-samples", "8000"]
    with pytest.raises(Captured) as caught:
        gpu_train.main(["--out", str(tmp_path), "--dry-run", *flags])
    cfg = caught.value.args[0]
    assert (cfg.varied_share, cfg.augment, cfg.train_skip) == (0.5, True, 8000)
    assert (cfg.feedback_steps, cfg.feedback_weight, cfg.feedback_loss) == (1, 1.0, None)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_own_data_trains_on_its_fed_back_frames(tmp_path: Path, stream: bool) -> None:
    """``train --data --feedback-steps 3``: windows of --frames T + 2 are cut, the model
    takes T - 1 frames as with K = 1, and the two frames after them are its fed-back
    targets; scored on windows of its own length."""
    from tests.test_train_data import TINY

    rng = np.random.default_rng(0)
    path = tmp_path / "grid.npy"
    np.save(path, rng.uniform(0.0, 1.0, size=(6, 9, 8, 8, 1)).astype(np.float32))
    out = tmp_path / "out"
    args = ["train", "--data", str(path), "--frames", "4", "--out", str(out), *TINY]
    flags = ["--feedback-steps", "3", "--feedback-loss", "l1"]
    assert main([*args, *flags, *(["--stream"] if stream else [])]) == 0
    record = json.loads((out / "own.training.json").read_text())
    assert record["config"]["feedback_steps"] == 3 and record["config"]["feedback_loss"] == "l1"
    model = keras.models.load_model(out / "own.keras")
    assert tuple(model.input.shape) == (None, 3, 8, 8, 1)  # --frames 4: 3 inputs, as K = 1
    assert tuple(model.output.shape) == (None, 8, 8, 1)
    if stream:
        assert (record["data"]["window_frames"], record["data"]["drawn_window_frames"]) == (4, 6)
    else:
        # 4 train sequences of 9 frames: 4 windows of 4 + 2 frames each.
        assert record["data"]["window_frames"] == 6
        assert record["data"]["splits"]["train"]["windows"] == 16
    assert record["evaluation"]["windows"] > 0
    # The fed-back graph's every-step model comes back out of a fed-back checkpoint.
    resumed = ["--name", "again", "--resume", str(out / "training" / "own.best.keras")]
    assert main([*args, *flags, *resumed]) == 0
    assert tuple(keras.models.load_model(out / "again.keras").input.shape) == (None, 3, 8, 8, 1)


def test_own_data_too_short_for_its_fed_back_frames_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((6, 3, 8, 8, 1), dtype=np.float32))
    out = tmp_path / "out"
    assert main(["train", "--data", str(path), "--feedback-steps", "3", "--out", str(out)]) == 1
    assert "windows of 3 frames leave 1 for the model with --feedback-steps 3" in (
        capsys.readouterr().err
    )
    assert not (out / "own.keras").exists()


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_a_sequence_too_short_for_the_fed_back_window_names_both_flags(
    tmp_path: Path, stream: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "six.npy"
    np.save(path, np.zeros((6, 6, 8, 8, 1), dtype=np.float32))
    out = tmp_path / "out"
    flags = ["--frames", "5", "--feedback-steps", "3", *(["--stream"] if stream else [])]
    assert main(["train", "--data", str(path), *flags, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    # --frames 5 with K = 3 cuts windows of 7 frames; the message says why 7
    assert "window of 7" in err and "--frames T, plus K - 1 with --feedback-steps K" in err
    assert not out.exists() or not any(out.iterdir())
