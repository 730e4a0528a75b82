"""Where the snake network's training time goes.

Run as ``python -m nnunet_tubeconv.benchmarks.studies.snake_cost.profile_snake``.

Two views of one nnU-Net training iteration (bench-train's ``train_step``: forward with deep supervision, nnU-Net's
loss, backward, clipping, SGD) of the default snake network (``nnUNetTrainerDSConv``'s) on a realistic plan
(``--plan drive2d``, default, or ``hepaticvessel3d``; :mod:`nnunet_tubeconv.benchmarks.perf.realistic_plans`):

1. **Whole network**: vanilla and snake iterations timed alternately (medians), and the difference.
2. **Per DSCBlock**, on the input the block receives inside the network: each part run alone, forward + backward,
   median of ``--repeats`` (the plain branch is exactly the convolution the block replaces; everything else is
   extra): swing branch (3^d conv + tanh), the snake's interpolated reads in C (``sample``, forward), the snake's
   backward reads + swing gradient in C (``gather_backward``) and adjoint scatter in C (``scatter``), the snake's
   GEMMs and layout changes (the autograd function's time minus its C kernels), the snake's norm + nonlin, the
   multi-view fusion (concatenation + fuse conv) and the block's tail (norm + nonlin).

The C kernels are timed by wrapping :class:`nnunet_tubeconv.blocks.dsconv.cpu_backend.SnakeKernels`' three methods
in this process only (the library itself is untouched). ``-o FILE.md`` writes the tables as markdown with the command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

PROG = "python -m nnunet_tubeconv.benchmarks.studies.snake_cost.profile_snake"
#: the clock of every measurement: wall time (default) or this process's CPU time (``--timer cpu``: with one thread
#: it is the work done, nearly independent of other processes' load on a shared machine)
_CLOCK = {"now": time.perf_counter}


def _now() -> float:
    return _CLOCK["now"]()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = _now()
        fn()
        times.append(_now() - t0)
    return statistics.median(times)


class _KernelClock:
    """Wall time spent in SnakeKernels.sample / gather_backward / scatter while active."""

    def __init__(self):
        from nnunet_tubeconv.blocks.dsconv import cpu_backend

        self.cls = cpu_backend.SnakeKernels
        self.spent: dict[str, float] = defaultdict(float)
        self.originals = {n: getattr(self.cls, n) for n in ("sample", "gather_backward", "scatter")}

        def wrap(name, fn):
            def timed(*a, **k):
                t0 = _now()
                out = fn(*a, **k)
                self.spent[name] += _now() - t0
                return out
            return timed

        for n, fn in self.originals.items():
            setattr(self.cls, n, wrap(n, fn))

    def reset(self):
        self.spent.clear()

    def close(self):
        for n, fn in self.originals.items():
            setattr(self.cls, n, fn)


def block_breakdown(torch, block, x, repeats: int, clock: _KernelClock) -> list[tuple[str, float]]:
    """``[(part, seconds per forward + backward)]`` of one DSCBlock on input ``x`` (parts as in the module doc)."""
    from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction as _SnakeConvFunction

    def fb(fn, *inputs):
        def run():
            ins = [t.detach().requires_grad_(True) for t in inputs]
            out = fn(*ins)
            out.backward(torch.ones_like(out))
        return _median_time(run, repeats)

    rows = [("plain branch (= the replaced conv + norm + nonlin)", fb(block.plain, x))]
    with torch.no_grad():
        h = block.plain(x)
    src = h if block.strided_snakes_follow_plain else x
    swing = fn_snake = kern = tail = 0.0
    kparts: dict[str, float] = defaultdict(float)
    for snake in block.snakes:
        if snake.swing_conv is not None:
            swing += fb(snake.swing, src)
        with torch.no_grad():
            delta = snake.swing(src)
            raw = _SnakeConvFunction.apply(src, delta, snake.conv.weight.reshape(
                snake.output_channels, snake.input_channels, snake.kernel_size), snake.conv.bias, snake.axis,
                snake.swing_axes, snake.extend_scope)

        def snake_fn(xx, dd, snake=snake):
            w = snake.conv.weight.reshape(snake.output_channels, snake.input_channels, snake.kernel_size)
            return _SnakeConvFunction.apply(xx, dd, w, snake.conv.bias, snake.axis, snake.swing_axes,
                                            snake.extend_scope)

        clock.reset()
        t = fb(snake_fn, src, delta) if delta is not None else fb(lambda xx: snake_fn(xx, None), src)
        for k, v in clock.spent.items():
            kparts[k] += v / (repeats + 1)  # fb runs one warm-up + repeats
        fn_snake += t
        tail += fb(lambda y, snake=snake: snake.nonlin(snake.norm(y)), raw)
    kern = sum(kparts.values())
    rows += [
        ("swing branches (conv 3^d + tanh)", swing),
        ("snake reads, C `sample` (forward)", kparts["sample"]),
        ("snake backward reads + swing gradient, C `gather_backward`", kparts["gather_backward"]),
        ("snake adjoint scatter, C `scatter`", kparts["scatter"]),
        ("snake GEMMs + layout (autograd function minus C kernels)", fn_snake - kern),
        ("snake norm + nonlin", tail),
    ]
    with torch.no_grad():
        branches = [h] + [s(src) for s in block.snakes]
    rows.append(("fusion: concatenation + fuse conv", fb(lambda *b: block.fuse(torch.cat(b, 1)), *branches)))
    with torch.no_grad():
        fused = block.fuse(torch.cat(branches, 1))
    rows.append(("block tail: dropout + norm + nonlin",
                 fb(lambda f: block.nonlin(block.norm(block.dropout(f))), fused)))
    return rows


def profile(args: argparse.Namespace) -> dict:
    import torch

    from nnunet_tubeconv.architectures import variant_architecture
    from nnunet_tubeconv.benchmarks.perf import bench_train
    from nnunet_tubeconv.benchmarks.perf.realistic_plans import realistic_plan
    from nnunet_tubeconv.blocks import DSConv
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    torch.set_num_threads(args.threads)
    _CLOCK["now"] = time.process_time if args.timer == "cpu" else time.perf_counter
    entry, run = realistic_plan(args.plan) if args.plan != "toy" else bench_train.small_plan(3, args.quick)
    strides = entry["arch_kwargs"]["strides"]
    loss, data, targets = bench_train.loss_and_targets(torch, run, strides, torch.device("cpu"))
    vanilla = bench_train.BenchModel("vanilla", entry, run, torch, 0)
    snake = bench_train.BenchModel("dsconv", variant_architecture(entry, "dsconv"), run, torch, 0)
    load_before = os.getloadavg()
    # arms: (model, oneDNN linear for DSConv's GEMMs or None = torch.mm, the implementation before this study)
    onednn = cpu_backend.onednn_linear()
    arms = [("vanilla", vanilla, onednn), ("snake", snake, onednn)]
    if args.compare_gemm:
        arms.append(("snake, torch.mm GEMMs", snake, None))
    times: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    try:
        for rnd in range(args.steps + 1):  # round 0 is the warm-up
            for name, m, op in arms:
                cpu_backend.set_linear_op(op)
                t0 = _now()
                bench_train.train_step(torch, m, loss, data, targets)
                if rnd:
                    times[name].append(_now() - t0)
    finally:
        cpu_backend.set_linear_op(onednn)
    medians = {name: statistics.median(t) for name, t in times.items()}
    t_van, t_snake = medians["vanilla"], medians["snake"]

    blocks = [] if args.no_blocks else _blocks(torch, snake.net, data, args.repeats)
    dsc = [m for m in snake.net.modules() if isinstance(m, DSConv)]
    gemm = {}
    if dsc:  # the GEMM shape of a chunk of the first DSConv: ~1M sample elements, as dsconv._chunks cuts them
        first = dsc[0]
        inner = (first.kernel_size - 1) * first.input_channels
        gemm = gemm_rates(torch, max(1, (1 << 20) // (first.kernel_size * first.input_channels)), inner,
                          first.output_channels, 5)
    one = data[:1]  # MACs per sample (the ratio does not depend on the batch)
    macs = {"vanilla": forward_macs(torch, vanilla.net, one), "snake": forward_macs(torch, snake.net, one)}
    return {"plan": run["plan"], "patch_size": run["patch_size"], "batch_size": run["batch_size"],
            "threads": torch.get_num_threads(), "native": cpu_backend.status(), "vanilla_s": t_van, "snake_s": t_snake,
            "macs_per_sample": macs, "gemm_gflops": gemm, "arms": medians,
            "gemm": "oneDNN" if onednn is not None else "torch.mm", "timer": args.timer,
            "steps": args.steps, "repeats": args.repeats, "blocks": blocks,
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())}}


def _blocks(torch, net, data, repeats: int) -> list[dict]:
    """The breakdown of every DSCBlock of ``net``, each on the input it receives from ``data``."""
    from nnunet_tubeconv.blocks.dscblock import DSCBlock
    from nnunet_tubeconv.deploy.snakes import forward_capturing_inputs

    layers = [(name, mod) for name, mod in net.named_modules() if isinstance(mod, DSCBlock)]
    _, inputs = forward_capturing_inputs(net, data, layers)
    clock = _KernelClock()
    blocks = []
    try:
        for name, mod in layers:
            x = inputs[name]
            blocks.append({"name": name, "input": list(x.shape),
                           "parts": block_breakdown(torch, mod, x, repeats, clock)})
    finally:
        clock.close()
    return blocks


def gemm_rates(torch, rows: int, inner: int, cols: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of DSConv's forward GEMM shape ``(rows, inner) x (inner, cols)``: ``torch.mm`` and oneDNN's linear
    (as ``cpu_backend.linear`` calls it; absent where this PyTorch lacks it)."""
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    a, w = torch.randn(rows, inner), torch.randn(cols, inner)
    flops = 2.0 * rows * inner * cols
    out = {"torch.mm": flops / _median_time(lambda: torch.mm(a, w.t()), repeats) / 1e9}
    op = cpu_backend.onednn_linear()
    if op is not None:
        out["oneDNN linear"] = flops / _median_time(lambda: op(a, w, None, "none", [], ""), repeats) / 1e9
    return out


