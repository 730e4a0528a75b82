"""``nnunet-tubeconv gpu-check -o benchmarks/perf/results/``: everything a GPU should prove, in one command and one
report.

On one CUDA GPU (sized to finish in under 8 minutes on an H100/H200-class device), in this order:

1. **Kernel check**: DSConv's Triton kernels (:mod:`nnunet_tubeconv.blocks.dsconv.triton_backend`) against the
   PyTorch path on the device, forward and every gradient, 2D and 3D, every morph axis, odd sizes, batch > 1,
   clamped borders, fp32/bf16/fp16 features; which path the dispatch picks; and the forward+backward time of a 3D
   DSConv (K = 9, the ``bench-blocks`` size) on the Triton kernels vs the PyTorch path.
2. ``bench-blocks`` in fp32 and bf16 autocast with its ``torch.compile`` check (its own options
   ``--precision fp32,bf16 --compile yes``).
3. ``bench-train`` on its default 3D plan, vanilla vs the snake variant (``dsconv``), as nnU-Net trains on GPU
   (autocast + GradScaler; the target's numbers), then again in fp32 (``--precision fp32``) and with
   ``torch.compile`` under autocast (``--compile``).
4. ``calibrate-memory --device cuda`` for vanilla and the snake variant: the planner's predicted peak vs
   ``torch.cuda.max_memory_allocated`` of a real AMP training step at the planned patch and batch.

Writes ``gpu_check.json`` and ``gpu_check.md`` (device name, versions, each step's time and status, the GPU cost
targets below marked met / not met from the measured numbers) plus each command's own output (``gpu_check_*.json``)
into ``-o``. A step that fails is recorded with its error and the others still run; the exit status is then 1.

Targets (measured on CUDA only; ``--device cpu`` or ``--quick`` marks every target "does not count"):

* 3D DSConv K = 9 forward+backward <= 3x a same-width cuDNN ``Conv3d`` 3x3x3 in bf16 (``bench-blocks`` row
  ``DSConv 3D``, bf16, ``time_ratio``);
* its bytes kept for backward <= 2x its input (same row, ``saved_over_input``);
* a snake nnU-Net training iteration <= 1.3x vanilla (``bench-train``, ``dsconv``, ``time_ratio``);
* the planner's memory estimate within 10% of ``torch.cuda.max_memory_allocated`` (``calibrate-memory``, every
  planned configuration measured; the worst one counts).

Without CUDA the command stops with a clear message (exit status 2). ``--device cpu --quick`` runs the whole report
path on the CPU at tiny sizes, with the Triton kernels under Triton's interpreter (a test does); its numbers mean
nothing. Until someone runs it on a GPU, no GPU number in this repository comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnunet_tubeconv.environ import set_environ

#: the variant whose training iteration the snake target is about (bench-train's name for the DSCNet blocks)
SNAKE_VARIANT = "dsconv"
#: the GPU cost targets, what the snake blocks may cost next to nnU-Net's plain convolutions on a GPU:
#: key -> (description, limit)
TARGETS: dict[str, tuple[str, float]] = {
    "dsconv3d_time": ("3D DSConv K=9 forward+backward / same-width cuDNN Conv3d 3x3x3, bf16", 3.0),
    "dsconv3d_saved": ("3D DSConv K=9 bytes kept for backward / its input's bytes, bf16", 2.0),
    "snake_iteration": (f"snake nnU-Net ({SNAKE_VARIANT}) training iteration / vanilla", 1.3),
    "planner_memory": (("planner's predicted peak vs torch.cuda.max_memory_allocated, "
                        "worst abs(predicted / measured - 1)"), 0.10),
}
#: kernel-check tolerance per feature dtype: max |Triton - reference| / max |reference| per output and gradient
TOLERANCES = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
#: what one GPU run of the whole command may take, seconds (the report says whether the run stayed within it)
BUDGET_S = 8 * 60
#: the steps, in the order they run
STEPS = ("kernels", "blocks", "train", "memory")
FILES = {"json": "gpu_check.json", "md": "gpu_check.md", "bench_blocks": "gpu_check_bench_blocks.json",
         "bench_train": "gpu_check_bench_train.json", "calibration": "gpu_check_calibration.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", required=True, help="folder for gpu_check.md / .json and each step's JSON")
    parser.add_argument("--device", default="cuda",
                        help="'cuda' (default), 'cuda:N', or 'cpu' to exercise the report path without a GPU (with "
                             "--quick; Triton kernels under the interpreter)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes everywhere: checks the command, its numbers mean nothing")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma list of the steps to run, in this order: {','.join(STEPS)} (default: all; the "
                             "report marks the others 'not run')")


def _device(text: str):
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device must be 'cuda', 'cuda:N' or 'cpu', got {text!r} ({e})") from None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be 'cuda', 'cuda:N' or 'cpu', got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("gpu-check needs a CUDA GPU and torch.cuda.is_available() is False on this machine "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine; "
                         "'--device cpu --quick' exercises the report path here (its numbers mean nothing)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def environment(device) -> dict[str, Any]:
    """Device name and the versions that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from nnunet_tubeconv import __version__
    from nnunet_tubeconv.blocks.dsconv import cpu_backend, triton_backend

    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - shown in the report, not fatal
        triton_version = f"not importable ({type(e).__name__}: {e})"
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (
            platform.processor() or platform.machine()),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton_version,
        "nnunetv2": _version(version, PackageNotFoundError, "nnunetv2"), "nnunet_tubeconv": __version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "dsconv_cuda_path": triton_backend.status(), "dsconv_cpu_path": cpu_backend.status(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 2), driver=_driver_version())
    else:
        env["cpu_threads"] = torch.get_num_threads()
        if hasattr(os, "getloadavg"):
            env["load_average_1min"] = round(os.getloadavg()[0], 2)
    return env


