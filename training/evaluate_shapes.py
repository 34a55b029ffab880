"""Measure what a ``shapes`` model draws over its whole grid of prompts, on the CPU.

    python -m training.evaluate_shapes models/shapes [--scheduler euler_a] [--steps 30] [--size 256]

For every colour, shape and background (a different colour) it generates ``a <colour> <shape> on a
<background> background`` once (seed 0 plus its index) and reads the picture back (``training/shapes_measure.py``).
It prints, as Markdown, the share of pictures with the right shape colour, background and shape for each
colour and shape, and the overall shares; ``--json`` writes every reading.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from shared.shapesmodel import SHAPES_COLOURS, SHAPES_SHAPES, shapes_caption
from training.shapes_measure import read_picture
from workflows.generation.pipeline import SCHEDULERS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--scheduler", default="euler_a", choices=sorted(SCHEDULERS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--every", type=int, default=1, help="evaluate every n-th prompt of the grid only")
    parser.add_argument("--json", help="write every prompt's reading here")
    parser.add_argument("--grid", help="save the pictures side by side as this PNG")
    args = parser.parse_args(argv)

    pipe = StableDiffusionPipeline.from_pretrained(args.folder)
    scheduler_class: Any = SCHEDULERS[args.scheduler]
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    grid = [(c, s, b) for c, s, b in itertools.product(SHAPES_COLOURS, SHAPES_SHAPES, SHAPES_COLOURS) if c != b][
        :: args.every
    ]
    readings, pictures = [], []
    started = time.perf_counter()
    for start in range(0, len(grid), args.batch):
        chunk = grid[start : start + args.batch]
        generators = [torch.Generator().manual_seed(start + i) for i in range(len(chunk))]
        with torch.no_grad():
            images = pipe(
                [shapes_caption(*combo) for combo in chunk],
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                height=args.size,
                width=args.size,
                generator=generators,
            ).images
        for (colour, shape, background), image in zip(chunk, images, strict=True):
            r = read_picture(image)
            readings.append(
                {
                    "prompt": shapes_caption(colour, shape, background),
                    "colour": r.colour == colour,
                    "background": r.background == background,
                    "shape": r.shape == shape,
                    "reading": [r.colour, r.shape, r.background, r.fill],
                }
            )
            pictures.append(image)
    seconds = time.perf_counter() - started

    def share(rows: list[dict[str, object]], key: str) -> str:
        return f"{sum(bool(r[key]) for r in rows)}/{len(rows)}"

    print(f"{len(grid)} prompts, {args.scheduler} {args.steps} steps, guidance {args.guidance}, {args.size} px,")
    print(f"{seconds / len(grid):.2f} s a picture on this CPU ({torch.get_num_threads()} threads)\n")
    print("| shape colour | " + " | ".join(SHAPES_SHAPES) + " | colour right | background right |")
    print("| --- |" + " --- |" * (len(SHAPES_SHAPES) + 2))
    for colour in SHAPES_COLOURS:
        rows = [r for r in readings if str(r["prompt"]).split()[1] == colour]
        cells = []
        for shape in SHAPES_SHAPES:
            cell = [r for r in rows if str(r["prompt"]).split()[2] == shape]
            all_right = [{"ok": r["colour"] and r["background"] and r["shape"]} for r in cell]
            cells.append(share(all_right, "ok") if cell else "-")
        print(f"| {colour} | " + " | ".join(cells) + f" | {share(rows, 'colour')} | {share(rows, 'background')} |")
    everything = [{"ok": r["colour"] and r["background"] and r["shape"]} for r in readings]
    print(
        f"\nall right {share(everything, 'ok')}; shape colour {share(readings, 'colour')}, "
        f"background {share(readings, 'background')}, shape {share(readings, 'shape')}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(readings, indent=1) + "\n", encoding="utf-8")
    if args.grid:
        side = pictures[0].width
        sheet = Image.new("RGB", (side * 8, side * ((len(pictures) + 7) // 8)))
        for i, picture in enumerate(pictures):
            sheet.paste(picture, (side * (i % 8), side * (i // 8)))
        sheet.save(args.grid)


if __name__ == "__main__":
    main()
