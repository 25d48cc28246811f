"""`train --precision auto`: bf16 only where the hardware does bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.frames import precision
from model_export.frames.precision import cpu_flags, resolve_precision


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512_bf16\n\nflags : other\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "gpu", "expected"),
    [
        ({"avx2", "fma"}, False, "float32"),
        ({"avx2", "avx512_bf16"}, False, "mixed_bfloat16"),
        ({"amx_bf16"}, False, "mixed_bfloat16"),
        ({"avx2"}, True, "mixed_bfloat16"),
    ],
)
def test_auto_picks_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], gpu: bool, expected: str
) -> None:
    # The GPU probe is replaced: no GPU can be attached to the test machine.
    monkeypatch.setattr(precision, "accelerator_present", lambda: gpu)
    assert resolve_precision("auto", flags=frozenset(flags)) == expected


def test_an_explicit_choice_is_kept_and_a_wrong_one_refused() -> None:
    assert resolve_precision("mixed_bfloat16", flags=frozenset()) == "mixed_bfloat16"
    assert resolve_precision("float32", flags=frozenset({"avx512_bf16"})) == "float32"
    with pytest.raises(ValueError, match="choose one of auto, mixed_bfloat16, float32"):
        resolve_precision("fp8")


def test_this_machine_gets_a_policy_keras_knows() -> None:
    import keras

    policy = resolve_precision("auto")
    assert policy in ("mixed_bfloat16", "float32")
    keras.mixed_precision.Policy(policy)  # raises on a name Keras does not know
