"""Two-process DDP training steps (gloo, CPU) of every trainer's network; run by tests/unit/test_ddp.py (test-only).

``python tests/support/ddp_worker.py OUT_DIR TRAINER [TRAINER ...]`` spawns 2 ranks. For each trainer (names of
``nnunet_tubeconv.benchmarks.perf.variant_nets.TRAINERS``) both ranks build the same seeded network, wrap it in
``DistributedDataParallel`` with
``find_unused_parameters=False`` (nnU-Net's setting: its ``nnUNetTrainer`` wraps the network as
``DDP(network, device_ids=[local_rank])``), and run a training step on their half of one batch; then an SGD update and
a second forward/backward (DDP raises there if a parameter got no gradient in the first step). Rank 0 also runs one
process's step on the whole batch (the concatenation of both halves) on a fresh copy of the network. Each rank saves
its gradients (and rank 0 the single-process ones) to ``OUT_DIR/<trainer>.rank<r>.pt``; the test compares them.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

WORLD = 2
PER_RANK = 2


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {k: None if p.grad is None else p.grad.detach().clone() for k, p in net.named_parameters()}


def _rank(rank: int, port: int, out_dir: str, trainers: list[str]) -> None:
    from nnunet_tubeconv.benchmarks.perf.variant_nets import (  # nnU-Net's imports: ranks only
        batch,
        build_network,
        loss_fn,
    )

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y = batch(WORLD * PER_RANK, seed=0)
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for trainer in trainers:
            net = build_network(trainer)
            ddp = DistributedDataParallel(net, find_unused_parameters=False)
            optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)  # nnU-Net's
            loss = loss_fn(ddp(x[mine]), y[mine])
            loss.backward()
            record = {"loss": loss.detach(), "ddp": _grads(net)}
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(ddp(x[mine]), y[mine]).backward()  # DDP checks here that step 1 reduced every parameter
            record["ddp_second"] = _grads(net)
            if rank == 0:
                single = build_network(trainer)
                single_loss = loss_fn(single(x), y)
                single_loss.backward()
                record["single_loss"] = single_loss.detach()
                record["single"] = _grads(single)
            torch.save(record, Path(out_dir) / f"{trainer}.rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python tests/support/ddp_worker.py OUT_DIR TRAINER [TRAINER ...]  "
                 "(names of nnunet_tubeconv.benchmarks.perf.variant_nets.TRAINERS)")
    out, names = sys.argv[1], sys.argv[2:]
    mp.spawn(_rank, args=(_free_port(), out, names), nprocs=WORLD, join=True)
