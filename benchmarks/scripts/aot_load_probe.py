"""Device probe: where a worker start from AOTInductor packages spends its load (SD 1.5, bucket 1), and whether a
process that imported only ``torch`` loads and runs the packages fast.

The warm start of 2026-12-07 (``results/2026-12-07-h100/README.md``, calls 6 to 9) spent 39.8 s "loading the two
packages" (the UNet's at batch 2 with CFG, 64x64 latents, and the VAE decoder's at batch 1), never broken down.
``python aot_load_probe.py all --work DIR --out OUT`` (run by ``aot-load-h100.sh``):

1. builds the two packages once, in parallel child processes, with the repo's own builder
   (``aotpackage.AotForward._build``; random-weight SD 1.5, fp16, fused QKV, channels-last, as the worker builds
   them), and saves each core module's weights, inputs and eager output beside them;
2. then measures in FRESH child processes, each timed from its spawn: ``import torch``; ``import torch._inductor``;
   the direct C++ loader ``torch._C._aoti.AOTIModelPackageLoader`` from a process that imported only torch (with
   the temp folder it extracts into, and the C++ log's timestamps); ``torch._inductor.aoti_load_package``;
   ``load_constants`` with the live weights (``user_managed``); the first call and repeated calls (synchronised);
   the same load under ``cProfile`` per step; the extraction, ``dlopen`` and runner construction taken apart; a
   torch-only "first image" (both packages, 30 UNet calls and one decode); and the load in a worker-like process
   (diffusers, transformers and the service imported first).

Every child writes its marks to a JSON file after each step, so a crash or a timeout still leaves what it got.
The parent imports no torch; it writes one JSON report (``aot-load-probe-<time>.json``) to OUT after each child.
Locally: ``python aot_load_probe.py all --arch tiny --device cpu --latent 8 --work /tmp/alp --out out/alp``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPAWN_ENV = "AOT_LOAD_PROBE_SPAWN"
KINDS = ("unet", "decoder")
# The C++ loader extracts a package into a fresh folder under /tmp (mkdtemp), whatever TMPDIR says.
TMP = Path("/tmp")  # noqa: S108


# --- child side ----------------------------------------------------------------------------------------------


def since_spawn() -> float:
    return time.time() - float(os.environ.get(SPAWN_ENV, time.time()))


class Record:
    """A child's marks: each step's seconds and the seconds since the process was spawned when it ended."""

    def __init__(self, path: Path, mode: str, kind: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"mode": mode, "kind": kind, "steps": {}, "info": {}, "errors": {}}
        self.step("interpreter", 0.0)

    def step(self, name: str, took: float, **extra: Any) -> None:
        self.data["steps"][name] = {"took_s": round(took, 4), "at_s": round(since_spawn(), 4), **extra}
        print(f"[{self.data['mode']} {self.data['kind']}] {name}: {took:.3f} s (at {since_spawn():.2f} s)", flush=True)
        self.save()

    def info(self, **items: Any) -> None:
        self.data["info"].update(items)
        self.save()

    def error(self, name: str, exc: BaseException) -> None:
        self.data["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"[{self.data['mode']} {self.data['kind']}] {name} FAILED: {exc!r}"[:2000], flush=True)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str))

    def timed(self, name: str, fn: Any, *, profile: dict[str, Any] | None = None, **extra: Any) -> Any:
        started = time.perf_counter()
        wall = time.time()
        try:
            if profile is None:
                value = fn()
            else:
                import cProfile

                prof = cProfile.Profile()
                value = prof.runcall(fn)
                profile[name] = prof
        except Exception as exc:
            self.error(name, exc)
            raise
        self.step(name, time.perf_counter() - started, wall_start=wall, wall_end=time.time(), **extra)
        return value


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cuda_init(rec: Record, device: str) -> None:
    import torch

    def init() -> None:
        torch.empty(1, device=device)
        _sync(device)

    rec.timed("device_init", init)
    if device.startswith("cuda"):
        rec.info(device_name=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda)


def _tmp_dirs() -> set[str]:
    """What is directly under /tmp: the C++ loader extracts a package into a fresh folder there (mkdtemp)."""
    return {p.name for p in TMP.iterdir()}


def _folder_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under a folder, or of one file."""
    if folder.is_file():
        return 1, folder.stat().st_size
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _weights(rec: Record, work: Path, kind: str, device: str) -> dict[str, Any]:
    import torch

    return rec.timed(
        f"weights_to_device_{kind}",
        lambda: torch.load(work / f"{kind}-weights.pt", map_location=device, weights_only=True),
    )


