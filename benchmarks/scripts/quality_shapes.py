"""Issue 24: the quality-trading levers' PSNR on a trained model, the built-in ``shapes`` model on CPU.

    python benchmarks/scripts/quality_shapes.py

The device figures use SD 1.5's architecture with random weights, whose two guidance halves and whose deep
features differ less from step to step than a trained model's; this prints each lever's PSNR against the exact
path on four of the prompts ``shapes`` draws (its native 256x256, 30 steps, euler, CFG 7.5, one seed each).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.worker_bench import batch_psnr
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

PROMPTS = (
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "a blue circle on a yellow background",
)
LEVERS: tuple[dict[str, Any], ...] = (
    {"cfg_truncation": 0.1},
    {"cfg_truncation": 0.2},
    {"cfg_truncation": 0.3},
    {"cfg_truncation": 0.5},
    {"feature_reuse": 3},
    {"feature_reuse": 5},
    {"feature_reuse": 3, "cfg_truncation": 0.5},
)


def images(**levers: Any) -> list[np.ndarray]:
    runner = PipelineRunner.load("shapes", device="cpu", acceleration=AccelerationOptions(**levers))
    side = runner.native_size
    jobs = [ImageJob(f"j{i}", prompt, "", seed=i, num_images=1) for i, prompt in enumerate(PROMPTS)]
    out = runner.generate(jobs, BatchShape(side, side, 30, 7.5, "euler"))
    return [np.asarray(out[job.key][0]) for job in jobs]


def main() -> int:
    exact = images()
    for levers in LEVERS:
        psnr = batch_psnr(images(**levers), exact)
        print(f"{levers}: PSNR {psnr['psnr_db']:.1f} dB (worst image {psnr['worst_image_psnr_db']:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
