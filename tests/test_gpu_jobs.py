"""The GPU jobs rehearsed on the CPU: packing in parts and receiving them as the device
calls do, the infer and train jobs' dry runs, and the real onnxruntime-gpu wheel
falling back to the CPU provider on a machine with no NVIDIA driver."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.server import free_port, serve
from gpu import pack, receive

REPO = Path(__file__).resolve().parent.parent
GPU_ENV_PYTHON = REPO / ".venv-gpu-fallback" / "bin" / "python"
COMMITTED_MODEL = REPO / "models" / "convlstm.onnx"


def fake_runtime_wheel(folder: Path) -> Path:
    """A wheel with the pinned onnxruntime-gpu name and a RECORD of sha256s, holding
    incompressible bytes so that the archive really splits into several parts."""
    version = pack.pins()["gpu"][0].split("==")[1]
    wheel = folder / f"onnxruntime_gpu-{version}-cp312-cp312-manylinux_2_28_x86_64.whl"
    rng = np.random.default_rng(0)
    files = {
        "onnxruntime/__init__.py": b"__version__ = 'fake'\n",
        "onnxruntime/capi/libfake.so": rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes(),
    }
    record = io.StringIO()
    writer = csv.writer(record)
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([f"onnxruntime_gpu-{version}.dist-info/RECORD", "", ""])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"onnxruntime_gpu-{version}.dist-info/RECORD", record.getvalue())
    return wheel


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gpu.pack`` over the fake runtime wheel, 1 MiB parts; the job wheels are the
    real ones pip downloads for the GPU machine's Python 3.12."""
    tmp = tmp_path_factory.mktemp("pack")
    source = tmp / "source"
    source.mkdir()
    fake_runtime_wheel(source)
    out = tmp / "out"
    code = pack.main(
        ["--out", str(out), "--wheel-dir", str(source), "--level", "1", "--part-mib", "1"]
    )
    assert code == 0
    return out


def test_pack_splits_into_parts_and_plans_one_call_each(packed: Path) -> None:
    manifest = json.loads((packed / "manifest.json").read_text())
    parts = manifest["onnxruntime_gpu"]["parts"]
    assert len(parts) >= 3
    assert all(p["bytes"] <= 1024 * 1024 for p in parts)
    assert sum(p["bytes"] for p in parts) == manifest["onnxruntime_gpu"]["archive_bytes"]
    for p in parts:
        assert receive.sha256_of(packed / p["file"]) == p["sha256"]
    assert len(manifest["calls"]) == len(parts)
    assert manifest["calls"][-1]["command"] == "bash gpu/run.sh diagnose"
    infer = {w["file"].split("-")[0] for w in manifest["infer"]}
    assert {"fastapi", "uvicorn", "pydantic_core", "onnxconverter_common"} <= infer
    assert "numpy" not in infer and "onnxruntime_gpu" not in infer
    assert {w["file"].split("-")[0] for w in manifest["train"]} >= {"keras", "namex", "optree"}
    # One list of pins: the GPU image's CUDA and cuDNN wheels, as pyproject.toml has them.
    assert manifest["cuda_libraries"] == pack.pins()["cuda"]
    assert any(p.startswith("nvidia-cudnn-cu13==") for p in manifest["cuda_libraries"])


def test_cuda_libraries_are_held_to_the_images_pins() -> None:
    import importlib.metadata

    numpy = importlib.metadata.version("numpy")
    compared = receive.cuda_libraries(
        [f"numpy=={numpy}", "pytest==0.0.1", "nvidia-no-such-library==1.0"]
    )
    assert compared["same"] == ["numpy"]
    assert compared["differ"] == {
        "pytest": {"image": "0.0.1", "here": importlib.metadata.version("pytest")}
    }
    assert compared["absent"] == ["nvidia-no-such-library"]


def one_call(packed: Path, carried: Path, part: str) -> Path:
    """The repository as one device call sees it: the manifest and one part."""
    if carried.exists():
        shutil.rmtree(carried)
    carried.mkdir()
    shutil.copy(packed / "manifest.json", carried)
    shutil.copy(packed / part, carried)
    return carried