def _io(work: Path, kind: str, device: str) -> tuple[list[Any], Any]:
    import torch

    saved = torch.load(work / f"{kind}-io.pt", map_location=device, weights_only=True)
    return list(saved["inputs"]), saved["ref"]


def _compare(out: Any, ref: Any) -> dict[str, float]:
    diff = (out.float() - ref.float()).flatten()
    return {
        "max_abs_diff": diff.abs().max().item(),
        "rel_l2": (diff.norm() / ref.float().flatten().norm().clamp_min(1e-12)).item(),
        "out_finite": bool(out.float().isfinite().all().item()),
    }


def _calls(rec: Record, kind: str, device: str, call: Any, ref: Any, repeats: int = 5) -> None:
    """The first call and ``repeats`` more, each between synchronisations."""
    _sync(device)
    out = rec.timed(f"first_call_{kind}", lambda: (call(), _sync(device))[0])
    rec.info(**{f"accuracy_{kind}": _compare(out, ref)})
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(round(time.perf_counter() - started, 5))
    rec.info(**{f"repeat_calls_{kind}_s": times})
    print(f"[{rec.data['mode']} {kind}] repeat calls: {times}", flush=True)


def _fqn_map(state: dict[str, Any], fqns: list[str]) -> dict[str, Any]:
    missing = [name for name in fqns if name not in state]
    if missing:
        raise LookupError(f"the package wants constants the saved weights lack: {missing[:5]}")
    return {name: state[name] for name in fqns}


def child_torch(rec: Record, args: argparse.Namespace) -> None:
    rec.timed("import_torch", lambda: __import__("torch"))
    _cuda_init(rec, args.device)


def child_inductor(rec: Record, args: argparse.Namespace) -> None:
    rec.timed("import_torch", lambda: __import__("torch"))
    _cuda_init(rec, args.device)
    rec.timed("import_torch_inductor", lambda: __import__("torch._inductor"))
    rec.timed("import_torch_inductor_package", lambda: __import__("torch._inductor.package"))
    rec.info(modules_loaded=len(sys.modules))


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else (0 if device == "cuda" else -1)


def child_inductor_load(rec: Record, args: argparse.Namespace, profile: dict[str, Any] | None = None) -> None:
    kind, work, device = args.kind, Path(args.work), args.device
    path = (work / f"{kind}-package.txt").read_text().strip()
    torch = rec.timed("import_torch", lambda: __import__("torch"), profile=None)
    torch.set_grad_enabled(False)
    _cuda_init(rec, device)
    if args.mode == "worker-context":
        # What a worker has imported before it loads a package: diffusers, transformers, the service.
        def heavy() -> None:
            import diffusers  # noqa: F401
            import transformers  # noqa: F401

            from workflows.generation import aotpackage, pipeline  # noqa: F401

        rec.timed("import_diffusers_transformers_service", heavy)
    rec.timed("import_torch_inductor", lambda: __import__("torch._inductor"), profile=profile)
    state = _weights(rec, work, kind, device)
    inputs, ref = _io(work, kind, device)
    before = _tmp_dirs()
    runner = rec.timed(
        f"aoti_load_package_{kind}",
        lambda: torch._inductor.aoti_load_package(path, device_index=_device_index(device)),
        profile=profile,
    )
    new = sorted(_tmp_dirs() - before)
    rec.info(tmp_dirs_after_load=[{"dir": d, "files_bytes": _folder_size(TMP / d)} for d in new])
    fqns = rec.timed(f"get_constant_fqns_{kind}", runner.get_constant_fqns)
    rec.info(**{f"constants_{kind}": len(fqns)})
    constants = _fqn_map(state, fqns)
    rec.timed(
        f"load_constants_{kind}",
        lambda: runner.load_constants(constants, check_full_update=True, user_managed=True),
        profile=profile,
    )
    if profile is not None:
        rec.timed(f"first_call_{kind}", lambda: (runner(*inputs), _sync(device)), profile=profile)
        return
    _calls(rec, kind, device, lambda: runner(*inputs), ref)
    rec.info(inductor_modules=len([m for m in sys.modules if m.startswith("torch._inductor")]))


