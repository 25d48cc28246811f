"""Any Keras model file -> ONNX and a model card, with a parity check.

``python -m model_export export --keras PATH.keras --name NAME --models DIR``
writes ``DIR/NAME.onnx`` and ``DIR/NAME.json``. The steps, in order:

- load the file; a ``Sequential`` model is rebuilt as a functional one over the
  same layers (tf2onnx cannot convert ``Sequential``, tf2onnx issue #2448);
- the task: stated (``--task``), or ``next_frame`` for a 5-D (N, T, H, W, C)
  input and ``tensor`` for any other;
- the input's kind and range: ``image`` (pixels in [0, 1]) for frames of 1, 3 or 4
  channels, else ``tensor``, in no range unless ``--range`` states one (a series model
  over standardised values takes negative ones); the CLI prints the choice;
- the graph: the fast rebuild (``model_export.export.fast``) where the stack fits its
  rules, else the plain tf2onnx export; the card says which and why;
- parity: Keras against onnxruntime on seeded random inputs (in the range, or
  standard normal for a tensor without one), and on ``--data`` sequences when given;
- only then the two files, each written to a temporary name and moved into place.

Every refusal is an ``ExportError`` with a one-line message; nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from convlstm_card import (
    Format,
    Graph,
    InputKind,
    Layer,
    ModelCard,
    OutputKind,
    ParameterCounts,
    SeriesScaling,
    SeriesSpec,
    Task,
    TensorSpec,
    card_path,
    frequency_word,
    infer_series,
    series_problem,
    sha256_of,
    write_card,
)
from model_export.export.fast import GRAPH_DESCRIPTION, build_fast_convlstm, fast_graph_refusal
from model_export.export.keras_to_onnx import (
    MODEL_VERSION,
    OPSET,
    PARITY_SEQUENCES,
    PARITY_TOLERANCE,
    PLAIN_DESCRIPTION,
    to_onnx_bytes,
    tool_versions,
)
from model_export.frames.model import INPUT_NAME, OUTPUT_NAME, parameter_table

PARITY_SEED = 0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
Range = tuple[float, float]
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message is one line saying why."""


@dataclass(frozen=True)
class SeriesOptions:
    """What ``--task series`` records beyond the framing the shapes give."""

    frequency: str | None = None
    targets: list[int] | None = None
    feature_names: list[str] | None = None
    scaling: SeriesScaling | None = None
    """None: the model takes and gives the client's own units."""


@dataclass(frozen=True)
class ExportedModel:
    onnx_path: Path
    card: ModelCard
    input_choice: str = ""
    """What the input was taken to be, and why (the CLI prints it)."""


IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts an image holds (L, RGB, RGBA): frames of these are pixels."""
UNIT_RANGE: Range = (0.0, 1.0)


def load_keras(path: Path) -> keras.Model:
    """The model in ``path``, functional (a ``Sequential`` one rebuilt over its layers)."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    with path.open("rb") as f:
        is_hdf5 = f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    if not (zipfile.is_zipfile(path) or is_hdf5):
        raise ExportError(
            f"{path}: not a Keras model file (a .keras file is a zip archive, an .h5 one HDF5)"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many kinds for a file it cannot read
        # A custom layer whose code is not imported here, say.
        raise ExportError(f"{path}: Keras could not load it ({_first_line(err)})") from err
    if not isinstance(model, keras.Model):
        raise ExportError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    if isinstance(model, keras.Sequential):
        model = _functional(model, path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"{path}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "one of each is exported"
        )
    shape = tuple(model.input.shape[1:])
    if any(d is None for d in shape) or any(d is None for d in model.output.shape[1:]):
        raise ExportError(
            f"{path}: input {shape} or output {tuple(model.output.shape[1:])} has an axis "
            "of free size; only the batch axis may be free"
        )
    return model


def _functional(model: keras.Sequential, path: Path) -> keras.Model:
    try:
        shape = model.input_shape
    except (AttributeError, ValueError) as err:
        raise ExportError(f"{path}: the Sequential model has no input shape") from err
    inputs = keras.Input(shape=shape[1:], batch_size=None)
    x = inputs
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def resolve_task(model: keras.Model, stated: Task | None) -> Task:
    """The stated task, checked against the input; or the one the input implies:
    ``next_frame`` for a sequence of frames (N, T, H, W, C), else ``tensor``."""
    rank = len(model.input.shape)
    if stated == "next_frame" and rank != 5:
        raise ExportError(
            f"task next_frame takes (N, T, H, W, C) frames; the input is {_shape(model.input)}"
        )
    if stated is not None:
        return stated
    return "next_frame" if rank == 5 else "tensor"


def input_kind(
    model: keras.Model, task: Task, stated_range: Range | None
) -> tuple[InputKind, Range | None, str]:
    """The input's kind, the range the card states, and a sentence saying why. Frames of
    1, 3 or 4 channels are an image: pixels in [0, 1]. Anything else is a tensor, in the
    range given or in none: a range nobody declared would refuse a model's real inputs
    (standardised values are negative half of the time)."""
    shape = "(" + ", ".join(str(d) for d in _shape(model.input)) + ")"
    channels = int(model.input.shape[-1])
    if task == "next_frame":
        if stated_range is not None and stated_range != UNIT_RANGE:
            low, high = stated_range
            raise ExportError(
                f"--range {low:g} {high:g}: a next_frame model takes pixel values in [0, 1]; "
                "export it with --task tensor to state another range"
            )
        if channels in IMAGE_CHANNELS:
            why = f"input {shape}: frames of {channels} channel(s), an image: pixels in [0, 1]"
            return "image", UNIT_RANGE, why
        # The next-frame adapter scales 8-bit frames by 1/255 and takes floats in [0, 1]
        # only, whatever the channels hold.
        why = (
            f"input {shape}: frames of {channels} channels, which no image holds, so a "
            "tensor; the next_frame task takes values in [0, 1]"
        )
        return "tensor", UNIT_RANGE, why
    reason = (
        f"input {shape}: not frames of 1, 3 or 4 channels" if task == "tensor" else f"task {task}"
    )
    if stated_range is None:
        return "tensor", None, f"{reason}, so a tensor, in no range (--range LOW HIGH states one)"
    low, high = stated_range
    return "tensor", stated_range, f"{reason}, so a tensor, in [{low:g}, {high:g}] as --range says"


def output_kind(input_shape: list[int], output_shape: list[int]) -> OutputKind:
    """``next_frame`` for one step of the input's frame size, ``frame_per_step`` for
    one such frame per input step, ``tensor`` for anything else (batch axes left out)."""
    if len(input_shape) >= 2 and output_shape == input_shape[1:]:
        return "next_frame"
    if len(input_shape) >= 2 and output_shape == input_shape:
        return "frame_per_step"
    return "tensor"


def parity_inputs(
    model: keras.Model, value_range: Range | None, data: Path | None
) -> list[tuple[str, NDArray[np.float32]]]:
    """Seeded random inputs, uniform in ``value_range`` (standard normal where there is
    none), and the sequences in ``data`` if given."""
    shape = tuple(int(d) for d in model.input.shape[1:])
    rng = np.random.default_rng(PARITY_SEED)
    size = (PARITY_SEQUENCES, *shape)
    if value_range is None:
        random = rng.standard_normal(size=size).astype(np.float32)
        name = f"{PARITY_SEQUENCES} standard normal, seed {PARITY_SEED}"
    else:
        low, high = value_range
        random = rng.uniform(low, high, size=size).astype(np.float32)
        name = f"{PARITY_SEQUENCES} uniform random in [{low:g}, {high:g}], seed {PARITY_SEED}"
    sets = [(name, random)]
    if data is not None:
        sets.append((f"{data}", load_sequences(data, shape)))
    return sets


def load_sequences(path: Path, shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Sequences of the model's input ``shape`` from a ``.npy`` or ``.npz`` file (the
    array named ``x``, or its only one); one sequence without a batch axis is taken too."""
    try:
        loaded: Any = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ExportError(f"--data {path}: not a NumPy file ({_first_line(err)})") from err
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        if "x" not in names and len(names) != 1:
            raise ExportError(f"--data {path}: holds arrays {names}; name one x, or keep one")
        loaded = loaded["x" if "x" in names else names[0]]
    array = np.asarray(loaded)
    if array.shape == shape:
        array = array[None]
    if array.shape[1:] != shape or len(array) == 0:
        raise ExportError(
            f"--data {path}: shape {array.shape} is not (n, {', '.join(map(str, shape))})"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ExportError(f"--data {path}: dtype {array.dtype} is not numeric")
    return array[:64].astype(np.float32)


def convert(model: keras.Model, input_name: str, output_name: str) -> bytes:
    """``to_onnx_bytes``, with tf2onnx's failures (and its unconverted ops) as ``ExportError``."""
    import onnx

    try:
        onnx_bytes = to_onnx_bytes(model, OPSET, input_name=input_name, output_name=output_name)
    except Exception as err:  # tf2onnx raises whatever its TensorFlow tracing raised
        raise ExportError(f"tf2onnx could not convert the model ({_first_line(err)})") from err
    graph = onnx.load_from_string(onnx_bytes).graph
    # tf2onnx keeps an op it cannot convert as a node of the TensorFlow op's name.
    unknown = sorted(
        {
            n.op_type
            for n in graph.node
            if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)
        }
    )
    if unknown:
        raise ExportError(f"tf2onnx could not convert the TensorFlow op(s) {', '.join(unknown)}")
    return onnx_bytes