def _version(version, not_found, name: str) -> str:
    try:
        return version(name)
    except not_found:
        return "not installed"


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# 1. kernel check


def _kernel_cases(quick: bool) -> list[dict]:
    """(spatial, axis, swing axes, K, batch, C_in, C_out): every axis of 2D and 3D at odd sizes."""
    def case(spatial, axis, swing, k, batch, c_in, c_out) -> dict:
        return {"spatial": spatial, "axis": axis, "swing": swing, "k": k, "batch": batch, "c_in": c_in,
                "c_out": c_out}

    if quick:
        return [case((5, 7), 0, (1,), 3, 2, 3, 2), case((3, 4, 5), 2, (0, 1), 3, 2, 3, 2)]
    cases = [case((45, 51), axis, (1 - axis,), 9, 3, 19, 21) for axis in (0, 1)]
    cases += [case((13, 17, 19), axis, tuple(a for a in range(3) if a != axis), 9, 2, 33, 17) for axis in (0, 1, 2)]
    cases.append(case((11, 1, 15), 0, (1, 2), 5, 2, 70, 8))  # a size-1 swing axis, several channel blocks
    return cases


def _relative_error(got, want) -> float:
    got, want = got.detach().double(), want.detach().double()
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) / scale


def kernel_check(device, quick: bool, log: Callable[[str], None] = print) -> dict:
    """Triton kernels vs the reference (the PyTorch path in float64 on the features rounded to the tested dtype)."""
    import torch

    from nnunet_tubeconv.blocks.dsconv import triton_backend
    from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction

    if not triton_backend.available():
        raise RuntimeError(f"the Triton kernels cannot run here: {triton_backend.status()}")
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    rows = []
    for case in _kernel_cases(quick):
        g = torch.Generator(device="cpu").manual_seed(len(rows))
        shape = (case["batch"], case["c_in"], *case["spatial"])
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        delta = 2.0 * torch.randn(case["batch"], len(case["swing"]) * (case["k"] - 1), *case["spatial"], generator=g,
                                  dtype=torch.float64)  # swings of a few voxels: many points clamped at the border
        w = torch.randn(case["c_out"], case["c_in"], case["k"], generator=g, dtype=torch.float64) / case["c_in"]
        b = torch.randn(case["c_out"], generator=g, dtype=torch.float64)
        go = torch.randn(case["batch"], case["c_out"], *case["spatial"], generator=g, dtype=torch.float64)
        x, delta, w, b, go = (t.to(device) for t in (x, delta, w, b, go))
        for dtype in dtypes:
            xs, ws, bs, gs = x.to(dtype), w.to(dtype), b.to(dtype), go.to(dtype)
            d32 = delta.float()
            leaves = [t.double().requires_grad_() for t in (xs, d32, ws, bs)]
            y_ref = SnakeConvFunction.apply(*leaves, case["axis"], case["swing"], 1.0)  # float64: never Triton
            refs = [y_ref, *torch.autograd.grad(y_ref, leaves, gs.double())]
            y = triton_backend.forward(xs, d32, ws, bs, case["axis"], case["swing"], 1.0)
            grads = triton_backend.backward(gs, xs, d32, ws, True, case["axis"], case["swing"], 1.0, (True,) * 4)
            errors = {name: _relative_error(a, r) for name, a, r in
                      zip(("y", "grad_x", "grad_delta", "grad_weight", "grad_bias"), (y, *grads), refs)}
            dtype_name = str(dtype).replace("torch.", "")
            tol = TOLERANCES[dtype_name]
            ok = all(e <= tol for e in errors.values()) and grads[1].dtype == torch.float32
            dispatch = "triton" if triton_backend.usable(xs, d32, ws) else "pytorch"
            rows.append({"spatial": list(case["spatial"]), "axis": case["axis"], "swing_axes": list(case["swing"]),
                         "kernel_size": case["k"], "batch": case["batch"], "c_in": case["c_in"],
                         "c_out": case["c_out"], "dtype": dtype_name, "max_relative_error": errors,
                         "tolerance": tol, "dispatch": dispatch, "pass": ok})
            log(f"  kernels {case['spatial']} axis {case['axis']} {dtype_name}: worst error "
                f"{max(errors.values()):.2e} (tolerance {tol:g}) {'ok' if ok else 'FAIL'}; dispatch: {dispatch}")
    result = {"rows": rows, "pass": all(r["pass"] for r in rows),
              "reference": "SnakeConvFunction in float64 on the features rounded to the tested dtype "
                           f"({'PyTorch path' if device.type == 'cuda' else 'C kernels or PyTorch path'} on {device})"}
    if device.type == "cuda":
        result["speed"] = _speed(device, log)
    return result


