"""``make gpu-pack``: the wheels the GPU machine lacks, in parts that fit one device call.

The GPU machine (Python 3.12, PyTorch, CUDA 13 libraries as pip packages, a CPU
onnxruntime) has no onnxruntime-gpu, no server packages and no Keras, and nothing can
be downloaded there. Every device call carries the tracked tree (about 25 MB) and at
most 64 MiB in all, so the ~255 MB onnxruntime-gpu wheel travels in parts:

1. ``pip download`` the cp312 manylinux wheels: onnxruntime-gpu at the ``gpu`` extra's
   pin, the one the GPU image installs (the image's CUDA and cuDNN wheels, the ``cuda``
   extra, stay behind: 1.3 GB; the machine's own are compared with them there); the ``serve`` extra and what it pulls in (for the **infer** job); keras at the
   ``train`` extra's pin with namex and optree, and the varied training family's font
   files, which the machine lacks (for the **train** job). Wheels the GPU
   machine already holds in a version that works (numpy, onnx, protobuf, h5py, ...) stay
   behind: carrying them would only shadow the machine's own.
2. Re-pack the onnxruntime-gpu wheel's files as one ``tar.xz`` (xz -9e). The wheel is
   deflate-compressed; xz takes it from 255.6 MB to about 205 MB, two calls fewer.
3. Split the archive into parts sized so that tree + part + the job's small wheels
   stay under 64 MiB with a margin, and write ``manifest.json`` with the sha256 and size
   of every wheel, the archive and every part. ``gpu.receive`` checks them all there.

    python -m gpu.pack [--out .gpu-pack] [--level 9e] [--wheel-dir DIR]

Prints the sequence of device calls that delivers the parts and runs a job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CALL_LIMIT = 64 * MIB
# Room for files the tree gains between packing and sending (results, notes).
MARGIN = 3 * MIB
PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *(
        arg
        for tag in (
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
        )
        for arg in ("--platform", tag)
    ),
]
# Already on the GPU machine (../shared/GPU.md, the device's KINDS.md) in versions the
# jobs work with; a carried copy would shadow the machine's own build.
PRESENT_THERE = {
    "numpy",
    "onnx",
    "protobuf",
    "h5py",
    "ml_dtypes",
    "absl_py",
    "rich",
    "pygments",
    "markdown_it_py",
    "mdurl",
    "packaging",
    "pillow",
    "sympy",
    "mpmath",
    "flatbuffers",
}
# The fp16 conversion the infer job uses (onnxruntime's float16 guide names it).
# The diagnose job: py-spy dumps the server's threads under load (nvidia-ml-py, which
# samples GPU utilisation, comes with the serve extra). httpx: the jobs' load generators
# and bench.server's readiness poll (the server itself no longer needs it).
INFER_EXTRA = ["onnxconverter-common==1.16.0", "py-spy==0.4.3", "httpx==0.28.1"]
TRAIN_EXTRA = ["namex", "optree"]


def pins() -> dict[str, list[str]]:
    """The project's own pins, read from pyproject.toml: one source of versions. ``cuda``
    is the GPU image's CUDA and cuDNN wheels (its default base installs them); the GPU
    machine has its own, which ``gpu.receive`` holds to these pins in every job's record."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    keras = [p for p in extras["train"] if p.startswith("keras==")]
    return {
        "gpu": list(extras["gpu"]),
        "cuda": list(extras["cuda"]),
        "serve": list(extras["serve"]),
        "train": keras,
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def project_of(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower()


def download(requirements: list[str], dest: Path, *, deps: bool) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *PLATFORM_ARGS]
    if not deps:
        cmd.append("--no-deps")
    subprocess.run([*cmd, *requirements], check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels and not before:
        raise SystemExit(f"pip downloaded nothing into {dest}")
    return wheels


def job_wheels(requirements: list[str], dest: Path) -> list[Path]:
    """The requirements and what they pull in, less what the GPU machine has."""
    for wheel in download(requirements, dest, deps=True):
        if project_of(wheel) in PRESENT_THERE or project_of(wheel) == "onnxruntime_gpu":
            wheel.unlink()
    return sorted(dest.glob("*.whl"))


def pack_fonts(dest: Path) -> list[Path]:
    """Copy the varied training family's fonts (Debian's, ``make fonts``) into ``dest``:
    ``gpu.train --varied-share`` draws them, and the GPU machine has none."""
    from model_export.frames.glyphs import TRAIN_FONTS, MissingFont, font_file

    dest.mkdir(parents=True, exist_ok=True)
    try:
        return [Path(shutil.copyfile(font_file(f), dest / f)) for f in TRAIN_FONTS]
    except MissingFont as err:
        raise SystemExit(f"gpu.pack: {err}") from None


def travelling_tree_bytes() -> int:
    """What every device call carries anyway: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = REPO / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def repack(wheel: Path, archive: Path, level: str) -> None:
    """The wheel's files as a tar (sorted, owner and time zeroed: the same wheel gives
    the same tar), compressed with the xz command (threaded; Python's lzma is not)."""
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "wheel.tar"
        with (
            zipfile.ZipFile(wheel) as zf,
            tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf,
        ):
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                member = tarfile.TarInfo(info.filename)
                member.size = info.file_size
                member.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                with zf.open(info) as src:
                    tf.addfile(member, src)
        threads = ["-T0"] if shutil.which("xz") else []
        if not threads:
            raise SystemExit("the xz command is missing (Debian: apt-get install xz-utils)")
        with archive.open("wb") as out:
            subprocess.run(
                ["xz", *threads, f"-{level}", "-c", str(tar_path)], stdout=out, check=True
            )


def split(archive: Path, part_bytes: int, out: Path) -> list[dict[str, Any]]:
    parts = []
    with archive.open("rb") as src:
        index = 0
        while chunk := src.read(part_bytes):
            part = out / f"part-{index:02d}"
            part.write_bytes(chunk)
            parts.append(
                {
                    "file": part.name,
                    "bytes": len(chunk),
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                }
            )
            index += 1
    return parts


def describe(wheels: list[Path]) -> list[dict[str, Any]]:
    return [{"file": w.name, "bytes": w.stat().st_size, "sha256": sha256_of(w)} for w in wheels]


def call_plan(manifest: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The device calls, in order: one per part, the job in the call with the last part."""
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    parts = manifest["onnxruntime_gpu"]["parts"]
    plan = []
    for i, part in enumerate(parts):
        carry = [f"{rel}/manifest.json", f"{rel}/{part['file']}"]
        command = "bash gpu/run.sh receive"
        if i == len(parts) - 1:
            carry.append(f"{rel}/infer")
            # The diagnosis of the collapse under concurrency comes first on any GPU;
            # the infer and train jobs follow in calls of their own (docs/gpu.md).
            command = "bash gpu/run.sh diagnose"
        plan.append({"carry": carry, "command": command})
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / ".gpu-pack")
    p.add_argument("--level", default="9e", help="xz preset for the re-packed wheel")
    p.add_argument(
        "--part-mib",
        type=float,
        default=None,
        help="part size (default: what fits one call beside the tree and the job's wheels)",
    )
    p.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="take the onnxruntime-gpu wheel from here instead of downloading it",
    )
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    start = time.perf_counter()
    versions = pins()

    # Keep downloads across runs (they are the slow part), rebuild everything else.
    downloads = out / "downloads"
    for stale in [*out.glob("part-*"), out / "manifest.json", out / "infer", out / "train"]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    source = args.wheel_dir or downloads
    wheel_name_prefix = "onnxruntime_gpu-" + versions["gpu"][0].split("==")[1] + "-"
    found = sorted(source.glob(wheel_name_prefix + "*.whl")) if source.is_dir() else []
    if not found:
        found = [
            w
            for w in download(versions["gpu"], downloads, deps=False)
            if w.name.startswith(wheel_name_prefix)
        ]
    wheel = found[0]

    infer = job_wheels(versions["serve"] + INFER_EXTRA, out / "infer")
    train = job_wheels(versions["train"] + TRAIN_EXTRA, out / "train")
    fonts = pack_fonts(out / "train" / "fonts")

    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / (wheel.name + ".tar.xz")
    stamp = downloads / (wheel.name + f".xz{args.level}.sha256")
    if not (archive.is_file() and stamp.is_file() and stamp.read_text() == sha256_of(wheel)):
        repack(wheel, archive, args.level)
        stamp.write_text(sha256_of(wheel))

    tree = travelling_tree_bytes()
    small = max(sum(f.stat().st_size for f in files) for files in (infer, train + fonts))
    part_bytes = int(args.part_mib * MIB) if args.part_mib else CALL_LIMIT - tree - small - MARGIN
    if not args.part_mib and part_bytes < 8 * MIB:
        raise SystemExit(f"the tree ({tree / MIB:.1f} MiB) leaves no room for parts in a call")
    parts = split(archive, part_bytes, out)

    manifest: dict[str, Any] = {
        "call_limit_bytes": CALL_LIMIT,
        "tree_bytes_at_pack": tree,
        "part_bytes": part_bytes,
        "onnxruntime_gpu": {
            "wheel": wheel.name,
            "wheel_bytes": wheel.stat().st_size,
            "wheel_sha256": sha256_of(wheel),
            "archive": archive.name,
            "archive_bytes": archive.stat().st_size,
            "archive_sha256": sha256_of(archive),
            "xz_level": args.level,
            "parts": parts,
        },
        "infer": describe(infer),
        "train": describe(train),
        "train_fonts": describe(fonts),
        # What the GPU image ships beside onnxruntime-gpu; too large to carry (1.3 GB), so
        # the jobs say where the machine's own copies differ (gpu.receive).
        "cuda_libraries": versions["cuda"],
    }
    manifest["calls"] = call_plan(manifest, out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    ort = manifest["onnxruntime_gpu"]
    print(
        f"{wheel.name}: {ort['wheel_bytes'] / 1e6:.1f} MB wheel -> {ort['archive_bytes'] / 1e6:.1f} MB "
        f"xz -{args.level} -> {len(parts)} parts of <= {part_bytes / MIB:.1f} MiB "
        f"(tree {tree / MIB:.1f} MiB, job wheels <= {small / MIB:.1f} MiB, margin {MARGIN / MIB:.0f} MiB)"
    )
    print(
        f"infer wheels: {len(infer)}, train wheels: {len(train)} and {len(fonts)} fonts; "
        f"{time.perf_counter() - start:.0f} s"
    )
    print("Device calls, in quick succession (a warm machine goes back 30 s after a call):")
    for i, call in enumerate(manifest["calls"], 1):
        print(f"  {i}. carry={json.dumps(call['carry'])} command={call['command']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