def max_abs_diff(model: keras.Model, onnx_bytes: bytes, x: NDArray[np.float32]) -> float:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as err:  # onnxruntime's errors share no base class
        raise ExportError(f"onnxruntime could not run the ONNX graph ({_first_line(err)})") from err
    expected = np.asarray(model.predict(x, verbose=0))
    if expected.shape != got.shape:
        raise ExportError(f"output shapes differ: Keras {expected.shape}, ONNX {got.shape}")
    return float(np.max(np.abs(expected.astype(np.float64) - got)))


def _checked(
    model: keras.Model,
    onnx_bytes: bytes,
    inputs: list[tuple[str, NDArray[np.float32]]],
    tolerance: float,
    what: str,
) -> dict[str, float]:
    diffs = {name: max_abs_diff(model, onnx_bytes, x) for name, x in inputs}
    for name, diff in diffs.items():
        if not diff <= tolerance:
            raise ExportError(
                f"parity failed: the {what} ONNX graph differs from Keras by {diff:.3g} "
                f"(max abs, allowed {tolerance:g}) on {name}"
            )
    return diffs


def export_keras(
    keras_path: Path,
    *,
    name: str,
    models_dir: Path,
    task: Task | None = None,
    value_range: Range | None = None,
    data: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    series: SeriesOptions | None = None,
) -> ExportedModel:
    """Export ``keras_path`` as ``models_dir/name.onnx`` with its card, or raise
    ``ExportError``. ``value_range``: the input values the model takes, where the user
    states them; ``None`` leaves a tensor input unbounded (an image's is [0, 1])."""
    if not NAME_PATTERN.fullmatch(name):
        raise ExportError(f"--name {name!r}: use letters, digits, _ and - (no dots or slashes)")
    if value_range is not None and not value_range[0] < value_range[1]:
        low, high = value_range
        raise ExportError(f"--range {low:g} {high:g}: the low end must be below the high end")
    model = load_keras(keras_path)
    task = resolve_task(model, task)
    kind_of_input, value_range, input_choice = input_kind(model, task, value_range)
    in_shape = [int(d) for d in model.input.shape[1:]]
    out_shape = [int(d) for d in model.output.shape[1:]]
    if series is not None and task != "series":
        raise ExportError("--frequency, --target, --offset and --scale go with --task series")
    framing = series_spec(in_shape, out_shape, series) if task == "series" else None
    kind = output_kind(in_shape, out_shape)
    input_name = INPUT_NAME if task == "next_frame" else "inputs"
    output_name = OUTPUT_NAME if kind == "next_frame" else "outputs"
    inputs = parity_inputs(model, value_range, data)

    onnx_bytes, graph, diffs = _served_graph(
        model, inputs, tolerance, input_name=input_name, output_name=output_name
    )
    onnx_path = models_dir / f"{name}.onnx"
    rows = parameter_table(model)
    card = ModelCard(
        name=name,
        version=MODEL_VERSION,
        file=onnx_path.name,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        task=task,
        output_kind=kind,
        format=Format(onnx_opset=OPSET, producer="tf2onnx"),
        graph=graph,
        inputs=[
            TensorSpec(
                name=input_name,
                shape=["N", *in_shape],
                dtype="float32",
                kind=kind_of_input,
                range=value_range,
            )
        ],
        outputs=[TensorSpec(name=output_name, shape=["N", *out_shape], dtype="float32")],
        layers=[Layer.model_validate(asdict(r)) for r in rows],
        parameters=ParameterCounts(
            body=sum(r.params for r in rows if r.part == "body"),
            head=sum(r.params for r in rows if r.part == "head"),
            total=sum(r.params for r in rows),
        ),
        parity={
            "max_abs_diff": max(diffs.values()),
            "tolerance": tolerance,
            "measure": "max abs difference, Keras model.predict against onnxruntime (CPU)",
            "inputs": diffs,
        },
        versions=tool_versions(),
        source={"keras_file": str(keras_path), "sha256": sha256_of(keras_path)},
    )
    if framing is not None:
        card.series = framing
    card = with_training_record(card, keras_path)
    _write(onnx_path, onnx_bytes, card)
    return ExportedModel(onnx_path, card, input_choice)


