"""Speed levers for the pipeline runner, each behind an option (issue 8).

- ``compile``: ``torch.compile`` of the UNet and the VAE decoder with static shapes (``dynamic=False``). Batches
  are padded up to the next *bucket* size (1, 2, 4, 8, 16 by default) and the padded images dropped, so a worker
  compiles a handful of shapes instead of one per batch size. Only the compiled resolutions (default: the model's
  native square) take the compiled path; any other size runs eager (``torch.compiler.set_stance``), so an odd
  request never stalls the worker for a fresh compile.
- ``autotune``: inductor's ``max-autotune`` GEMM/convolution search (minutes more compile per shape).
- ``cuda_graphs``: record each compiled shape as a CUDA graph (``reduce-overhead`` / ``max-autotune``): the
  batch-1 lever, where eager SD 1.5 is bound by kernel launches. Outputs are cloned out of the graph pool.
- ``channels_last`` and ``fuse_qkv``: memory layout and fused attention projections (on with ``compile``; eager
  they were measured slower).
- ``cache_dir`` / ``mega_cache``: a persistent inductor/FX-graph/autotune cache folder, and a single portable
  file of compile artifacts (``torch.compiler.save_cache_artifacts``) to ship with the worker image.
- ``prompt_cache_size``: an LRU of text embeddings per prompt string (positive and negative alike).
- ``feature_reuse``: DeepCache-style reuse of the UNet's deep features between full steps (``featurereuse.py``);
  it changes the images, so it is off by default and reported beside its pixel difference from the exact path.
- ``cfg_truncation``: the last share of the denoising steps without classifier-free guidance's unconditional pass
  (``cfgtruncation.py``); quality-trading, off by default, an image the same alone or batched.
- ``fp8``: the UNet's attention-block linears as FP8 products with per-row scales (``fp8.py``); quality-trading
  too, off by default. It runs on CPU as well (slowly), so the tests check its arithmetic.
- ``aot_dir``: with ``compile``, the UNet and VAE decoder run ``torch.export`` + AOTInductor packages from this
  folder instead of ``torch.compile`` (``aotpackage.py``): built once, loaded at later starts without a Dynamo
  trace. No CUDA graphs on that path. AOTInductor compiles for CPUs as well, so the tests run it.
- ``precompile_dir``: with ``compile``, the UNet and VAE decoder run torch's AOT-compiled modules (Dynamo's byte
  code, guards and inductor artefacts per compiled shape, ``precompile.py``): written on the first start, loaded
  at later ones instead of re-tracing; CUDA graphs kept. CPUs too, so the tests build and reload them.

The GPU levers are skipped on CPU (recorded in ``Accelerator.report``), so tests stay fast. Batch buckets set
explicitly apply on CPU too, which lets tests check that padding leaves each image unchanged.

Seed equivalence: padding adds images with their own generators, so a real image's latents do not change; the
compiled kernels for another bucket may round differently, like eager kernels for another batch size do.

Modules: ``options`` (the options, their defaults from the service's Settings, their parsing), ``accelerator``
(applies them to a pipeline; per-batch decisions), ``torchcompile`` (compiled forwards, CUDA-graph hooks,
inductor config), ``precompile``, ``promptcache``, ``vae``, ``cachefiles``, ``cfgtruncation`` and ``startup`` (what a
worker leaves out of its start); ``featurereuse.py``, ``fp8.py`` and
``aotpackage.py`` are beside this package, in ``workflows/generation/``. The command-line flags are the CLI's
(``cli/leverflags.py``), derived from ``AccelerationOptions``.
"""

from workflows.generation.acceleration.accelerator import AccelerationReport, Accelerator
from workflows.generation.acceleration.cachefiles import load_compile_cache, save_compile_cache
from workflows.generation.acceleration.options import (
    DEFAULT_BUCKETS,
    AccelerationOptions,
    options_from_settings,
    parse_buckets,
    parse_resolutions,
)
from workflows.generation.acceleration.promptcache import PromptEmbeddingCache
from workflows.generation.acceleration.vae import upcasts_vae_per_call

__all__ = [
    "DEFAULT_BUCKETS",
    "AccelerationOptions",
    "AccelerationReport",
    "Accelerator",
    "PromptEmbeddingCache",
    "load_compile_cache",
    "options_from_settings",
    "parse_buckets",
    "parse_resolutions",
    "save_compile_cache",
    "upcasts_vae_per_call",
]