def forward_macs(torch, net, x) -> int:
    """Multiply-accumulates of one forward pass of ``net`` on ``x`` in its convolutions (transposed ones included)
    and DSConv's weight contractions (``K * C_in * C_out`` per output position; its swing conv is a convolution)."""
    from torch import nn

    from nnunet_tubeconv.blocks import DSConv

    total = [0]

    def conv_hook(mod, inp, out):
        k = int(torch.tensor(mod.kernel_size).prod())
        if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            total[0] += inp[0].numel() * mod.out_channels // mod.groups * k
        else:
            total[0] += out.numel() * mod.in_channels // mod.groups * k

    def snake_hook(mod, inp, out):
        total[0] += out.numel() * mod.input_channels * mod.kernel_size

    hooks = []
    for mod in net.modules():
        if isinstance(mod, DSConv):
            hooks.append(mod.register_forward_hook(snake_hook))
        elif isinstance(mod, nn.modules.conv._ConvNd):
            hooks.append(mod.register_forward_hook(conv_hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def markdown(result: dict, command: str) -> str:
    la = result["load_average"]
    extra = result["snake_s"] - result["vanilla_s"]
    before = " ".join(f"{v:.2f}" for v in la["before"])
    after = " ".join(f"{v:.2f}" for v in la["after"])
    plan_line = (f"Plan: patch {result['patch_size']}, batch {result['batch_size']}; CPU, {result['threads']} "
                 f"thread(s); {result['native']}; {result['timer']} time. Load average (1/5/15 min) before "
                 f"{before}, after {after}.")
    ratio = result["snake_s"] / result["vanilla_s"]
    step_line = (f"One training iteration (median of {result['steps']}, vanilla and snake alternating): vanilla "
                 f"{result['vanilla_s']:.2f} s, snake {result['snake_s']:.2f} s ({ratio:.2f}x), difference "
                 f"{extra:.2f} s.")
    macs = result["macs_per_sample"]
    macs_line = (f"Forward multiply-accumulates per sample (convolutions and DSConv's weight contractions, "
                 f"`forward_macs`): vanilla {macs['vanilla'] / 1e9:.1f} G, snake {macs['snake'] / 1e9:.1f} G "
                 f"({macs['snake'] / macs['vanilla']:.2f}x): the time ratio if every part ran at the same speed.")
    lines = [f"# Where the snake network's training time goes ({result['plan']})", "", f"Command: `{command}`", "",
             plan_line, "", step_line, "", macs_line, ""]
    if result["gemm_gflops"]:
        lines += ["DSConv's forward GEMM (one chunk of the first DSConv), GFLOP/s: " + ", ".join(
            f"{k} {v:.0f}" for k, v in result["gemm_gflops"].items()), ""]
    if len(result["arms"]) > 2:
        lines += [f"Arms timed in turn in the same run (DSConv's GEMMs: {result['gemm']} unless named):", "",
                  "| arm | s per iteration | x vanilla |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {t:.2f} | {t / result['vanilla_s']:.2f} |" for name, t in result["arms"].items()]
        lines.append("")
    total_extra = 0.0
    for b in result["blocks"]:
        parts = b["parts"]
        block_total = sum(t for _, t in parts)
        block_extra = block_total - parts[0][1]
        total_extra += block_extra
        lines += [f"## `{b['name']}`, input {b['input']}", "",
                  (f"Forward + backward of each part alone, median of {result['repeats']}; block total "
                  f"{block_total * 1000:.0f} ms, of which {block_extra * 1000:.0f} ms beyond the replaced conv."), "",
                  "| part | ms | share of block |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {t * 1000:.1f} | {t / block_total:.0%} |" for name, t in parts]
        lines.append("")
    if result["blocks"]:
        lines.append(f"Sum over the blocks of the time beyond the replaced conv: {total_extra:.2f} s, against the "
                     f"measured whole-iteration difference of {extra:.2f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=("drive2d", "hepaticvessel3d", "toy"), default="drive2d")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall clock, or this process's CPU time (use with --threads 1 on a loaded machine)")
    parser.add_argument("--steps", type=int, default=2, help="timed whole-network iterations per arm")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per block part")
    parser.add_argument("--compare-gemm", action="store_true",
                        help="also time the snake network with DSConv's GEMMs on torch.mm (before this study), in turn "
                             "with the others in the same run")
    parser.add_argument("--no-blocks", action="store_true", help="whole-network times only")
    parser.add_argument("--quick", action="store_true", help="with --plan toy: bench-train's tiny plan (a check of "
                                                                 "the script, the times mean nothing)")
    parser.add_argument("-o", "--output", help="write the markdown here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--threads, --steps and --repeats must be >= 1")
    result = profile(args)
    text = markdown(result, PROG + " " + " ".join(sys.argv[1:] if argv is None else argv))
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
