"""Inductor on every trainer's network, one training step each, against eager.

Command: ``python -m nnunet_tubeconv.benchmarks.studies.compile_check.compile_check -o DIR``.

``tests/unit/test_compile.py`` compiles every trainer's network through AOTAutograd (the graphs inductor receives, no
code generation) and runs inductor itself on one small network of every block type. This command runs the full inductor
CPU backend (``torch.compile(net, fullgraph=True, dynamic=False)``, as nnU-Net compiles its network) on every
trainer's tiny network (:mod:`nnunet_tubeconv.benchmarks.perf.variant_nets`: vanilla and every variant trainer, 2D, 3
stages), one training step each, and compares the compiled step with eager: outputs, loss and every parameter's
gradient, with the tolerances of the test (``rtol=1e-4, atol=1e-5``). Each compile generates and builds C++ for a
forward and a backward graph: minutes per network on 2 CPU cores, which is why it is a command and not a test.

It writes ``compile_check_<backend>.json`` and ``.md`` into ``-o DIR`` after every network, and a rerun keeps the
networks already checked with the same torch version and backend (``--force`` redoes them), so an interrupted run
resumes where it stopped. Exit status 1 if any network's compiled step differs from eager or fails to compile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: tolerances of tests/unit/test_compile.py's AOTAutograd check, kept for inductor
RTOL, ATOL = 1e-4, 1e-5


def _step(model, net, x, y) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    from nnunet_tubeconv.benchmarks.perf.variant_nets import loss_fn

    net.zero_grad(set_to_none=True)
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    return [o.detach() for o in out], loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


def _difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    """Largest |a - b| and whether ``torch.testing.assert_close(a, b, RTOL, ATOL)`` holds."""
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    try:
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        return diff, True
    except AssertionError:
        return diff, False


def check_trainer(trainer: str, backend: str | Callable = "inductor") -> dict[str, Any]:
    """One training step of ``trainer``'s tiny network, eager and compiled with ``backend``, compared."""
    from nnunet_tubeconv.benchmarks.perf.variant_nets import batch, build_network

    torch._dynamo.reset()
    net = build_network(trainer)
    x, y = batch(2)
    out_ref, loss_ref, grads_ref = _step(net, net, x, y)
    compiled = torch.compile(net, backend=backend, fullgraph=True, dynamic=False)
    wall, cpu = time.perf_counter(), time.process_time()
    out, loss, grads = _step(compiled, net, x, y)  # the first call compiles forward and backward
    row: dict[str, Any] = {"trainer": trainer, "compile_wall_s": round(time.perf_counter() - wall, 1),
                           "compile_cpu_s": round(time.process_time() - cpu, 1)}
    checks = [_difference(a, b) for a, b in zip(out, out_ref)] + [_difference(loss, loss_ref)]
    grad_checks = {k: _difference(grads[k], grads_ref[k]) for k in grads_ref}
    row["outputs"] = len(out)
    row["max_output_diff"] = max(d for d, _ in checks)
    row["max_grad_diff"] = max(d for d, _ in grad_checks.values())
    row["parameters"] = len(grads_ref)
    failed = [k for k, (_, ok) in grad_checks.items() if not ok]
    row["passed"] = (len(out) == len(out_ref) and grads.keys() == grads_ref.keys() and all(ok for _, ok in checks)
                     and not failed)
    if failed:
        row["gradients_off"] = failed[:10]
    return row


def _markdown(report: dict) -> str:
    setting = (f"torch {report['torch']}, {report['threads']} thread(s), inductor cache "
               f"{report.get('inductor_cache', 'not recorded')}, load average at the start "
               f"{report['load_average']}; tolerances rtol {RTOL:g}, atol {ATOL:g} on outputs, loss and every "
               "parameter's gradient (one training step, 2D, 3 stages; `benchmarks/perf/variant_nets.py`).")
    header = ("| trainer | compiled = eager | largest output diff | largest gradient diff | compile wall s "
              "| compile CPU s |")
    lines = [f"# `torch.compile` ({report['backend']}) of every trainer's network against eager, CPU", "",
             f"Command: `{report['command']}`  ", setting, "", header, "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['trainer']} | **failed to compile**: {r['error'].splitlines()[-1][:120]} | | | | |")
            continue
        lines.append(f"| {r['trainer']} | {'yes' if r['passed'] else '**no**'} | {r['max_output_diff']:.1e} | "
                     f"{r['max_grad_diff']:.1e} | {r['compile_wall_s']:.0f} | {r['compile_cpu_s']:.0f} |")
    return "\n".join(lines) + "\n"


def run(trainers: list[str], out_dir: Path, backend: str = "inductor", threads: int = 1, force: bool = False,
        log=print) -> dict:
    """Check ``trainers``, keeping finished rows of an earlier run in ``out_dir`` (same torch and backend)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"compile_check_{backend}.json", out_dir / f"compile_check_{backend}.md"
    done: dict[str, dict] = {}
    if json_path.exists() and not force:
        old = json.loads(json_path.read_text())
        if old.get("torch") == torch.__version__ and old.get("backend") == backend:
            done = {r["trainer"]: r for r in old["results"] if "error" not in r}
    torch.set_num_threads(threads)
    report = {"backend": backend, "torch": torch.__version__, "threads": threads,
              "load_average": [round(v, 1) for v in os.getloadavg()],
              "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default (warm compiles are faster)"),
              "command": "python -m nnunet_tubeconv.benchmarks.studies.compile_check.compile_check "
                         + " ".join(sys.argv[1:]),
              "results": []}
    for trainer in trainers:
        if trainer in done:
            log(f"{trainer}: kept from the earlier run")
            report["results"].append(done[trainer])
        else:
            log(f"{trainer}: compiling with {backend} ...")
            try:
                row = check_trainer(trainer, backend)
            except Exception as e:  # noqa: BLE001 - a failing compile is a result, reported per network
                row = {"trainer": trainer, "passed": False, "error": "".join(traceback.format_exception_only(e))}
            report["results"].append(row)
            log(f"{trainer}: {json.dumps(row)}")
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, json_path)  # a crash leaves the last complete report, never a torn one
        md_path.write_text(_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    from nnunet_tubeconv.benchmarks.perf.variant_nets import TRAINERS

    parser = argparse.ArgumentParser(prog="python -m nnunet_tubeconv.benchmarks.studies.compile_check.compile_check",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder of the .md and .json report")
    parser.add_argument("--trainers", default=",".join(TRAINERS),
                        help=f"comma-separated trainers (default: all of {TRAINERS})")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"),
                        help="torch.compile backend (default inductor; aot_eager: the graphs without code generation)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--force", action="store_true", help="redo networks an earlier run already checked")
    args = parser.parse_args(argv)
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"-o {args.output} exists and is not a folder; give a folder for the .md and .json report")
    unknown = sorted(set(trainers) - set(TRAINERS))
    if unknown:
        parser.error(f"unknown trainer(s) {unknown}; allowed: {TRAINERS}")
    report = run(trainers, args.output, args.backend, args.threads, args.force)
    print(_markdown(report))
    return 0 if all(r["passed"] for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
