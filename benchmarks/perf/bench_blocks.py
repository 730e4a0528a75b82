"""``nnunet-tubeconv bench-blocks``: speed and backward memory of every block, as ratios to a plain conv block.

Each row times one block and its baseline, "the plain conv block of the same width", in the same process on the same
inputs, and divides. Baselines (the ``baseline`` column; the legend under the table repeats this):

* ``conv3``: ``nn.ConvNd(C, C, 3, padding=1)``, for the bare DSConv (a convolution without norm or nonlinearity);
* ``CNR``: dynamic_network_architectures' ``ConvDropoutNormReLU(C -> C, kernel 3)`` with nnU-Net's defaults
  (InstanceNorm affine, LeakyReLU in place): the block that DSCBlock / DeformConv replace, and the conv block of the
  same width for the add-on blocks (DLK, DLKBlock, scSE);
* ``cat+CNR``: ``torch.cat((x, skip))`` then ``ConvDropoutNormReLU(2C -> C, 3)``: nnU-Net's skip fusion and the first
  decoder convolution, for DFF, which replaces the concatenation.

Measured per row (training mode, fresh parameters, inputs that require grad):

* time: one forward and one backward (pre-drawn output gradient), parameter gradients reset to None each time;
  ``--warmup`` untimed runs, then ``--repeats`` rounds that alternate baseline and block (so that slow drifts in
  the machine's load hit both alike), median per module. On GPU the device is synchronised before and after each run.
* saved: bytes autograd keeps for backward in one forward, counted with ``torch.autograd.graph.saved_tensors_hooks``
  and de-duplicated by storage, parameters excluded (the inputs count when a module saves them). Works on any device.
* peak (GPU only): ``torch.cuda.max_memory_allocated`` during forward+backward minus what was allocated before.
* compile (GPU by default, ``--compile yes`` elsewhere): whether ``torch.compile(block)`` runs forward+backward.

``--timer cpu`` times with the process's CPU time instead of wall time. On a CPU shared with other jobs, wall times of
a multi-threaded run are not only noisy but biased: every parallel region waits for its slowest, possibly
descheduled, thread, so a block made of many small operations (scSE, DLK) is slowed far more than one large
convolution, and its ratio rises (measured here at load average 6-9 on 2 cores: CNR+scSE 1.7-2.5x wall with 2
threads vs 1.2x CPU time with 1). ``--timer cpu --threads 1`` gives stable ratios there; the table title records
the timer, thread count and load average.

Targets (the ``target`` column, PASS/FAIL against the measured values):

* DSConv 3D (B=2, 16->16, 32^3, K=9): time <= 6x ``conv3``, saved bytes <= 4x the input's bytes;
* DSConv 2D (B=12, 32->32, 128^2, K=9): the same;
* "CNR+SCSE": ``CNR`` followed by scSE (add) vs ``CNR`` alone: time <= 1.3x. scSE is an add-on placed after a conv
  block, so its cost is judged as what it adds to that block (scSE alone vs ``CNR`` is also listed; being a 1x1
  convolution plus gates, it is far below 1.3x by construction, so a target there would test nothing).
* every other row reports only. DLK rows name the selection mode that ran (``paper`` or ``authors2025``).

``--quick`` shrinks every size so that the command runs in seconds (tests); its ratios mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (batch, channels, side) per spatial dimension; the full sizes are those of the DSConv targets
SIZES = {3: (2, 16, 32), 2: (12, 32, 128)}
QUICK_SIZES = {3: (1, 4, 6), 2: (2, 4, 12)}
SNAKE_K = 9
BASELINES = {
    "conv3": "nn.ConvNd(C, C, 3, padding=1)",
    "CNR": "ConvDropoutNormReLU(C->C, k3, stride 1): conv + InstanceNorm(affine) + LeakyReLU(inplace), nnU-Net default",
    "cat+CNR": "torch.cat((x, skip)) + ConvDropoutNormReLU(2C->C, k3): nnU-Net's skip fusion + first decoder conv",
}


@dataclass
class Case:
    """One table row: a block, its baseline and the inputs both take."""

    name: str
    dim: int
    baseline: str  # key of BASELINES
    make_block: Callable[[], Any]
    make_baseline: Callable[[], Any]
    input_shapes: list[tuple[int, ...]]
    time_target: float | None = None
    saved_over_input_target: float | None = None
    extra: dict = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', ... or 'auto' (cuda if available)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per module; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per module before timing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests: numbers are not meaningful")
    parser.add_argument("--dims", default="3,2", help="spatial dimensions to run, e.g. '3' or '3,2' (default)")
    parser.add_argument("--only", default=None,
                        help="comma-separated case-insensitive substrings; run only rows whose name contains one")
    parser.add_argument("--precision", default="auto",
                        help="comma list of fp32, bf16 (bf16 = torch.autocast bfloat16); auto: fp32 on CPU, "
                             "fp32,bf16 on GPU")
    parser.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                        help="check whether torch.compile(block) runs forward+backward (auto: on GPU only)")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (default); cpu: this process's CPU time, CPU device only. On a CPU "
                             "shared with other jobs, '--timer cpu --threads 1' gives times that the other jobs "
                             "barely disturb (with more threads, waiting threads may count)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows and settings as JSON")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if any target FAILs")


def _round_sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits: the number printed and stored, from which ratios are computed."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 4)


def build_cases(dims: list[int], quick: bool) -> list[Case]:
    """The rows, in table order. Imports torch and the blocks."""
    import torch
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
    from torch import nn

    from nnunet_tubeconv.blocks import DFF, DLK, SCSE, DLKBlock

    class CatThen(nn.Module):
        """``conv(cat((x, skip), 1))``: nnU-Net's skip fusion followed by the decoder stage's first conv block."""

        def __init__(self, conv: nn.Module) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cat((x, skip), 1))

    cases: list[Case] = []
    for dim in dims:
        conv_op = {2: nn.Conv2d, 3: nn.Conv3d}[dim]
        norm_op = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]
        batch, c, side = (QUICK_SIZES if quick else SIZES)[dim]
        x_shape = (batch, c) + (side,) * dim
        # nnU-Net's default conv block settings (plans of the default planner)
        layer = {"conv_bias": True, "norm_op": norm_op, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                 "dropout_op": None, "dropout_op_kwargs": None, "nonlin": nn.LeakyReLU,
                 "nonlin_kwargs": {"inplace": True}}
        # default arguments bind this iteration's values: the factories run after the loop
        def cnr(cin: int = c, cout: int = c, op: type = conv_op, kw: dict = layer) -> nn.Module:
            return ConvDropoutNormReLU(op, cin, cout, 3, 1, **kw)

        def dsconv(op=conv_op, ch=c):
            from nnunet_tubeconv.blocks import DSConv

            return DSConv(op, ch, ch, kernel_size=SNAKE_K, axis=0)

        def conv3(op=conv_op, ch=c):
            return op(ch, ch, 3, padding=1)

        def dscblock(op=conv_op, ch=c, kw=layer):
            from nnunet_tubeconv.blocks import DSCBlock

            return DSCBlock(op, ch, ch, kernel_size=3, stride=1, snake_kernel_size=SNAKE_K, **kw)

        def deform(op=conv_op, ch=c, kw=layer):
            from nnunet_tubeconv.blocks import DeformConv

            return DeformConv(op, ch, ch, kernel_size=3, stride=1, **kw)

        def dlk(mode, op=conv_op, ch=c):
            return lambda: DLK(op, ch, mode=mode)

        def dlk_block(op=conv_op, ch=c):
            return DLKBlock(op, ch, mlp_ratio=4, dlk_mode="paper")

        def dff(op=conv_op, ch=c):
            return DFF(op, ch)

        def cat_cnr(ch=c, make=cnr):
            return CatThen(make(2 * ch, ch))

        def scse(mode, op=conv_op, ch=c):
            return lambda: SCSE(op, ch, mode=mode)

        def cnr_scse(op=conv_op, ch=c, make=cnr):
            return nn.Sequential(make(), SCSE(op, ch, mode="add"))

        d = f"{dim}D"
        cases += [
            Case(f"DSConv {d}", dim, "conv3", dsconv, conv3, [x_shape], time_target=6.0, saved_over_input_target=4.0,
                 extra={"kernel_size": SNAKE_K}),
            Case(f"DSCBlock {d}", dim, "CNR", dscblock, cnr, [x_shape], extra={"snake_kernel_size": SNAKE_K}),
            Case(f"DeformConv {d}", dim, "CNR", deform, cnr, [x_shape]),
            Case(f"DLK[paper] {d}", dim, "CNR", dlk("paper"), cnr, [x_shape]),
            Case(f"DLK[authors2025] {d}", dim, "CNR", dlk("authors2025"), cnr, [x_shape]),
            Case(f"DLKBlock[paper] {d}", dim, "CNR", dlk_block, cnr, [x_shape], extra={"mlp_ratio": 4}),
            Case(f"DFF {d}", dim, "cat+CNR", dff, cat_cnr, [x_shape, x_shape]),
            Case(f"SCSE[add] {d}", dim, "CNR", scse("add"), cnr, [x_shape]),
            Case(f"SCSE[max] {d}", dim, "CNR", scse("max"), cnr, [x_shape]),
            Case(f"CNR+SCSE[add] {d}", dim, "CNR", cnr_scse, cnr, [x_shape], time_target=1.3),
        ]
    return cases


class _Runner:
    """Times and measures modules on one device at one precision."""

    def __init__(self, device: Any, precision: str, timer: str = "wall") -> None:
        import torch

        self.torch = torch
        self.device = device
        self.precision = precision
        self.cuda = device.type == "cuda"
        self.clock = time.process_time if timer == "cpu" else time.perf_counter

    def _autocast(self):
        if self.precision == "bf16":
            return self.torch.autocast(device_type=self.device.type, dtype=self.torch.bfloat16)
        return self.torch.autocast(device_type=self.device.type, enabled=False)

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def step(self, module, inputs, grad) -> None:
        """One forward + backward; gradients reset to None first so no run accumulates into another's."""
        for p in module.parameters():
            p.grad = None
        for t in inputs:
            t.grad = None
        with self._autocast():
            out = module(*inputs)
        out.backward(grad.to(out.dtype))

    def timed(self, module, inputs, grad) -> float:
        self._sync()
        t0 = self.clock()
        self.step(module, inputs, grad)
        self._sync()
        return self.clock() - t0

    def saved_bytes(self, module, inputs) -> int:
        from nnunet_tubeconv.architectures.memory import measure_saved_tensors

        def forward():
            with self._autocast():
                return module(*inputs)

        return measure_saved_tensors(forward, exclude=list(module.parameters()))[1]

    def peak_bytes(self, module, inputs, grad) -> int | None:
        if not self.cuda:
            return None
        cuda = self.torch.cuda
        self._sync()
        cuda.reset_peak_memory_stats(self.device)
        before = cuda.memory_allocated(self.device)
        self.step(module, inputs, grad)
        self._sync()
        return int(cuda.max_memory_allocated(self.device) - before)

    def compile_works(self, module, inputs, grad) -> str:
        torch = self.torch
        try:
            torch._dynamo.reset()  # a fresh cache per block: no recompile limit silently falling back to eager
            compiled = torch.compile(module)
            for _ in range(2):
                self.step(compiled, inputs, grad)
            self._sync()
            return "ok"
        except Exception as e:  # noqa: BLE001 - any failure is the answer to "does it compile"; record which
            return f"fail: {type(e).__name__}"