def _direct_loader(rec: Record, kind: str, path: str, device: str, *, log_signature: bool) -> Any:
    import torch

    cls = torch._C._aoti.AOTIModelPackageLoader
    if log_signature:
        for name in ("__init__", "load_constants", "boxed_run", "run", "get_constant_fqns", "get_call_spec"):
            doc = getattr(getattr(cls, name, None), "__doc__", None)
            print(f"--- AOTIModelPackageLoader.{name}:\n{doc}", flush=True)
        rec.info(loader_methods=[m for m in dir(cls) if not m.startswith("__")])
    before = _tmp_dirs()
    loader = rec.timed(f"cpp_loader_ctor_{kind}", lambda: cls(path, "model", False, 1, _device_index(device)))
    new = sorted(_tmp_dirs() - before)
    rec.info(**{f"tmp_dirs_after_ctor_{kind}": [{"dir": d, "files_bytes": _folder_size(TMP / d)} for d in new]})
    return loader


def _direct_constants(rec: Record, kind: str, loader: Any, state: dict[str, Any]) -> None:
    fqns = rec.timed(f"get_constant_fqns_{kind}", loader.get_constant_fqns)
    rec.info(**{f"constants_{kind}": len(fqns)})
    constants = _fqn_map(state, fqns)
    # (constants_map, use_inactive, check_full_update, user_managed), as AOTICompiledModel.load_constants calls it.
    rec.timed(f"load_constants_{kind}", lambda: loader.load_constants(constants, False, True, True))


def child_direct_load(rec: Record, args: argparse.Namespace) -> None:
    kind, work, device = args.kind, Path(args.work), args.device
    path = (work / f"{kind}-package.txt").read_text().strip()
    torch = rec.timed("import_torch", lambda: __import__("torch"))
    torch.set_grad_enabled(False)
    _cuda_init(rec, device)
    state = _weights(rec, work, kind, device)
    inputs, ref = _io(work, kind, device)
    loader = _direct_loader(rec, kind, path, device, log_signature=True)
    _direct_constants(rec, kind, loader, state)
    rec.info(call_spec=loader.get_call_spec())
    _calls(rec, kind, device, lambda: loader.boxed_run(list(inputs))[0], ref)
    rec.info(torch_inductor_imported="torch._inductor" in sys.modules, modules_loaded=len(sys.modules))