def _speed(device, log) -> list[dict]:
    """Forward+backward of bench-blocks' 3D DSConv (K = 9) on the Triton kernels vs the PyTorch path."""
    import torch

    from nnunet_tubeconv.benchmarks.perf.bench_blocks import SIZES, SNAKE_K
    from nnunet_tubeconv.blocks import DSConv

    batch, ch, side = SIZES[3]
    torch.manual_seed(0)
    m = DSConv(torch.nn.Conv3d, ch, ch, kernel_size=SNAKE_K, axis=0).to(device)
    with torch.no_grad():
        m.swing_conv.weight.normal_(0, 0.1)
    x = torch.randn(batch, ch, side, side, side, device=device, requires_grad=True)
    rows = []
    for precision in ("fp32", "bf16"):
        times = {}
        for path in ("triton", "pytorch"):
            with set_environ(NNUNET_TUBECONV_TRITON="1" if path == "triton" else "0"):
                for _ in range(3):
                    _train_step(torch, m, x, precision)
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                for _ in range(10):
                    _train_step(torch, m, x, precision)
                torch.cuda.synchronize(device)
                times[path] = (time.perf_counter() - t0) / 10
        rows.append({"precision": precision, "shape": [batch, ch, side, side, side], "kernel_size": SNAKE_K,
                     "triton_ms": round(1000 * times["triton"], 3), "pytorch_ms": round(1000 * times["pytorch"], 3),
                     "speedup": round(times["pytorch"] / times["triton"], 3)})
        log(f"  DSConv 3D fwd+bwd {precision}: Triton {1000 * times['triton']:.2f} ms, PyTorch path "
            f"{1000 * times['pytorch']:.2f} ms")
    return rows


