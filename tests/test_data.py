import numpy as np
import pytest

from model_export.frames import data


def test_shape_dtype_and_range() -> None:
    seqs = data.generate(12, seed=5)
    assert seqs.shape == (12, 16, 40, 40, 3)
    assert seqs.dtype == np.float32
    assert seqs.min() >= 0.0
    assert seqs.max() <= 1.0
    assert seqs.max() > 0.3  # digits are actually drawn


def test_same_seed_same_sequences_and_other_seed_differs() -> None:
    a = data.generate(6, seed=11)
    b = data.generate(6, seed=11)
    c = data.generate(6, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_splits_use_fixed_distinct_seeds() -> None:
    assert len(set(data.SPLIT_SEEDS.values())) == 3
    np.testing.assert_array_equal(
        data.generate_split(3, "validation"),
        data.generate(3, seed=data.SPLIT_SEEDS["validation"], split="validation"),
    )


def test_test_split_draws_only_held_out_digits() -> None:
    train = data.digit_pool("train").reshape(-1, 256)
    test = data.digit_pool("test").reshape(-1, 256)
    assert len(train) + len(test) == 1797
    assert len(test) == round(1797 * data.TEST_DIGIT_FRACTION)
    train_rows = {row.tobytes() for row in train}
    # A few images are exact duplicates in the source set; almost none may be shared.
    shared = sum(row.tobytes() in train_rows for row in test)
    assert shared <= 5


@pytest.mark.parametrize("seed", range(20))
def test_trajectories_stay_inside_and_move_one_to_three_px(seed: int) -> None:
    path = data._trajectory(np.random.default_rng(seed), 200)
    assert path.min() >= 0
    assert path.max() <= data.MAX_POS
    steps = np.abs(np.diff(path, axis=0))
    # A bounce folds the step back, so it can shrink but never grow.
    assert steps.max() <= 3
    # It lands where it started only when a 2 px step bounces from 1 px off
    # an edge; nowhere else does a digit stand still.
    still = path[:-1][(steps == 0).any(axis=1)]
    edge_gap = np.minimum(still, data.MAX_POS - still)
    assert ((edge_gap == 1).any(axis=1)).all()


def test_a_single_digit_is_never_clipped_by_the_canvas() -> None:
    # One digit, no overlap: if it stayed fully inside, every frame holds the same ink.
    seqs = data.generate(30, seed=3, frames=40, digits=(1, 1))
    ink = seqs.sum(axis=(2, 3, 4))
    np.testing.assert_allclose(ink, ink[:, :1].repeat(40, axis=1), rtol=1e-5)


def test_colours_are_tints_in_range() -> None:
    seqs = data.generate(30, seed=4, frames=1, digits=(1, 1))
    for frame in seqs[:, 0]:
        brightest = frame.reshape(-1, 3)[frame.sum(axis=-1).argmax()]
        # The brightest pixel of a digit is its full tint: every channel in [0.3, 1].
        assert brightest.min() >= 0.3 - 1e-6


def test_inputs_and_targets() -> None:
    seqs = data.generate(2, seed=1)
    x, y_last = data.inputs_and_targets(seqs, every_step=False)
    _, y_all = data.inputs_and_targets(seqs, every_step=True)
    assert x.shape == (2, 15, 40, 40, 3)
    assert y_last.shape == (2, 40, 40, 3)
    assert y_all.shape == (2, 15, 40, 40, 3)
    np.testing.assert_array_equal(y_all[:, -1], y_last)
    np.testing.assert_array_equal(y_all[:, 0], x[:, 1])


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="digits"):
        data.generate(1, seed=0, digits=(0, 2))


def test_skip_returns_the_sequences_after_the_first_n() -> None:
    whole = data.generate(6, seed=4)
    np.testing.assert_array_equal(data.generate(2, seed=4, skip=4), whole[4:])
    with pytest.raises(ValueError, match="skip >= 0"):
        data.generate(2, seed=4, skip=-1)
