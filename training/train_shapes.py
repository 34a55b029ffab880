"""Train the built-in ``shapes`` model from nothing: a VAE, then a UNet and a CLIP text encoder together.

    python -m training.train_shapes --out out/shapes-train [--vae-steps N] [--unet-steps N] [--budget-s S]

Seeded: the data (``training/shapes_data.py``), the initial weights and every noise draw come from ``--seed``,
so a run with the same step counts on the same kind of device gives the same model (GPU kernels may still
differ in the last bits). ``--budget-s`` is a safety stop on wall time: the run then ends early and says at
which step. Every ``--checkpoint-s`` seconds and at the end the pipeline is saved as a normal diffusers folder
(``<out>/shapes``) and as two archives (``<out>/shapes-unet.tar``, ``<out>/shapes-rest.tar``), with sample
pictures and a log beside it.
Nothing is downloaded: the tokenizer is the project's byte-level CLIP tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from torch.nn import functional
from transformers import CLIPTextConfig, CLIPTextModel

from training.shapes_data import render, sample_captions, sample_scenes
from workflows.generation.models import _SD15_SCHEDULER, _sd_pipeline, build_byte_level_clip_tokenizer

# Training picture sizes (height, width): requests are 256 to 512 pixels a side, so the model sees those.
UNET_SIZES: tuple[tuple[int, int], ...] = ((256, 256),) * 4 + ((320, 256), (256, 320), (384, 384), (512, 512))
VAE_CROP = 128


def vae_config() -> dict[str, Any]:
    """Four blocks (latents 1/8 of the side, like Stable Diffusion), narrow, fully convolutional."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (16, 32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 256,
        "mid_block_add_attention": False,
    }