def test_receive_part_by_part_then_install(packed: Path, tmp_path: Path) -> None:
    manifest = json.loads((packed / "manifest.json").read_text())
    parts = [p["file"] for p in manifest["onnxruntime_gpu"]["parts"]]
    stage, target, carried = tmp_path / "stage", tmp_path / "site", tmp_path / "carried"
    for part in parts[:-1]:
        call = ["--pack", str(one_call(packed, carried, part)), "--stage", str(stage)]
        assert receive.main(call) == 0
    last = one_call(packed, carried, parts[-1])
    # Installing before the last part arrives must refuse, not install half a runtime.
    (stage / parts[0]).rename(tmp_path / "held-back")
    args = ["--pack", str(last), "--stage", str(stage), "--target", str(target)]
    assert receive.main([*args, "--install", "infer"]) == 1
    (tmp_path / "held-back").rename(stage / parts[0])
    shutil.copytree(packed / "infer", last / "infer")
    record = tmp_path / "out" / "cuda_libraries.json"
    assert receive.main([*args, "--install", "infer", "--record", str(record)]) == 0
    compared = json.loads(record.read_text())
    names = {p.split("==")[0] for p in manifest["cuda_libraries"]}
    assert set(compared["same"]) | set(compared["differ"]) | set(compared["absent"]) == names
    assert (target / "onnxruntime" / "capi" / "libfake.so").stat().st_size == 3_000_000
    assert (target / "fastapi").is_dir() and (target / "onnxconverter_common").is_dir()


def test_the_train_call_carries_the_varied_familys_fonts(packed: Path, tmp_path: Path) -> None:
    from model_export.frames import glyphs

    manifest = json.loads((packed / "manifest.json").read_text())
    fonts = packed / "train" / "fonts"
    assert sorted(f["file"] for f in manifest["train_fonts"]) == sorted(glyphs.TRAIN_FONTS)
    for entry in manifest["train_fonts"]:
        installed = glyphs.font_file(entry["file"])
        assert (fonts / entry["file"]).read_bytes() == installed.read_bytes()
        assert entry["sha256"] == hashlib.sha256(installed.read_bytes()).hexdigest()
    # gpu/run.sh points the training at the carried folder.
    assert (
        'MODEL_EXPORT_FONT_DIR="$PWD/.gpu-pack/train/fonts"'
        in (REPO / "gpu" / "run.sh").read_text()
    )
    # A font that is not the packed one stops the train install before pip runs.
    copy = tmp_path / "pack"
    shutil.copytree(packed / "train", copy / "train")
    (copy / "train" / "fonts" / glyphs.TRAIN_FONTS[0]).write_bytes(b"not a font")
    with pytest.raises(
        SystemExit, match=f"{glyphs.TRAIN_FONTS[0]}: missing or not the packed font"
    ):
        receive.install_wheels(copy, "train", tmp_path / "site", manifest)
    assert not (tmp_path / "site").exists()


def test_receive_refuses_a_corrupt_part(packed: Path, tmp_path: Path) -> None:
    manifest = json.loads((packed / "manifest.json").read_text())
    part = manifest["onnxruntime_gpu"]["parts"][0]["file"]
    carried = one_call(packed, tmp_path / "carried", part)
    data = bytearray((carried / part).read_bytes())
    data[100] ^= 0xFF
    (carried / part).write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="sha256 differs"):
        receive.main(["--pack", str(carried), "--stage", str(tmp_path / "stage")])


