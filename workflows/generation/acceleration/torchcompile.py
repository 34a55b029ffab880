"""``torch.compile`` of a module's forward in place, its eager hooks (timesteps, CUDA-graph steps and outputs),
and inductor's configuration for SD-type models."""

from __future__ import annotations

from typing import Any


def configure_inductor(autotune: bool, shapes: int) -> None:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # 1x1 convolutions (SD's attention proj_in/out, ResNet shortcuts) as matrix products: cuBLAS/Triton GEMMs
    # in channels_last, fusable with their neighbours.
    inductor_config.conv_1x1_as_mm = True
    if autotune:
        # The PyTorch team's settings for SD-type UNets under max-autotune ("Accelerating Generative AI III").
        inductor_config.coordinate_descent_tuning = True
        inductor_config.coordinate_descent_check_all_directions = True
        inductor_config.epilogue_fusion = False
    # Each bucket x resolution x CFG on/off is one static entry; the default limit (8) would fall back to eager.
    limit = max(8, 2 * shapes + 4)
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), limit))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * limit)


def compile_forward(module: Any, kwargs: dict[str, Any], *, cuda_graphs: bool, timestep_arg: bool) -> None:
    """Compile ``module.forward`` in place, keeping the module object (its config, dtype, hooks) as it was.

    The hooks run eagerly around the compiled forward: the UNet's timestep becomes a float32 device tensor (the
    UNet casts it to float anyway; int64 timesteps of DDIM/PNDM/DPM++ would otherwise compile a second graph),
    and with CUDA graphs each call starts a new graph generation and its outputs are cloned out of the graph's
    memory pool (a scheduler may keep a model output across steps, the VAE keeps its slices).
    """
    import torch

    module.forward = torch.compile(module.forward, **kwargs)
    hook_forward(module, cuda_graphs=cuda_graphs, timestep_arg=timestep_arg)


def hook_forward(module: Any, *, cuda_graphs: bool, timestep_arg: bool) -> None:
    """The eager hooks around a compiled forward (see ``compile_forward``)."""
    import torch

    def before(_module: Any, args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if timestep_arg:
            if len(args) > 1:
                args = (args[0], _as_timestep(args[1], args[0]), *args[2:])
            elif "timestep" in call_kwargs:
                call_kwargs["timestep"] = _as_timestep(call_kwargs["timestep"], args[0] if args else None)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return args, call_kwargs

    module.register_forward_pre_hook(before, with_kwargs=True)
    if cuda_graphs:
        module.register_forward_hook(_clone_outputs)


def _as_timestep(value: Any, sample: Any) -> Any:
    import torch

    device = sample.device if isinstance(sample, torch.Tensor) else None
    if isinstance(value, torch.Tensor):
        return value.to(dtype=torch.float32)
    if isinstance(value, int | float):
        return torch.tensor(float(value), dtype=torch.float32, device=device)
    return value


def _clone_outputs(_module: Any, _args: Any, output: Any) -> Any:
    import torch

    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in output)
    if hasattr(output, "sample") and isinstance(output.sample, torch.Tensor):
        output.sample = output.sample.clone()
    return output