def unet_config() -> dict[str, Any]:
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64, 96),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def text_config(tokenizer: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class Run:
    """The state of one training run: models, the data generator, the log and the clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.started = time.monotonic()
        self.last_checkpoint = self.started
        self.log_file = (self.out / "train.log").open("a", encoding="utf-8")
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        self.data = torch.Generator().manual_seed(args.seed + 1)
        self.tokenizer = build_byte_level_clip_tokenizer()
        self.token_ids: dict[str, list[int]] = {}
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # The runs that made the weights this run starts from (a resumed run adds itself to them).
        self.earlier_runs: list[dict[str, Any]] = []
        if args.resume:
            src = Path(args.resume)
            if (src / "training.json").is_file():
                self.earlier_runs = json.loads((src / "training.json").read_text(encoding="utf-8"))["runs"]
            self.vae = AutoencoderKL.from_pretrained(src / "vae")
            self.unet = UNet2DConditionModel.from_pretrained(src / "unet")
            self.text_encoder = CLIPTextModel.from_pretrained(src / "text_encoder")
        else:
            self.vae = AutoencoderKL(**vae_config())
            self.unet = UNet2DConditionModel(**unet_config())
            self.text_encoder = CLIPTextModel(text_config(self.tokenizer))
        modules: list[Any] = [self.vae, self.unet, self.text_encoder]
        for module in modules:
            module.to(self.device)
        # The noise schedule of the pipeline's scheduler (Stable Diffusion 1.5's), so sampling matches training.
        self.noise = DDPMScheduler.from_config(_SD15_SCHEDULER)
        self.alphas = self.noise.alphas_cumprod.to(self.device)
        self.vae_steps_done = 0
        self.unet_steps_done = 0
        self.stopped_early = False

    def log(self, message: str, **figures: Any) -> None:
        line = {"t": round(time.monotonic() - self.started, 1), "msg": message, **figures}
        print(json.dumps(line), flush=True)
        self.log_file.write(json.dumps(line) + "\n")
        self.log_file.flush()

    def time_left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # --- stage 1: the VAE ------------------------------------------------------------------------------

    def train_vae(self) -> None:
        vae = self.vae.train()
        opt = torch.optim.AdamW(vae.parameters(), lr=self.args.vae_lr, weight_decay=0.0)
        for step in range(self.args.vae_steps):
            if self.time_left() < self.args.unet_min_s + 30:
                self.log("vae: stopping early for the time budget", step=step)
                self.stopped_early = True
                break
            side = random.choice((128, 192, 256))
            scenes = sample_scenes(self.args.vae_batch, self.data)
            images = render(scenes, side, side, self.device)
            y, x = random.randrange(side - VAE_CROP + 1), random.randrange(side - VAE_CROP + 1)
            images = images[:, :, y : y + VAE_CROP, x : x + VAE_CROP]
            with self.autocast():
                posterior = vae.encode(images).latent_dist
                decoded = vae.decode(posterior.sample()).sample
            recon = functional.l1_loss(decoded.float(), images) + functional.mse_loss(decoded.float(), images)
            kl = posterior.kl().mean() / (VAE_CROP * VAE_CROP)
            loss = recon + self.args.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            self.vae_steps_done = step + 1
            if step % 200 == 0 or step == self.args.vae_steps - 1:
                self.log("vae", step=step, recon=round(recon.item(), 5), kl=round(kl.item(), 3))
        vae.eval().requires_grad_(False)
        # The latents' scale, so the UNet sees unit variance (Stable Diffusion's scaling_factor).
        with torch.no_grad(), self.autocast():
            images = render(sample_scenes(64, self.data), 256, 256, self.device)
            latents = vae.encode(images).latent_dist.sample().float()
        scale = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scale)
        self.log("vae scaling factor", scaling_factor=scale, latent_mean=round(latents.mean().item(), 4))

    # --- stage 2: the UNet and the text encoder ---------------------------------------------------------

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        # A few hundred distinct captions: each is tokenized once.
        for text in set(captions) - self.token_ids.keys():
            self.token_ids[text] = self.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        ids = torch.tensor([self.token_ids[text] for text in captions], device=self.device)
        return self.text_encoder(ids)[0]

    def train_unet(self) -> None:
        self.vae.eval().requires_grad_(False)
        unet, text_encoder = self.unet.train(), self.text_encoder.train()
        params = [*unet.parameters(), *text_encoder.parameters()]
        ema = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=self.args.unet_lr, weight_decay=1e-2)
        scale = self.vae.config.scaling_factor
        step = 0
        for step in range(self.args.unet_steps):
            if self.time_left() < 25:
                self.log("unet: stopping early for the time budget", step=step)
                self.stopped_early = True
                break
            height, width = random.choice(UNET_SIZES)
            batch = max(2, self.args.unet_batch * 256 * 256 // (height * width))
            scenes = sample_scenes(batch, self.data)
            captions = sample_captions(scenes, self.data)
            with torch.no_grad(), self.autocast():
                latents = self.vae.encode(render(scenes, height, width, self.device)).latent_dist.sample().float()
            latents = latents * scale
            noise = torch.randn_like(latents)
            # Offset noise: a per-channel constant, so the model learns to move a picture's mean colour
            # (plain backgrounds) instead of keeping that of the starting noise.
            noise = noise + self.args.offset_noise * torch.randn(batch, latents.shape[1], 1, 1, device=self.device)
            t = torch.randint(0, self.noise.config.num_train_timesteps, (batch,), device=self.device)
            a = self.alphas[t].view(batch, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            with self.autocast():
                context = self.encode_text(captions)
                pred = unet(noisy, t, encoder_hidden_states=context).sample
            loss = functional.mse_loss(pred.float(), noise)
            warm = min(1.0, (step + 1) / 500)
            for group in opt.param_groups:
                group["lr"] = self.args.unet_lr * warm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(self.args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            self.unet_steps_done = step + 1
            if step % 250 == 0:
                self.log("unet", step=step, loss=round(loss.item(), 5), size=f"{width}x{height}", batch=batch)
            if time.monotonic() - self.last_checkpoint > self.args.checkpoint_s:
                self.checkpoint(ema, params)
        self.checkpoint(ema, params, final=True)

    # --- saving ----------------------------------------------------------------------------------------

    def checkpoint(self, ema: list[torch.Tensor], params: list[torch.nn.Parameter], final: bool = False) -> None:
        """Save the EMA weights as a diffusers folder and an archive, with sample pictures."""
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
        folder = self.out / "shapes"
        shutil.rmtree(folder, ignore_errors=True)
        pipe = _sd_pipeline(self.vae, self.text_encoder, self.tokenizer, self.unet)
        pipe.save_pretrained(folder, safe_serialization=True)
        this_run = {
            "command": self.args.command,
            "seed": self.args.seed,
            "vae_steps": self.vae_steps_done,
            "unet_steps": self.unet_steps_done,
            "stopped_early": self.stopped_early,
            "final": final,
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
            "seconds": round(time.monotonic() - self.started, 1),
        }
        runs = {"runs": [*self.earlier_runs, this_run]}
        (folder / "training.json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
        # Two archives, each under the device tool's 16 MiB a file: the UNet, and the rest.
        with tarfile.open(self.out / "shapes-unet.tar", "w") as tar:
            tar.add(folder / "unet", arcname="shapes/unet")
        with tarfile.open(self.out / "shapes-rest.tar", "w") as tar:
            tar.add(folder, arcname="shapes", filter=lambda info: None if info.name.startswith("shapes/unet") else info)
        self.samples(pipe, final)
        with torch.no_grad():
            for p, v in zip(params, live, strict=True):
                p.copy_(v)
        self.unet.train()
        self.text_encoder.train()
        self.last_checkpoint = time.monotonic()
        self.log("checkpoint", unet_steps=self.unet_steps_done, final=final)

    def samples(self, pipe: Any, final: bool) -> None:
        prompts = [
            "a red circle on a blue background",
            "a green square on a yellow background",
            "a white triangle on a black background",
            "a purple circle on an orange background",
            "a yellow triangle on a red background",
            "a blue square on a white background",
        ]
        self.unet.eval()
        self.text_encoder.eval()
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(self.device).manual_seed(0)
        with torch.no_grad():
            images = pipe(prompts, num_inference_steps=20, height=256, width=256, generator=generator).images
        grid = Image.new("RGB", (256 * len(images), 256))
        for i, image in enumerate(images):
            grid.paste(image, (256 * i, 0))
        grid.save(self.out / "samples.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--device")
    parser.add_argument("--resume", help="a saved shapes folder: skip the VAE and go on training its UNet")
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--unet-steps", type=int, default=40000)
    parser.add_argument("--unet-batch", type=int, default=256, help="pictures a batch at 256x256 (fewer if larger)")
    parser.add_argument("--unet-lr", type=float, default=4e-4)
    parser.add_argument("--unet-min-s", type=float, default=300, help="seconds kept for the UNet stage")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--offset-noise", type=float, default=0.1)
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--checkpoint-s", type=float, default=90)
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m training.train_shapes", *(argv if argv is not None else sys.argv[1:])])
    run = Run(args)
    run.log("start", device=str(run.device), args=vars(args))
    if not args.resume:
        run.train_vae()
    run.train_unet()
    run.log("done", vae_steps=run.vae_steps_done, unet_steps=run.unet_steps_done, stopped_early=run.stopped_early)


if __name__ == "__main__":
    main()