def measure(case: Case, runner: _Runner, repeats: int, warmup: int, check_compile: bool) -> dict:
    """One row: time, saved bytes (and on GPU peak memory, compile check) of ``case``'s block and baseline."""
    from nnunet_tubeconv.blocks import DLK

    torch = runner.torch
    torch.manual_seed(0)
    block = case.make_block().to(runner.device).train()
    baseline = case.make_baseline().to(runner.device).train()
    inputs = [torch.randn(s, device=runner.device, requires_grad=True) for s in case.input_shapes]
    with torch.no_grad(), runner._autocast():
        out_shape = block(*inputs).shape
        if baseline(*inputs).shape != out_shape:
            raise RuntimeError(f"{case.name}: block and baseline outputs differ in shape")
    grad = torch.randn(out_shape, device=runner.device)

    for _ in range(warmup):
        runner.step(baseline, inputs, grad)
        runner.step(block, inputs, grad)
    times: dict[str, list[float]] = {"block": [], "baseline": []}
    for _ in range(repeats):  # alternate, so that a burst of load from elsewhere hits both
        times["baseline"].append(runner.timed(baseline, inputs, grad))
        times["block"].append(runner.timed(block, inputs, grad))

    t_block = _round_sig(1000 * statistics.median(times["block"]))
    t_base = _round_sig(1000 * statistics.median(times["baseline"]))
    saved_block = runner.saved_bytes(block, inputs)
    saved_base = runner.saved_bytes(baseline, inputs)
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)
    peak_block = runner.peak_bytes(block, inputs, grad)
    peak_base = runner.peak_bytes(baseline, inputs, grad)
    row = {
        "name": case.name,
        "block": type(block).__name__,
        "dim": case.dim,
        "device": str(runner.device),
        "precision": runner.precision,
        "input_shapes": [list(s) for s in case.input_shapes],
        "baseline": case.baseline,
        "baseline_definition": BASELINES[case.baseline],
        "time_block_ms": t_block,
        "time_baseline_ms": t_base,
        "time_ratio": _ratio(t_block, t_base),
        "saved_block_bytes": saved_block,
        "saved_baseline_bytes": saved_base,
        "saved_ratio": _ratio(saved_block, saved_base),
        "input_bytes": input_bytes,
        "saved_over_input": _ratio(saved_block, input_bytes),
        "peak_block_bytes": peak_block,
        "peak_baseline_bytes": peak_base,
        "peak_ratio": _ratio(peak_block, peak_base),
        "compile": runner.compile_works(block, inputs, grad) if check_compile else None,
        # which DLK selection ran, read from the module itself (docs/explanation/maths.md section 3: every
        # benchmark records it)
        "dlk_mode": next((m.mode for m in block.modules() if isinstance(m, DLK)), None),
        "targets": {},
        "pass": None,
        **case.extra,
    }
    checks = []
    if case.time_target is not None:
        row["targets"]["time_ratio"] = case.time_target
        checks.append(row["time_ratio"] <= case.time_target)
    if case.saved_over_input_target is not None:
        row["targets"]["saved_over_input"] = case.saved_over_input_target
        checks.append(row["saved_over_input"] <= case.saved_over_input_target)
    if checks:
        row["pass"] = all(checks)
    return row