def series_spec(
    in_shape: list[int], out_shape: list[int], options: SeriesOptions | None
) -> SeriesSpec:
    """The card's ``series`` section: the framing the shapes give, with ``options``."""
    options = options or SeriesOptions()
    try:
        spec = infer_series(in_shape, out_shape, options.targets)
    except ValueError as err:
        raise ExportError(f"--task series: {err} (use --target)") from err
    frequency = None
    if options.frequency is not None:
        frequency = frequency_word(options.frequency)
        if frequency is None:
            raise ExportError(f"--frequency {options.frequency!r}: not one of KServe's frequencies")
    spec = spec.model_copy(
        update={
            "frequency": frequency,
            "feature_names": options.feature_names,
            "scaling": options.scaling,
        }
    )
    problem = series_problem(spec, in_shape, out_shape)
    if problem is not None:
        raise ExportError(f"--task series: {problem}")
    return spec


def with_training_record(card: ModelCard, keras_path: Path) -> ModelCard:
    """``card`` with the data, normalisation, training and held-out scores of the
    record ``train --data`` wrote beside ``keras_path``, where that record is of this
    very file (its sha256); else ``card`` as it is."""
    import json

    from model_export.frames.train_data import record_path

    path = record_path(keras_path)
    if not path.is_file():
        return card
    try:
        record = json.loads(path.read_text())
        recorded_sha = record["checkpoint"]["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{path}: not a training record ({_first_line(err)})") from err
    if recorded_sha != sha256_of(keras_path):
        return card  # the checkpoint changed since; its record no longer describes it
    norm = record["data"]["normalisation"]
    training = {k: v for k, v in record.items() if k not in ("data", "evaluation", "history")}
    return card.model_copy(
        update={
            "normalisation": f"{norm['kind']}: {norm['formula']}; the model takes and gives "
            "frames in [0, 1], so send it frames normalised the same way",
            "data": record["data"],
            "training": {**training, "record": path.name},
            "evaluation": record["evaluation"],
        }
    )


def _served_graph(
    model: keras.Model,
    inputs: list[tuple[str, NDArray[np.float32]]],
    tolerance: float,
    *,
    input_name: str,
    output_name: str,
) -> tuple[bytes, Graph, dict[str, float]]:
    """The fast graph where the model fits its rules and it passes parity, else the plain
    export; with the card's account of which, and its parity per input set."""
    refusal = fast_graph_refusal(model)
    if refusal is None:
        try:
            fast_bytes = convert(build_fast_convlstm(model), input_name, output_name)
            diffs = _checked(model, fast_bytes, inputs, tolerance, "fast")
        except ExportError as err:  # the plain export may still match
            refusal = f"the fast graph failed: {err}"
        else:
            reason = "a ConvLSTM2D stack with a Conv2D head, which the fast graph rebuilds"
            return (
                fast_bytes,
                Graph(kind="fast", description=GRAPH_DESCRIPTION, reason=reason),
                diffs,
            )
    onnx_bytes = convert(model, input_name, output_name)
    diffs = _checked(model, onnx_bytes, inputs, tolerance, "plain")
    graph = Graph(kind="plain", description=PLAIN_DESCRIPTION, reason=f"not fast: {refusal}")
    return onnx_bytes, graph, diffs


def _write(onnx_path: Path, onnx_bytes: bytes, card: ModelCard) -> None:
    """Both files under temporary names first, then each moved into place."""
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    json_path = card_path(onnx_path)
    tmp_onnx = onnx_path.with_name(f".{onnx_path.name}.tmp{os.getpid()}")
    tmp_json = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    try:
        tmp_onnx.write_bytes(onnx_bytes)
        write_card(tmp_json, card)
        tmp_onnx.replace(onnx_path)
        tmp_json.replace(json_path)
    finally:
        tmp_onnx.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)


def _shape(tensor: Any) -> tuple[Any, ...]:
    return ("N", *tensor.shape[1:])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."
