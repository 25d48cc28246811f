"""On the GPU machine: keep the parts each call brings, then install from them.

Standard library only: it runs before anything is installed there.

    python3 -m gpu.receive [--pack .gpu-pack] [--stage /tmp/gpu-pack]
        copies every part the call carried into the stage after checking its sha256
        against the manifest, and says which parts are still missing.
    python3 -m gpu.receive --install JOB [--target /tmp/site]
        also (all parts held) joins them, checks the archive's sha256, unpacks the
        onnxruntime-gpu wheel's files into the target and checks each against the wheel's
        own RECORD; then installs the job's small wheels (infer or train) with
        ``pip --target``. Unpacking a wheel's files into a folder is what
        ``pip install --target`` does; it is done here by hand so the wheel never has to
        be rebuilt from the parts (re-zipping would cost a minute and prove nothing more).

Exit status 0 when what was asked for is done, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from gpu.pack import MIB, PLATFORM_ARGS, sha256_of


def receive(pack: Path, stage: Path, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Parts now held in the stage, and parts still missing."""
    stage.mkdir(parents=True, exist_ok=True)
    held, missing = [], []
    for part in manifest["onnxruntime_gpu"]["parts"]:
        kept = stage / part["file"]
        if kept.is_file() and sha256_of(kept) == part["sha256"]:
            held.append(part["file"])
            continue
        brought = pack / part["file"]
        if brought.is_file():
            if sha256_of(brought) != part["sha256"]:
                raise SystemExit(f"{brought}: sha256 differs from the manifest; pack again")
            shutil.copyfile(brought, kept)
            held.append(part["file"])
        else:
            missing.append(part["file"])
    return held, missing


def _record_hashes(tf: tarfile.TarFile) -> dict[str, str]:
    record = next(m for m in tf.getmembers() if m.name.endswith(".dist-info/RECORD"))
    data = tf.extractfile(record)
    assert data is not None
    hashes = {}
    for row in csv.reader(io.TextIOWrapper(data, encoding="utf-8")):
        if len(row) >= 2 and row[1].startswith("sha256="):
            hashes[row[0]] = row[1].removeprefix("sha256=")
    return hashes


def install_runtime(stage: Path, target: Path, manifest: dict[str, Any]) -> int:
    """Join the parts, check the archive, unpack; returns the number of files checked."""
    ort = manifest["onnxruntime_gpu"]
    archive = stage / ort["archive"]
    with archive.open("wb") as out:
        for part in ort["parts"]:
            with (stage / part["file"]).open("rb") as src:
                shutil.copyfileobj(src, out, MIB)
    if sha256_of(archive) != ort["archive_sha256"]:
        raise SystemExit(f"{archive}: joined parts do not match the manifest's sha256")
    target.mkdir(parents=True, exist_ok=True)
    checked = 0
    with tarfile.open(archive, "r:xz") as tf:
        expected = _record_hashes(tf)
        for member in tf:
            src = tf.extractfile(member)
            if src is None:
                continue
            data = src.read()
            want = expected.get(member.name)
            if want is not None:
                got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                if got.decode() != want:
                    raise SystemExit(f"{member.name}: differs from the wheel's RECORD")
                checked += 1
            dest = target / member.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(member.mode)
    if checked != len(expected):
        raise SystemExit(f"checked {checked} of the {len(expected)} files RECORD lists")
    archive.unlink()
    return checked


def check_files(folder: Path, files: list[dict[str, Any]], what: str) -> None:
    for entry in files:
        path = folder / entry["file"]
        if not path.is_file() or sha256_of(path) != entry["sha256"]:
            raise SystemExit(f"{path}: missing or not the packed {what}; carry {folder}")


def install_wheels(pack: Path, job: str, target: Path, manifest: dict[str, Any]) -> None:
    folder = pack / job
    check_files(folder, manifest[job], "wheel")
    if job == "train":  # the varied family's fonts, which gpu/run.sh points training at
        check_files(folder / "fonts", manifest.get("train_fonts", []), "font")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(target),
            # The GPU machine's own tags: lets the dry run here (Python 3.11) check the
            # same cp312 wheels without running them.
            *PLATFORM_ARGS,
            *(str(folder / w["file"]) for w in manifest[job]),
        ],
        check=True,
    )


def cuda_libraries(pins: list[str]) -> dict[str, Any]:
    """The machine's CUDA and cuDNN wheels against the GPU image's pins (``name==version``):
    those at the pinned version, those at another, those absent. A job's numbers are the
    image's only where nothing differs."""
    import importlib.metadata

    same, differ, absent = [], {}, []
    for pin in pins:
        name, _, version = pin.partition("==")
        try:
            there = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
            continue
        if there == version:
            same.append(name)
        else:
            differ[name] = {"image": version, "here": there}
    return {"same": same, "differ": differ, "absent": absent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m gpu.receive", description=__doc__.split("\n")[0])
    p.add_argument("--pack", type=Path, default=Path(".gpu-pack"))
    p.add_argument("--stage", type=Path, default=Path("/tmp/gpu-pack"))
    p.add_argument("--install", choices=["infer", "train"], default=None)
    p.add_argument("--target", type=Path, default=Path("/tmp/site"))
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        help="write the CUDA libraries here compared with the GPU image's (JSON)",
    )
    args = p.parse_args(argv)
    start = time.perf_counter()
    manifest = json.loads((args.pack / "manifest.json").read_text())

    needs_runtime = args.install == "infer"
    held, missing = (
        receive(args.pack, args.stage, manifest)
        if needs_runtime or args.install is None
        else ([], [])
    )
    total = len(manifest["onnxruntime_gpu"]["parts"])
    if needs_runtime or args.install is None:
        print(f"receive: {len(held)} of {total} parts held; missing {missing or 'none'}")
    if args.install is None:
        return 0
    if needs_runtime:
        if missing:
            print(f"receive: cannot install, parts missing: {missing}")
            return 1
        checked = install_runtime(args.stage, args.target, manifest)
        print(f"receive: onnxruntime-gpu unpacked into {args.target}, {checked} files match RECORD")
    install_wheels(args.pack, args.install, args.target, manifest)
    compared = cuda_libraries(manifest.get("cuda_libraries", []))
    print(
        f"receive: CUDA libraries against the GPU image's pins: {len(compared['same'])} the "
        f"same, differ {compared['differ'] or 'none'}, absent {compared['absent'] or 'none'}"
    )
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(compared, indent=2) + "\n")
    print(
        f"receive: {len(manifest[args.install])} {args.install} wheels installed into "
        f"{args.target}; {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