def child_dlopen(rec: Record, args: argparse.Namespace) -> None:
    """The C++ loader's work taken apart: extraction (Python's zipfile), dlopen, the CUDA runner on the library."""
    import ctypes
    import tempfile
    import zipfile

    kind, work, device = args.kind, Path(args.work), args.device
    path = (work / f"{kind}-package.txt").read_text().strip()
    torch = rec.timed("import_torch", lambda: __import__("torch"))
    torch.set_grad_enabled(False)
    _cuda_init(rec, device)
    folder = Path(tempfile.mkdtemp(prefix="aot-load-x-"))
    rec.timed(f"zip_extractall_{kind}", lambda: zipfile.ZipFile(path).extractall(folder))
    rec.info(**{f"extracted_files_bytes_{kind}": _folder_size(folder)})
    libraries = sorted(folder.rglob("*.so"))
    rec.info(libraries=[(str(p.relative_to(folder)), p.stat().st_size) for p in libraries])
    wrapper = next((p for p in libraries if p.name.endswith("wrapper.so")), libraries[0])
    rec.timed(f"dlopen_{kind}", lambda: ctypes.CDLL(str(wrapper)))
    if device.startswith("cuda"):
        make = lambda: torch._C._aoti.AOTIModelContainerRunnerCuda(str(wrapper), 1, device, str(wrapper.parent))  # noqa: E731
    else:
        make = lambda: torch._C._aoti.AOTIModelContainerRunnerCpu(str(wrapper), 1)  # noqa: E731
    runner = rec.timed(f"container_runner_ctor_{kind}", make)
    state = _weights(rec, work, kind, device)
    inputs, ref = _io(work, kind, device)
    names = runner.get_constant_names_to_original_fqns()
    constants = {name: state[fqn] for name, fqn in names.items()}
    rec.timed(f"update_constant_buffer_{kind}", lambda: runner.update_constant_buffer(constants, False, True, True))
    _calls(rec, kind, device, lambda: runner.run(list(inputs))[0], ref, repeats=2)


def child_first_image(rec: Record, args: argparse.Namespace) -> None:
    """A torch-only process to a first 'image': both packages through the C++ loader, 30 UNet calls, one decode."""
    work, device = Path(args.work), args.device
    torch = rec.timed("import_torch", lambda: __import__("torch"))
    torch.set_grad_enabled(False)
    _cuda_init(rec, device)
    loaders, keep = {}, []
    for kind in KINDS:
        state = _weights(rec, work, kind, device)
        path = (work / f"{kind}-package.txt").read_text().strip()
        loaders[kind] = _direct_loader(rec, kind, path, device, log_signature=False)
        _direct_constants(rec, kind, loaders[kind], state)
        keep.append(state)  # the package points at these tensors
    (sample, _timestep, hidden), _ = _io(work, "unet", device)
    unet, decoder = loaders["unet"], loaders["decoder"]

    def image() -> Any:
        latents = sample[:1].clone()
        for step in range(args.steps):
            t = torch.tensor(999.0 - step * 999.0 / args.steps, device=device)
            noise = unet.boxed_run([torch.cat([latents, latents]).contiguous(), t, hidden])[0]
            uncond, text = noise.chunk(2)
            latents = latents - 0.02 * (uncond + 7.5 * (text - uncond))
        out = decoder.boxed_run([latents.contiguous()])[0]
        _sync(device)
        return out

    rec.timed("first_image", image)
    rec.timed("second_image", image)
    rec.info(torch_inductor_imported="torch._inductor" in sys.modules, modules_loaded=len(sys.modules))


