"""An opt-in int8 variant of the served graph, quantized with onnxruntime's own tools.

The float32 graph (``convlstm.onnx``) stays the default: it matches Keras to
1e-4. The int8 graph (``int8/convlstm_int8.onnx``) trades a little next-frame
quality (its card and the README report it beside float32 on the test split)
for about half the CPU time: onnxruntime runs its quantized convolutions with
the CPU's int8 dot-product instructions (AVX-512 VNNI here).

Tried on the project's 2-core CPU before choosing these options (mean squared
error of the next frame on 64 test sequences; float32: 0.00754): static QDQ
with uint8 activations, per-channel int8 weights and min-max calibration,
0.00778 at about 0.45x float32's time per sequence at batch 8; percentile
calibration, 0.00777 for 2.5x the calibration time; int8 activations, 0.00778
(asymmetric) and 0.00796 (symmetric); ``quantize_dynamic`` (ConvInteger),
0.00753 but slower than float32 (161-177 against 141 ms per sequence). Only the
convolutions are quantized: the gates and the cell state stay float32, so the
recurrence does not accumulate rounding in its state.

bfloat16 is not an option on onnxruntime's CPU provider: it registers no
bfloat16 arithmetic kernels (no Conv, no MatMul; onnxruntime issues #20630 and
#28768), so a bfloat16 graph fails to load. The project's CPU machines report
AVX-512 BF16, FP16 and VNNI but no AMX flags, so int8 through VNNI is the
reduced precision this hardware and runtime offer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard, card_path, read_card, sha256_of
from model_export.export.keras_to_onnx import onnx_predict
from model_export.export.variant import write_variant_card
from model_export.files import int8_path
from model_export.frames import data
from model_export.frames.model import INPUT_NAME

CALIBRATION_SEQUENCES = 64
CALIBRATION_BATCH = 8
CHECK_SEQUENCES = 8
# Mean |int8 - float32| over the predicted pixels (values in [0, 1]) on the
# check sequences. The committed graph is at 0.004; a broken quantization
# (a bad scale, a wrong calibration input) lands far above.
MEAN_ABS_TOLERANCE = 0.01
INT8_DESCRIPTION = (
    "int8: the fast graph with its convolutions quantized by onnxruntime "
    "(static QDQ, int8 weights per output channel, uint8 activations calibrated by min-max "
    "on training sequences); gates and cell state in float32"
)


class QuantizationError(RuntimeError):
    """The int8 graph strays too far from the float32 graph it was made from."""


def compare(reference: Path, int8: Path, x: NDArray[np.float32]) -> dict[str, float]:
    """How far the int8 graph's predictions are from the reference graph's on ``x``."""
    diff = np.abs(onnx_predict(int8, x) - onnx_predict(reference, x))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def _checked(reference: Path, int8: Path, tolerance: float) -> dict[str, float]:
    """``compare`` on the check sequences, refusing a mean difference above ``tolerance``."""
    result = compare(reference, int8, check_inputs())
    if not result["mean_abs_diff"] <= tolerance:
        raise QuantizationError(
            f"{int8.name}: mean |int8 - float32| {result['mean_abs_diff']:.3g} "
            f"exceeds {tolerance:g}"
        )
    return result


def check_inputs(n: int = CHECK_SEQUENCES) -> NDArray[np.float32]:
    x, _ = data.inputs_and_targets(data.generate_split(n, "test"), every_step=False)
    return x


def _quantize(source: Path, out: Path, calibration: NDArray[np.float32]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(
                {INPUT_NAME: calibration[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(calibration), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self._batches, None)

    # quantize_static advises a pre-processing pass on every call; it would
    # only re-run shape inference on a graph whose shapes are already static.
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(source),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        quiet.setLevel(level)


def quantize(
    onnx_path: Path,
    out: Path | None = None,
    *,
    calibration_sequences: int = CALIBRATION_SEQUENCES,
    tolerance: float = MEAN_ABS_TOLERANCE,
) -> ModelCard:
    """Write the int8 variant of ``onnx_path`` and its card; returns the card.

    Calibrates on the first ``calibration_sequences`` training sequences and
    refuses (``QuantizationError``, nothing written) a graph whose mean
    absolute difference from ``onnx_path`` on test sequences exceeds
    ``tolerance``.
    """
    out = out or int8_path(onnx_path)
    read_card(card_path(onnx_path))  # a source without its card fails before the work
    calibration, _ = data.inputs_and_targets(
        data.generate_split(calibration_sequences, "train"), every_step=False
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp")
    try:
        _quantize(onnx_path, tmp, calibration)
        check = _checked(onnx_path, tmp, tolerance)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)

    return write_variant_card(
        onnx_path,
        out,
        kind="int8",
        description=INT8_DESCRIPTION,
        producer="tf2onnx + onnxruntime.quantization",
        graph_extra={"calibration": {"split": "train", "sequences": calibration_sequences}},
        parity={
            **check,
            "tolerance_mean_abs_diff": tolerance,
            "sequences": CHECK_SEQUENCES,
            "split": "test",
        },
    )


def check_int8(onnx_path: Path, tolerance: float = MEAN_ABS_TOLERANCE) -> dict[str, float]:
    """Check that the committed int8 variant was made from the committed ``onnx_path``.

    Its card must record the int8 file's sha256 and, as its source, the
    float32 file's; its predictions must stay within ``tolerance``.
    """
    out = int8_path(onnx_path)
    card = read_card(card_path(out))
    source = card.graph.source if card.graph else None
    recorded_source = source.sha256 if source else None
    for path, recorded in ((out, card.sha256), (onnx_path, recorded_source)):
        actual = sha256_of(path)
        if recorded != actual:
            raise QuantizationError(
                f"{out.name} card: {path.name} sha256 {recorded} but file is {actual}"
            )
    return _checked(onnx_path, out, tolerance)