def _train_step(torch, module, x, precision: str) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = module(x)
    y.float().square().mean().backward()


# ---------------------------------------------------------------------------------------------------------------
# 2-4. the existing commands, with their own parsers and options


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"gpu-check: {module.__name__}")
    module.add_arguments(parser)
    return parser.parse_args(argv)


def bench_blocks_step(device, quick: bool, out: Path) -> dict:
    """Every row in fp32 and bf16 autocast; then ``torch.compile`` of the snake rows in bf16 (compiling every
    block in both precisions would take most of the time budget)."""
    from nnunet_tubeconv.benchmarks.perf import bench_blocks

    path = out / FILES["bench_blocks"]
    compile_path = path.with_name(path.stem + "_compile.json")
    argv = ["--device", str(device), "--precision", "fp32,bf16", "--compile", "no", "--json", str(path)]
    argv_compile = ["--device", str(device), "--precision", "bf16", "--compile", "yes", "--only", "DSConv,DSCBlock",
                    "--dims", "3", "--repeats", "1", "--warmup", "1", "--json", str(compile_path)]
    if quick:  # the snake rows only, tiny sizes; inductor on a CPU takes minutes, so no compile check
        argv += ["--quick", "--only", "DSConv", "--repeats", "1", "--warmup", "0"]
        argv_compile = None
    bench_blocks.run(_parse(bench_blocks, argv))
    result = {"argv": argv, **json.loads(path.read_text())}
    if argv_compile is not None:
        bench_blocks.run(_parse(bench_blocks, argv_compile))
        compiled = json.loads(compile_path.read_text())
        result["compile_argv"] = argv_compile
        result["compile"] = {r["name"]: r["compile"] for r in compiled["rows"]}
    return result


def bench_train_step(device, quick: bool, out: Path) -> dict:
    """bench-train as nnU-Net trains on GPU (amp: the target's report), plus fp32 and amp + torch.compile runs,
    whose ratios go to ``report["modes"]``. On CPU (``--quick`` report path): fp32 and ``aot_eager`` instead."""
    from nnunet_tubeconv.benchmarks.perf import bench_train

    argv = ["--device", device.type, "--variants", SNAKE_VARIANT] + (["--quick"] if quick else [])
    report = bench_train.benchmark(_parse(bench_train, argv))
    report["argv"] = argv
    others = {"fp32": ["--precision", "fp32"],
              "compile": ["--compile"] + (["aot_eager"] if device.type != "cuda" else [])}
    report["modes"] = {}
    for mode, extra in others.items():
        r = bench_train.benchmark(_parse(bench_train, argv + extra))
        report["modes"][mode] = {"argv": argv + extra, "precision": r["precision"], "compile": r["compile"],
                                 "rows": {x["variant"]: {k: x[k] for k in ("time_s", "time_ratio", "memory_bytes",
                                                                            "memory_ratio")} for x in r["results"]}}
    (out / FILES["bench_train"]).write_text(json.dumps(report, indent=1))
    return report