def child_build(rec: Record, args: argparse.Namespace) -> None:
    """One package built by the repo's own builder, the core's weights, inputs and eager output saved beside it."""
    kind, work, device = args.kind, Path(args.work), args.device
    import torch

    from workflows.generation import aotpackage
    from workflows.generation.models import build_random_pipeline, build_tiny_pipeline

    torch.set_grad_enabled(False)
    dev = torch.device(device)
    if args.arch == "tiny":
        pipe = build_tiny_pipeline().to(dev)
        dtype = torch.float32
    else:
        dtype = torch.float16
        pipe = build_random_pipeline(args.arch, dev, dtype)
    # The worker's levers on CUDA (accelerator.py): fused QKV, then channels-last.
    pipe.unet.fuse_qkv_projections()
    pipe.vae.fuse_qkv_projections()
    if dev.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    levers = {"fuse_qkv": True, "fp8": False}
    rec.step("pipeline_built", since_spawn())
    gen = torch.Generator(device="cpu").manual_seed(1)
    side = args.latent
    if kind == "unet":
        module = pipe.unet
        cfg = module.config
        sample = torch.randn(2, cfg.in_channels, side, side, generator=gen).to(dev, dtype)
        hidden = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen).to(dev, dtype)
        raw = (sample, (torch.tensor(500.0, device=dev), hidden), {"return_dict": False})
    else:
        module = pipe.vae.decoder
        sample = torch.randn(1, pipe.vae.config.latent_channels, side, side, generator=gen).to(dev, dtype)
        raw = (sample, (), {})
    forward = aotpackage.AotForward(module, kind, work, levers, lambda: True, aotpackage.new_stats())
    inputs = aotpackage.core_inputs(kind, raw[0], raw[1], raw[2])
    assert inputs is not None
    path = forward.package_path(inputs)
    if not path.is_file():
        rec.timed(f"build_{kind}", lambda: forward._build(inputs, path))
    ref = forward._core(*inputs)
    state = {**dict(forward._core.named_parameters()), **dict(forward._core.named_buffers())}
    rec.timed(
        f"save_weights_{kind}",
        lambda: torch.save({k: v.detach() for k, v in state.items()}, work / f"{kind}-weights.pt"),
    )
    torch.save({"inputs": [t.cpu() for t in inputs], "ref": ref.cpu()}, work / f"{kind}-io.pt")
    (work / f"{kind}-package.txt").write_text(str(path))
    rec.info(package=str(path), package_bytes=path.stat().st_size, weights_tensors=len(state))


CHILDREN = {
    "torch": child_torch,
    "inductor": child_inductor,
    "inductor-load": child_inductor_load,
    "worker-context": child_inductor_load,
    "direct-load": child_direct_load,
    "dlopen": child_dlopen,
    "first-image": child_first_image,
    "build": child_build,
}


def run_child(args: argparse.Namespace) -> None:
    rec = Record(Path(args.result), args.mode, args.kind)
    if args.mode != "profile":
        CHILDREN[args.mode](rec, args)
        return
    import io
    import pstats

    profiles: dict[str, Any] = {}
    try:
        child_inductor_load(rec, args, profile=profiles)
    finally:
        steps = rec.data["steps"]
        slowest = max(profiles, key=lambda name: steps.get(name, {}).get("took_s", 0.0), default=None)
        text = []
        for name, prof in sorted(profiles.items(), key=lambda item: -steps.get(item[0], {}).get("took_s", 0.0)):
            buffer = io.StringIO()
            top = 25 if name == slowest or steps.get(name, {}).get("took_s", 0.0) >= 1.0 else 12
            pstats.Stats(prof, stream=buffer).sort_stats("cumulative").print_stats(top)
            text.append(f"===== cProfile of {name} ({steps.get(name, {}).get('took_s')} s), top {top} by cumulative\n")
            text.append(buffer.getvalue())
        Path(args.profile_out).write_text("".join(text))
        rec.info(profiled_steps=sorted(profiles), slowest_profiled=slowest)
        print("".join(text), flush=True)