def _mib(n: int | None) -> str:
    return "-" if n is None else _num(_round_sig(n / 2**20))


def _num(v: float | None, fmt: str = ".4g") -> str:
    if v is None:
        return "-"
    # large values are already rounded to 4 significant digits: print them whole rather than as 1.093e+04
    return f"{v:.0f}" if abs(v) >= 1e4 else format(v, fmt)


def _target_text(targets: dict) -> str:
    parts = []
    if "time_ratio" in targets:
        parts.append(f"time<={targets['time_ratio']:g}x")
    if "saved_over_input" in targets:
        parts.append(f"saved<={targets['saved_over_input']:g}x input")
    return ", ".join(parts) or "report"


def print_table(rows: list[dict], title: str, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    gpu = any(r["peak_block_bytes"] is not None for r in rows)
    compiled = any(r["compile"] is not None for r in rows)
    table = Table(title=title, title_justify="left")
    for col, kw in [("row", {}), ("baseline", {}), ("input (B,C,*S)", {}), ("t block ms", {"justify": "right"}),
                    ("t base ms", {"justify": "right"}), ("t ratio", {"justify": "right"}),
                    ("saved block MiB", {"justify": "right"}), ("saved base MiB", {"justify": "right"}),
                    ("saved ratio", {"justify": "right"}), ("saved/input", {"justify": "right"})]:
        table.add_column(col, no_wrap=True, **kw)
    if gpu:
        for col in ("peak block MiB", "peak base MiB", "peak ratio"):
            table.add_column(col, justify="right", no_wrap=True)
    if compiled:
        table.add_column("compile", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for r in rows:
        shapes = " + ".join("x".join(map(str, s)) for s in r["input_shapes"])
        cells = [escape(r["name"]), r["baseline"], shapes, _num(r["time_block_ms"]), _num(r["time_baseline_ms"]),
                 _num(r["time_ratio"], ".3g"), _mib(r["saved_block_bytes"]), _mib(r["saved_baseline_bytes"]),
                 _num(r["saved_ratio"], ".3g"), _num(r["saved_over_input"], ".3g")]
        if gpu:
            cells += [_mib(r["peak_block_bytes"]), _mib(r["peak_baseline_bytes"]), _num(r["peak_ratio"], ".3g")]
        if compiled:
            cells.append(r["compile"] or "-")
        result = {True: "[green]PASS[/green]", False: "[red]FAIL[/red]", None: "-"}[r["pass"]]
        cells += [_target_text(r["targets"]), result]
        table.add_row(*cells)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    try:
        dims = sorted({int(d) for d in str(args.dims).split(",") if d.strip()}, reverse=True)
    except ValueError:
        raise ValueError(f"--dims must be a comma list of 2 and/or 3, got {args.dims!r}") from None
    if not dims or any(d not in (2, 3) for d in dims):
        raise ValueError(f"--dims must be a comma list of 2 and/or 3, got {args.dims!r}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--threads and --repeats must be >= 1 and --warmup >= 0")

    import torch
    from rich.console import Console

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"bad --device {args.device!r}: {e}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.precision == "auto":
        precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    else:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
            raise ValueError(f"--precision must be a comma list of fp32, bf16; got {args.precision!r}")
    check_compile = args.compile == "yes" or (args.compile == "auto" and device.type == "cuda")
    if args.timer == "cpu" and device.type != "cpu":
        raise ValueError("--timer cpu measures CPU time and needs --device cpu (GPU work runs asynchronously)")

    cases = build_cases(dims, args.quick)
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if any(w in c.name.lower() for w in wanted)]
        if not cases:
            raise ValueError(f"--only {args.only!r} matches no row")

    console = Console() if sys.stdout.isatty() else Console(width=240)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net trains
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    meta = {
        "arguments": {k: v for k, v in vars(args).items() if k != "command"},
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "quick": bool(args.quick),
        "precisions": precisions,
        "baselines": BASELINES,
        "time": f"median of forward+backward {'process CPU' if args.timer == 'cpu' else 'wall'} time, ms",
        "saved": "bytes saved for backward in one training forward (saved_tensors_hooks, per storage, no params)",
    }
    rows: list[dict] = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    unavailable: dict[str, str] = {}
    for precision in precisions:
        runner = _Runner(device, precision, args.timer)
        block_rows = []
        for case in cases:
            try:
                block_rows.append(measure(case, runner, args.repeats, args.warmup, check_compile))
            except ImportError as e:  # a block not (yet) in nnunet_tubeconv.blocks: say so, measure the others
                unavailable[case.name] = str(e)
        rows += block_rows
        load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
        quick = ", QUICK sizes: ratios not meaningful" if args.quick else ""
        title = (f"bench-blocks on {device} ({device_name}), {precision}, {torch.get_num_threads()} threads, "
                 f"{args.timer} time, median of {args.repeats}{load}{quick}")
        print_table(block_rows, title, console)
    console.print("baselines: " + "; ".join(f"{k} = {v}" for k, v in BASELINES.items()), soft_wrap=True)
    for name, why in unavailable.items():
        console.print(f"NOT MEASURED {name}: {why}", soft_wrap=True, markup=False)
    meta["not_measured"] = unavailable
    failed = [r["name"] + f" ({r['precision']})" for r in rows if r["pass"] is False]
    console.print(f"targets: {sum(r['pass'] is True for r in rows)} PASS, {len(failed)} FAIL"
                  + (f" ({', '.join(failed)})" if failed else ""), soft_wrap=True)
    if load_before is not None:
        # other processes on the CPU distort times (ratios less so: rounds alternate); record how busy it was
        meta["load_average_1min"] = [load_before, os.getloadavg()[0]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        console.print(f"wrote {args.json}")
    return 1 if (args.check and failed) else 0
