"""The varied training family and the out-of-distribution set (model_export.frames.scenes
and .ood): shapes, determinism, motion rules, and that the two never share a glyph."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export.frames import data, glyphs, scenes
from model_export.frames.ood import OOD, OOD_SEED, ood_horizon_split


@pytest.mark.parametrize("spec", [scenes.TRAIN_VARIED, OOD], ids=["train", "ood"])
def test_render_shape_range_and_determinism(spec: scenes.SceneSpec) -> None:
    a = scenes.render(spec, 6, seed=4)
    assert a.shape == (6, 16, 40, 40, 3)
    assert a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert a.max() >= 0.5  # glyphs are drawn
    np.testing.assert_array_equal(a, scenes.render(spec, 6, seed=4))
    assert not np.array_equal(a, scenes.render(spec, 6, seed=5))
    # A longer render starts with the shorter one's frames (the horizon relies on it).
    np.testing.assert_array_equal(scenes.render(spec, 6, seed=4, frames=20)[:, :16], a)


def test_training_and_ood_share_no_glyph_source_and_no_seed() -> None:
    assert not set(scenes.TRAIN_VARIED.fonts) & set(OOD.fonts)
    assert scenes.TRAIN_VARIED.sklearn_pool == "train"
    assert OOD.sklearn_pool == "test"  # images the digit split held out of training
    assert 16 not in OOD.sklearn_sizes  # and at scales training never draws
    training_seeds = set(data.SPLIT_SEEDS.values()) | set(dict(scenes.TRAIN_VARIED.seeds).values())
    assert OOD_SEED not in training_seeds


def test_ood_horizon_split_is_the_next_frame_set_extended() -> None:
    x, future = ood_horizon_split(4, 3)
    assert x.shape == (4, 15, 40, 40, 3) and future.shape == (4, 3, 40, 40, 3)
    seqs = scenes.render(OOD, 4, seed=OOD_SEED)
    np.testing.assert_array_equal(x, seqs[:, :15])
    np.testing.assert_array_equal(future[:, 0], seqs[:, 15])


@pytest.mark.parametrize("rule", ["reflect", "inset", "wrap"])
def test_each_bounce_rule_keeps_its_speed_limit_and_walls(rule: scenes.Bounce) -> None:
    spec = dataclasses.replace(OOD, bounces=(rule,))
    for seed in range(10):
        path = scenes.trajectory(np.random.default_rng(seed), spec, 100)
        if rule == "wrap":
            assert path.min() >= 0 and path.max() < data.CANVAS
            step = np.abs(np.diff(path, axis=0))
            step = np.minimum(step, data.CANVAS - step)  # across the seam
        else:
            low = scenes.INSET if rule == "inset" else 0
            assert path.min() >= low and path.max() <= data.CANVAS - glyphs.SPRITE - low
            step = np.abs(np.diff(path, axis=0))
        assert step.max() <= OOD.speed[1]


def test_augment_moves_pixels_and_permutes_colours_only() -> None:
    seqs = scenes.render(scenes.TRAIN_VARIED, 8, seed=1)
    before = seqs.copy()
    scenes.augment(seqs, np.random.default_rng(0))
    assert not np.array_equal(seqs, before)
    # Flips, transposes and channel permutations keep each frame's multiset of values.
    np.testing.assert_allclose(
        np.sort(seqs.reshape(8, 16, -1), axis=-1), np.sort(before.reshape(8, 16, -1), axis=-1)
    )


def test_varied_mix_draws_the_asked_share_from_each_family() -> None:
    mixed = scenes.varied_mix(10, split="validation", share=0.3, seed=0)
    plain = data.generate(7, seed=data.SPLIT_SEEDS["validation"], split="validation")
    assert mixed.shape == (10, 16, 40, 40, 3)
    found = sum(any(np.array_equal(m, p) for p in plain) for m in mixed)
    assert found == 7


def test_a_missing_font_says_how_to_install_it() -> None:
    with pytest.raises(glyphs.MissingFont, match="make fonts"):
        glyphs.font_glyph("NoSuchFont-Regular.ttf", 14, 3)


def test_fonts_are_found_first_where_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GPU machine has no Debian fonts: gpu.pack carries the files and gpu/run.sh
    # points MODEL_EXPORT_FONT_DIR at them. Here the installed ones are hidden the same way.
    installed = glyphs.font_glyph("DejaVuSans.ttf", 17, 4)
    carried = tmp_path / "carried"
    carried.mkdir()
    shutil.copyfile(glyphs.font_file("DejaVuSans.ttf"), carried / "DejaVuSans.ttf")
    monkeypatch.setattr(glyphs, "FONT_ROOT", tmp_path / "no-fonts-here")
    monkeypatch.setenv(glyphs.FONT_DIR_ENV, str(carried))
    glyphs.font_glyph.cache_clear()
    try:
        assert glyphs.font_file("DejaVuSans.ttf") == carried / "DejaVuSans.ttf"
        assert np.array_equal(glyphs.font_glyph("DejaVuSans.ttf", 17, 4), installed)
        # The family needs every one of its fonts: the first missing one is named at once.
        with pytest.raises(glyphs.MissingFont, match=r"DejaVuSans-Bold\.ttf is not under "):
            scenes.require_fonts(scenes.TRAIN_VARIED)
    finally:
        glyphs.font_glyph.cache_clear()


def test_train_refuses_a_varied_share_outside_zero_to_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from model_export.__main__ import main

    assert main(["train", "--varied-share", "1.5"]) == 2
    assert "--varied-share 1.5: give a share in [0, 1]" in capsys.readouterr().err


def test_each_scene_is_described_by_what_render_draws() -> None:
    drawn = scenes.draw_scenes(OOD, 12, seed=OOD_SEED, frames=16)
    seqs = scenes.render(OOD, 12, seed=OOD_SEED, frames=16)
    assert {s.occluder is None for s in drawn} == {True, False}  # both kinds are checked
    for scene, seq in zip(drawn, seqs, strict=True):
        words = scene.describe()
        assert words.count(" px, ") + 1 == len(scene.sprites), words
        assert scenes.BACKGROUND_WORDS[scene.background_kind] in words
        bar = scene.occluder
        assert ("bar" in words) == (bar is not None), words
        if bar is not None:
            # The bar said to be there is in every frame, in front of every glyph.
            band = slice(bar.at, bar.at + bar.thick)
            region = seq[:, band, :] if bar.orientation == "horizontal" else seq[:, :, band]
            np.testing.assert_array_equal(region, np.broadcast_to(bar.colour, region.shape))
        fastest = max(v for sprite in scene.sprites for v in sprite.motion.speed)
        assert fastest <= OOD.speed[1] and f"{fastest} px per frame" in words, words