# --- parent side ---------------------------------------------------------------------------------------------


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.report_path = self.out / f"aot-load-probe-{stamp}.json"
        self.report: dict[str, Any] = {
            "kind": "aot-load-probe",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "arch": args.arch,
            "device": args.device,
            "setup": "SD 1.5 bucket 1: UNet batch 2 (CFG) 4x64x64 latents, 77x768 text; VAE decoder batch 1 "
            "4x64x64; fp16, fuse_qkv, channels_last; package_constants_in_so off; CXX=" + os.environ.get("CXX", "?"),
            "env": {k: os.environ.get(k) for k in ("CXX", "CC", "TORCHINDUCTOR_COMPILE_THREADS")},
            "children": {},
            "skipped": [],
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.report_path.write_text(json.dumps(self.report, indent=1, default=str))

    def command(self, mode: str, kind: str, result: Path) -> list[str]:
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), "child", mode, "--kind", kind, "--work", str(self.work)]
        cmd += ["--result", str(result), "--device", a.device, "--arch", a.arch, "--latent", str(a.latent)]
        cmd += ["--steps", str(a.steps), "--profile-out", str(self.out / "aot-load-profile.txt")]
        return cmd

    def child(
        self,
        name: str,
        mode: str,
        kind: str = "-",
        *,
        need: float = 20.0,
        cap: float = 240.0,
        extra_env: dict[str, str] | None = None,
        capture_stderr: bool = False,
    ) -> dict[str, Any] | None:
        if self.left() < need:
            self.report["skipped"].append(f"{name}: {self.left():.0f} s left")
            print(f"== {name}: skipped, {self.left():.0f} s of the budget left", flush=True)
            self.save()
            return None
        result = self.work / f"result-{name}.json"
        result.unlink(missing_ok=True)
        env = {**os.environ, **(extra_env or {})}
        timeout = max(5.0, min(cap, self.left() - 3))
        print(f"== {name} ({mode} {kind}), timeout {timeout:.0f} s", flush=True)
        env[SPAWN_ENV] = repr(time.time())
        started = time.perf_counter()
        stderr_path = self.work / f"stderr-{name}.txt"
        try:
            with open(stderr_path, "w") as err:
                done = subprocess.run(
                    self.command(mode, kind, result),
                    env=env,
                    timeout=timeout,
                    check=False,
                    stderr=err if capture_stderr else None,
                )
            rc: int | str = done.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout:.0f} s"
        wall = time.perf_counter() - started
        data = json.loads(result.read_text()) if result.is_file() else {"steps": {}, "info": {}, "errors": {}}
        data["returncode"] = rc
        data["process_wall_s"] = round(wall, 3)
        if capture_stderr:
            text = stderr_path.read_text(errors="replace")
            data["cpp_log"] = cpp_log_phases(text, data)
            kept = [line for line in text.splitlines() if "Extract file" not in line]
            print("\n".join(kept[-60:]), flush=True)
        self.report["children"][name] = data
        self.save()
        print(f"== {name}: rc {rc}, {wall:.2f} s wall", flush=True)
        return data

    def builds(self) -> None:
        """The two packages built in parallel child processes (decoder and UNet)."""
        procs = {}
        for kind in KINDS:
            result = self.work / f"result-build-{kind}.json"
            log = open(self.work / f"build-{kind}.log", "w")  # noqa: SIM115
            env = {**os.environ, SPAWN_ENV: repr(time.time())}
            procs[kind] = (
                subprocess.Popen(self.command("build", kind, result), env=env, stdout=log, stderr=subprocess.STDOUT),
                result,
                log,
                time.perf_counter(),
            )
        for kind, (proc, result, log, started) in procs.items():
            try:
                rc: int | str = proc.wait(timeout=max(5.0, self.left() - 60))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timed out"
            log.close()
            text = (self.work / f"build-{kind}.log").read_text(errors="replace")
            lines = [line for line in text.splitlines() if "Warning" not in line and "warn" not in line]
            print(
                f"== build {kind}: rc {rc}, {time.perf_counter() - started:.1f} s\n" + "\n".join(lines[-15:]),
                flush=True,
            )
            data = json.loads(result.read_text()) if result.is_file() else {}
            data["returncode"] = rc
            self.report["children"][f"build-{kind}"] = data
            self.save()

    def listings(self) -> None:
        import zipfile

        lines = []
        for kind in KINDS:
            marker = self.work / f"{kind}-package.txt"
            if not marker.is_file():
                continue
            path = marker.read_text().strip()
            infos = zipfile.ZipFile(path).infolist()
            by_ext: dict[str, list[int]] = {}
            for info in infos:
                name = info.filename.rsplit("/", 1)[-1]
                ext = name.rsplit(".", 1)[-1] if "." in name else name
                if name.endswith(".wrapper.so") or name.endswith("wrapper.cpp"):
                    ext = "wrapper." + ext
                entry = by_ext.setdefault(ext, [0, 0])
                entry[0] += 1
                entry[1] += info.file_size
            largest = sorted(infos, key=lambda i: -i.file_size)[:8]
            self.report[f"zip_{kind}"] = {
                "path": path,
                "bytes_on_disk": Path(path).stat().st_size,
                "entries": len(infos),
                "uncompressed_bytes": sum(i.file_size for i in infos),
                "stored_uncompressed": all(i.compress_type == zipfile.ZIP_STORED for i in infos),
                "by_extension": {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(by_ext.items())},
                "largest": [(i.filename, i.file_size) for i in largest],
            }
            listing = subprocess.run(
                [sys.executable, "-m", "zipfile", "-l", path], capture_output=True, text=True, check=False
            ).stdout
            lines.append(f"===== python3 -m zipfile -l {path}\n{listing}")
            summary = self.report[f"zip_{kind}"]
            print(
                f"== zip {kind}: {summary['entries']} entries, {summary['uncompressed_bytes'] / 1e6:.1f} MB "
                f"uncompressed, {summary['bytes_on_disk'] / 1e6:.1f} MB on disk",
                flush=True,
            )
            for ext, v in summary["by_extension"].items():
                print(f"   {ext:>16}: {v['files']:5d} files {v['bytes'] / 1e6:9.2f} MB", flush=True)
            for name, size in summary["largest"]:
                print(f"   {size / 1e6:9.2f} MB  {name}", flush=True)
        (self.out / "aot-load-zip-listing.txt").write_text("".join(lines))
        self.save()

    def sources(self) -> None:
        """The 2.11 Python side of the load, as the log's reference (the functions aoti_load_package goes through)."""
        code = (
            "import inspect, torch._inductor, torch._inductor.package.package as p\n"
            "from torch.export.pt2_archive import _package as q\n"
            "for f in (torch._inductor.aoti_load_package, p.load_package, q.load_pt2, q._load_aoti):\n"
            "    print('-----', f.__module__, f.__qualname__); print(inspect.getsource(f))\n"
            "import torch._inductor.codecache as c, torch._inductor.cpu_vec_isa as v\n"
            "print(inspect.getsource(c.get_device_information))\n"
            "print(inspect.getsource(v.VecISA.check_build)); print(v.VecISA._avx_py_load)\n"
            "print(inspect.getsource(v.valid_vec_isa_list)); print(inspect.getsource(v.pick_vec_isa))\n"
        )
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            print("== torch's load path (sources): timed out", flush=True)
            return
        print("== torch's load path (sources)\n" + done.stdout + done.stderr[-2000:], flush=True)

    def run(self) -> None:
        a = self.args
        print(f"== build at {a.budget - self.left():.0f} s", flush=True)
        self.builds()
        if not all((self.work / f"{k}-package.txt").is_file() for k in KINDS):
            print("== a build failed: stopping", flush=True)
            return
        self.listings()
        # In the order of what the question needs most, so that a short budget drops the least (each load capped).
        cpp_log = {"TORCH_CPP_LOG_LEVEL": "INFO"}
        self.child("torch-1", "torch", need=10)
        self.child("inductor", "inductor", need=15)
        self.child("direct-load-unet", "direct-load", "unet", cap=90, extra_env=cpp_log, capture_stderr=True)
        self.child("inductor-load-unet", "inductor-load", "unet", cap=90)
        self.child("profile-unet", "profile", "unet", need=30, cap=90)
        self.child("first-image", "first-image", need=30, cap=90)
        # inductor's load asks get_device_information, which picks the CPU's vector ISA by building and loading a
        # test library per ISA; TORCHINDUCTOR_VEC_ISA_OK=1 takes the CPU's flags instead.
        isa_ok = {"TORCHINDUCTOR_VEC_ISA_OK": "1"}
        self.child("inductor-load-unet-isa-ok", "inductor-load", "unet", cap=90, extra_env=isa_ok)
        self.child("inductor-load-decoder", "inductor-load", "decoder", cap=60)
        self.child("direct-load-decoder", "direct-load", "decoder", cap=60, extra_env=cpp_log, capture_stderr=True)
        self.child("torch-2", "torch", need=10)
        self.child("dlopen-unet", "dlopen", "unet", need=30, cap=90)
        self.child("worker-context-unet", "worker-context", "unet", need=40, cap=90)
        if self.left() > 15:
            self.sources()
        self.summary()

    def summary(self) -> None:
        rows = []
        for name, data in self.report["children"].items():
            for step, v in data.get("steps", {}).items():
                if step == "interpreter":
                    continue
                rows.append(f"{name:24} {step:42} {v.get('took_s', 0):9.3f} s   at {v.get('at_s', 0):8.2f} s")
            if data.get("errors"):
                rows.append(f"{name:24} ERRORS {data['errors']}")
            if data.get("returncode") not in (0, None):
                rows.append(f"{name:24} returncode {data.get('returncode')}")
        self.report["table"] = rows
        self.save()
        print(
            "== summary (seconds per step, and seconds since that process was spawned)\n" + "\n".join(rows), flush=True
        )
        print(f"== report {self.report_path}", flush=True)


