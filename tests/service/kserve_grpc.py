"""Drive a server's gRPC port with KServe's own ``InferenceGRPCClient``, unchanged: run by
the Python of the KServe venv (``make kserve-env``; KServe pins protobuf<7, so it cannot
share this project's venv). Imports nothing of this project.

stdin: JSON ``{"address", "key", "model", "frames": base64 of float32 (N, T, H, W, C),
"shape"}``; stdout: JSON with what each call answered: health, the output of the frames
sent as raw bytes and as typed contents (base64 float32), the last output of a sequence
fed one frame at a time, and ``[code, details]`` of each call expected to fail."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from importlib.metadata import version
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest


def request(model: str, x: np.ndarray, binary: bool = True, **parameters: Any) -> InferRequest:
    tensor = InferInput("frames", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model, [tensor], parameters=parameters or None)


def output(answer: Any) -> str:
    out = answer.outputs[0].as_numpy().astype("<f4")
    return base64.b64encode(out.tobytes()).decode()


async def failure(call: Any) -> list[str]:
    try:
        await call
    except grpc.RpcError as err:
        return [err.code().name, err.details()]
    return ["OK", ""]


async def main() -> None:
    given = json.load(sys.stdin)
    x = np.frombuffer(base64.b64decode(given["frames"]), "<f4").reshape(given["shape"])
    model, key = given["model"], [("x-api-key", given["key"])]
    client = InferenceGRPCClient(given["address"], timeout=120, retries=0)
    try:
        result: dict[str, Any] = {
            "kserve": version("kserve"),
            "live": await client.is_server_live(headers=key),
            "ready": await client.is_server_ready(headers=key),
            "model_ready": await client.is_model_ready(model, headers=key),
            "raw": output(await client.infer(request(model, x), headers=key)),
            "typed": output(await client.infer(request(model, x, binary=False), headers=key)),
        }
        # One sequence, one frame a request: Triton's sequence parameters.
        frames = x[:1]
        for t in range(frames.shape[1]):
            flags = {"sequence_start": t == 0, "sequence_end": t == frames.shape[1] - 1}
            step = request(model, frames[:, t : t + 1], sequence_id=4242, **flags)
            last = await client.infer(step, headers=key)
        result["sequence_last"] = output(last)
        result["errors"] = {
            "no_key": await failure(client.infer(request(model, x))),
            "unknown_model": await failure(client.infer(request("nope", x), headers=key)),
            "bad_shape": await failure(client.infer(request(model, x[:, :3]), headers=key)),
            "ended_sequence": await failure(
                client.infer(request(model, frames[:, :1], sequence_id=4242), headers=key)
            ),
        }
    finally:
        await client.close()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