@pytest.mark.slow
def test_infer_dry_run_runs_every_section(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpu.infer", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "infer.json").read_text())
    failed = {k: v["error"] for k, v in record.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    assert set(record["parity"]) >= {"convlstm", "convlstm.plain", "cnn_lstm"}
    graphs = {k: v for k, v in record["parity"].items() if isinstance(v, dict)}
    assert all(r["max_abs_diff"] == 0.0 for r in graphs.values()), graphs
    assert record["fp16"]["parity_vs_fp32"]["max_abs_diff"] < 0.05
    loads = record["service"]["load"]
    assert [r["concurrency"] for r in loads] == [1, 2]
    assert all(set(r["statuses"]) == {"200"} and r["req_per_s"] > 0 for r in loads)
    variants = record["service_variants"]
    assert {"as served", "one worker", "no padding"} <= set(variants)
    assert all(
        v["statuses"] == {"200": v["statuses"].get("200", 0)}
        for v in variants.values()
        if isinstance(v, dict) and "settings" in v
    )
    report = (tmp_path / "infer.md").read_text()
    assert "DRY RUN" in report and "one suspect removed" in report


@pytest.mark.slow
def test_diagnose_dry_run_runs_every_section(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpu.diagnose", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "diagnose.json").read_text())
    failed = {k: v["error"] for k, v in record.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    raw = record["raw"]
    assert raw["provider"] == "CPUExecutionProvider" and raw["turns_over_fixed"] > 0
    assert {"1 and 2 in turn, a session per size", "two threads on one session, two sizes"} <= set(
        raw
    )
    assert record["profile"]["conv_nodes"] > 0 and record["profile"]["conv_ms_per_run"] > 0
    server = record["server"]
    assert {"as served", "one session (pad off)", "max batch 1", "cuda graphs"} <= set(server)
    for label, v in server.items():
        if isinstance(v, dict) and "load" in v:
            assert all(set(r["statuses"]) == {"200"} for r in v["load"]), (label, v)
    assert server["as served"]["batch_buckets"] == [1, 2]
    assert server["one session (pad off)"]["batch_buckets"] == []
    assert (tmp_path / "py-spy one session (pad off).txt").read_text().strip()
    assert (tmp_path / "metrics as served.txt").read_text().startswith("#")
    assert record["sim"]["provider"] == "simulated"
    report = (tmp_path / "diagnose.md").read_text()
    assert "DRY RUN" in report and "simulated device" in report


@pytest.mark.slow
def test_train_dry_run_brings_back_a_checkpoint(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu.train",
            "--dry-run",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "out" / "train.json").read_text())
    assert record["dry_run"] and record["epochs_run"] == 1 and record["sequences_per_second"] > 0
    import keras

    from model_export.frames.model import head_of

    model = keras.models.load_model(tmp_path / "out" / "convlstm.keras")
    assert model.output_shape == (None, 40, 40, 3)
    assert head_of(model) == "carry"  # the release recipe's head
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "convlstm.keras",
        "convlstm.log.csv",
        "train.json",
    ]


def gpu_env() -> str:
    if not GPU_ENV_PYTHON.is_file():
        if os.environ.get("REQUIRE_GPU_FALLBACK_ENV"):
            pytest.fail(f"{GPU_ENV_PYTHON} is missing: run `make gpu-fallback-env`")
        pytest.skip(f"{GPU_ENV_PYTHON} is missing: `make gpu-fallback-env` (make test) builds it")
    probe = subprocess.run(
        [str(GPU_ENV_PYTHON), "-c", "import onnxruntime as o; print(o.get_available_providers())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CUDAExecutionProvider" in probe.stdout, "that environment must hold onnxruntime-gpu"
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver; the fallback needs one without")
    return str(GPU_ENV_PYTHON)


@pytest.mark.slow
def test_gpu_wheel_without_driver_falls_back_with_a_reason() -> None:
    python = gpu_env()
    # TF32 off: the CUDA options reach the real GPU wheel, which then falls back all the same.
    env = {"CONVLSTM_PROVIDER": "cuda", "CONVLSTM_CUDA_TF32": "false"}
    with serve(COMMITTED_MODEL, python=python, env=env) as server:
        with server.client() as client:
            ready = client.get("/readyz").json()
            x = np.zeros((15, 40, 40, 3), dtype=np.uint8)
            body = {
                "data": base64.b64encode(x.tobytes()).decode(),
                "dtype": "uint8",
                "shape": list(x.shape),
            }
            answer = client.post("/predict", json={"tensor": body})
        log = server.output()
    assert ready["provider"] == "CPUExecutionProvider"
    assert ready["requested_provider"] == "CUDAExecutionProvider" and ready["fallback"] is True
    assert "no NVIDIA driver" in ready["fallback_reason"]
    assert answer.status_code == 200, answer.text
    reasons = [line for line in log.splitlines() if "runs on CPUExecutionProvider: " in line]
    assert len(reasons) == 2, log  # one line per served model (convlstm, cnn_lstm)
    assert all("no NVIDIA driver" in line for line in reasons)


@pytest.mark.slow
def test_gpu_wheel_without_driver_stays_not_ready_when_gpu_is_required(tmp_path: Path) -> None:
    python = gpu_env()
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "CONVLSTM_REQUIRE_GPU": "1", "CONVLSTM_GRPC_PORT": str(free_port())}
    with log.open("w") as out:
        process = subprocess.Popen(
            [python, "-m", "service", "--port", str(port), "--model", str(COMMITTED_MODEL)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = alive = None
        deadline = time.monotonic() + 120
        while ready is None and process.poll() is None and time.monotonic() < deadline:
            try:
                alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
        assert process.poll() is None, log.read_text()  # alive: no exit, no restart loop
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert alive is not None and alive.status_code == 200
    assert ready is not None and ready.status_code == 503
    message = ready.json()["error"]["message"]
    assert "a GPU provider is required" in message and "no NVIDIA driver" in message
    lines = [ln for ln in log.read_text().splitlines() if "not ready, and staying so" in ln]
    assert len(lines) == 1 and "Traceback" not in log.read_text(), log.read_text()
    assert message in lines[0]