_CPP_LINE = re.compile(r"^\[[IWE]\d{4} (\d\d):(\d\d):(\d\d)\.(\d+) .*?\] (.*)$")


def cpp_log_phases(text: str, data: dict[str, Any]) -> dict[str, Any]:
    """The C++ loader's LOG(INFO) lines (TORCH_CPP_LOG_LEVEL=INFO): how long the extraction of the package's files
    took by their own timestamps, against the constructor's whole time measured in Python; the rest of the
    constructor is opening the zip, dlopen and the runner's construction."""
    stamps = []
    for line in text.splitlines():
        m = _CPP_LINE.match(line)
        if m:
            h, mi, s, frac = m.group(1), m.group(2), m.group(3), m.group(4)
            stamps.append((int(h) * 3600 + int(mi) * 60 + int(s) + int(frac) / 10 ** len(frac), m.group(5)))
    extracts = [t for t, msg in stamps if "Extract file" in msg]
    out: dict[str, Any] = {"lines": len(stamps), "extract_lines": len(extracts)}
    if extracts:
        out["extraction_span_s"] = round(extracts[-1] - extracts[0], 4)
        out["extract_to"] = next((msg.split(" to ", 1)[-1][:200] for _, msg in stamps if "Extract file" in msg), "")
    ctor = [v["took_s"] for step, v in data.get("steps", {}).items() if step.startswith("cpp_loader_ctor")]
    if ctor and extracts:
        out["ctor_s"] = ctor[0]
        out["ctor_minus_extraction_s"] = round(ctor[0] - out["extraction_span_s"], 4)
    out["other_messages"] = [msg[:300] for _, msg in stamps if "Extract file" not in msg][:20]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["all", "child"])
    parser.add_argument("mode", nargs="?", default="all")
    parser.add_argument("--kind", default="-")
    parser.add_argument("--work", default=str(TMP / "aot-load"))
    parser.add_argument("--out", default=os.environ.get("OUT", "out/aot-load"))
    parser.add_argument("--result", default="")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budget", type=float, default=float(os.environ.get("BUDGET", "540")))
    parser.add_argument("--profile-out", default="")
    args = parser.parse_args()
    if args.role == "child":
        run_child(args)
    else:
        Probe(args).run()


if __name__ == "__main__":
    main()