def calibration_step(device, quick: bool, out: Path, log) -> dict:
    from nnunet_tubeconv.benchmarks.perf import calibrate_memory

    # its CPU parts (estimates, step ratios) run in fresh processes; a GPU machine has cores to spare for them
    threads = 1 if quick else max(1, min(8, (os.cpu_count() or 2) // 2))
    result = calibrate_memory.calibrate(["vanilla", SNAKE_VARIANT], [8.0, 24.0] if not quick else [8.0],
                                        device=device.type, threads=threads, quick=quick, log=log)
    path = out / FILES["calibration"]
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(calibrate_memory.markdown_table(result))
    return result


# ---------------------------------------------------------------------------------------------------------------
# targets and report


def evaluate_targets(steps: dict, counts: bool) -> list[dict]:
    """Each GPU cost target with the measured value and met / not met / not measured."""

    def target(key: str, value: float | None, source: str, met: Callable[[float, float], bool]) -> dict:
        text, limit = TARGETS[key]
        status = "not measured" if value is None else ("met" if met(value, limit) else "not met")
        return {"key": key, "target": text, "limit": limit, "measured": value, "status": status, "source": source,
                "counts": counts and value is not None}

    rows_blocks = (steps.get("bench_blocks", {}).get("result") or {}).get("rows", [])
    row3 = next((r for r in rows_blocks if r["name"] == "DSConv 3D" and r["precision"] == "bf16"), None)
    train = (steps.get("bench_train", {}).get("result") or {}).get("results", [])
    snake = next((r for r in train if r["variant"] == SNAKE_VARIANT), None)
    plans = (steps.get("calibration", {}).get("result") or {}).get("plans", [])
    deviations = [abs(p["planner_predicted_peak_gib"] / p["measured_gpu_peak_gib"] - 1) for p in plans
                  if p.get("measured_gpu_peak_gib") and p.get("planner_predicted_peak_gib") is not None]
    return [
        target("dsconv3d_time", row3 and row3["time_ratio"], "bench-blocks row 'DSConv 3D', bf16: time_ratio",
               lambda v, lim: v <= lim),
        target("dsconv3d_saved", row3 and row3["saved_over_input"],
               "bench-blocks row 'DSConv 3D', bf16: saved_over_input", lambda v, lim: v <= lim),
        target("snake_iteration", snake and snake["time_ratio"], f"bench-train '{SNAKE_VARIANT}': time_ratio",
               lambda v, lim: v <= lim),
        target("planner_memory", max(deviations) if deviations else None,
               "calibrate-memory --device cuda: plans[].planner_predicted_peak_gib vs measured_gpu_peak_gib",
               lambda v, lim: v <= lim),
    ]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# gpu-check on {env['device_name']} ({env['device']})", ""]
    if not report["counts"]:
        lines += [("**Not a GPU measurement** (`--device cpu` and/or `--quick`): the report path only; no number "
                   "below says anything about a GPU."), ""]
    budget = "within" if report["seconds"] <= BUDGET_S else "OVER"
    lines += [(f"Command: `{report['command']}`; total {report['seconds']:.0f} s ({budget} the "
               f"{BUDGET_S // 60}-minute budget of a GPU run); status: "
               f"{'all steps ran' if report['ok'] else 'a step FAILED (see below)'}."), "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in env.items()]
    lines += ["", "## GPU cost targets", "", "| target | limit | measured | status | counts | source |",
              "|---|---|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['limit']:g} | {_fmt(t['measured'])} | **{t['status']}** | "
                     f"{'yes' if t['counts'] else 'no'} | {t['source']} |")
    lines += ["", "## Steps", "", "| step | status | seconds | output |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        status = "not run (--steps)" if step.get("skipped") else ("ok" if step["ok"] else f"FAILED: {step['error']}")
        lines.append(f"| {name} | {status} | {step['seconds']:.1f} | {step.get('file') or '-'} |")
    kc = (report["steps"].get("kernel_check") or {}).get("result")
    if kc:
        lines += ["", "## Triton kernels vs reference", "", f"Reference: {kc['reference']}.", "",
                  "| spatial | axis | K | batch | C_in | dtype | worst relative error | tolerance | dispatch | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in kc["rows"]:
            lines.append(f"| {r['spatial']} | {r['axis']} | {r['kernel_size']} | {r['batch']} | {r['c_in']} | "
                         f"{r['dtype']} | {max(r['max_relative_error'].values()):.2e} | {r['tolerance']:g} | "
                         f"{r['dispatch']} | {'yes' if r['pass'] else 'NO'} |")
    compiled = ((report["steps"].get("bench_blocks") or {}).get("result") or {}).get("compile")
    if compiled:
        lines += ["", "torch.compile of the snake blocks (bf16, 3D): "
                  + ", ".join(f"{k}: {v}" for k, v in compiled.items()) + "."]
    train = (report["steps"].get("bench_train") or {}).get("result") or {}
    if train.get("results"):
        lines += ["", "## bench-train (one nnU-Net training iteration, vanilla vs the snake variant)", "",
                  "| mode | vanilla s | snake s | time x vanilla | memory x vanilla |", "|---|---|---|---|---|"]
        runs = {f"{train.get('precision', 'amp')} (target)": {x["variant"]: x for x in train["results"]}}
        for mode, r in (train.get("modes") or {}).items():
            runs[f"{r['precision']}" + (f" + torch.compile {r['compile']}" if r["compile"] else "")] = r["rows"]
        for mode, rows in runs.items():
            v, sn = rows.get("vanilla"), rows.get(SNAKE_VARIANT)
            if v and sn:
                lines.append(f"| {mode} | {v['time_s']:.3g} | {sn['time_s']:.3g} | {sn['time_ratio']:.2f} | "
                             f"{sn['memory_ratio']:.2f} |")
    if kc:
        for s in kc.get("speed", []):
            lines.append(f"\nDSConv 3D {s['shape']} K={s['kernel_size']} forward+backward, {s['precision']}: Triton "
                         f"{s['triton_ms']} ms, PyTorch path {s['pytorch_ms']} ms ({s['speedup']}x).")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    steps = [s.strip() for s in str(args.steps).split(",") if s.strip()]
    if not steps or any(s not in STEPS for s in steps):
        raise ValueError(f"--steps must be a comma list of {', '.join(STEPS)}; got {args.steps!r}")
    device = _device(args.device)  # ValueError without CUDA: exit status 2 with the message (cli.py)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = (f"nnunet-tubeconv gpu-check -o {args.out} --device {args.device}" + (" --quick" if args.quick else "")
               + ("" if len(steps) == len(STEPS) else f" --steps {','.join(steps)}"))
    report: dict[str, Any] = {"command": command, "environment": environment(device),
                              "counts": device.type == "cuda" and not args.quick, "quick": bool(args.quick),
                              "steps": {}}

    def step(name: str, fn: Callable[[], dict], file: str | None = None) -> None:
        print(f"gpu-check: {name} ...", flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"file": file}
        try:
            entry["result"] = fn()
            entry["ok"] = bool(entry["result"].get("pass", True))
            entry["error"] = None if entry["ok"] else "results outside tolerance"
        except Exception as e:  # noqa: BLE001 - recorded in the report; the other steps still run
            entry.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            print(f"gpu-check: {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        report["steps"][name] = entry

    chosen = set(steps)
    for key, name, fn, file in (
        ("kernels", "kernel_check", lambda: kernel_check(device, args.quick), None),
        ("blocks", "bench_blocks", lambda: bench_blocks_step(device, args.quick, out), FILES["bench_blocks"]),
        ("train", "bench_train", lambda: bench_train_step(device, args.quick, out), FILES["bench_train"]),
        ("memory", "calibration", lambda: calibration_step(device, args.quick, out, print), FILES["calibration"]),
    ):
        if key in chosen:
            step(name, fn, file)
        else:
            report["steps"][name] = {"ok": True, "skipped": True, "seconds": 0.0, "file": None, "error": None}
    report["targets"] = evaluate_targets(report["steps"], report["counts"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    (out / FILES["json"]).write_text(json.dumps(report, indent=1, default=str))
    (out / FILES["md"]).write_text(markdown(report))
    for t in report["targets"]:
        print(f"  {t['target']}: {_fmt(t['measured'])} (limit {t['limit']:g}) -> {t['status']}"
              + ("" if t["counts"] else " [does not count: not a GPU run]"))
    print(f"wrote {out / FILES['md']} and {out / FILES['json']} ({report['seconds']:.0f} s)")
    return 0 if report["ok"] else 1
