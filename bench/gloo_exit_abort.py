"""A gloo process group that DistributedDataParallel pins, and the abort at exit it causes (torch 2.13, CPU).

    python bench/gloo_exit_abort.py [--runs 40] [--stress 2] [--out bench/results/gloo_exit_abort.json]

What a user saw: ``torchrun --nproc_per_node 2 -m edgeskip train ...`` trained, wrote its checkpoint, and then one
rank died at exit with ``terminate called without an active exception`` (SIGABRT), so torchrun reported the run
failed. About 1 run in 50 on a loaded 2-core machine (CI's test run; 1 in 130 here with nothing else running).

The cause, in torch:
- ``torch.distributed.nn.functional`` declares its functions with ``group=group.WORLD`` as a default argument, so
  importing it binds the default process group that exists at that moment into ten function objects for good.
- DistributedDataParallel imports it on first use, which is after ``init_process_group``.
- From then on ``destroy_process_group`` only forgets the group. The ProcessGroupGloo object stays alive and its
  worker threads (``pt_gloo_runloop``) keep running into interpreter finalization. There, a worker releasing the last
  reference to a tensor that Python created needs the GIL; Python ends that thread with a forced unwind through a
  noexcept destructor, and the C++ runtime calls std::terminate.

Each run here is ``torchrun --nproc_per_node 2`` of this file as a worker: init gloo, wrap a Linear in DDP, three
training steps, 200 all-reduces of a Python tensor (the reductions a training loop makes for its statistics), a
barrier, the wrapper dropped, ``destroy_process_group``, exit. Two variants, alternating:
- ``as-is``: the order above (DDP imports the module after init);
- ``import-first``: ``torch.distributed.nn.functional`` imported before ``init_process_group``, edgeskip's
  workaround (``edgeskip.train.distributed``).
Each worker reports how many gloo threads are left after ``destroy_process_group`` (deterministic: 0 means the group
was destroyed and its threads joined); the aborts are counted from the exit codes. ``--stress K`` runs K busy
processes beside the runs, as a parallel test run does.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("as-is", "import-first")


def worker(variant: str) -> None:
    import torch
    import torch.distributed as dist

    if variant == "import-first":
        import torch.distributed.nn.functional  # noqa: F401
    dist.init_process_group("gloo")
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    net = DistributedDataParallel(torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 16)).square().mean().backward()
        opt.step()
    for _ in range(200):
        t = torch.ones(4)
        dist.all_reduce(t)
        t.tolist()
    dist.barrier()
    del net, opt
    dist.destroy_process_group()
    tasks = os.listdir("/proc/self/task")
    left = sum(open(f"/proc/self/task/{t}/comm").read().startswith(("pt_gloo", "gloo")) for t in tasks)
    print(f"gloo threads left: {left}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(variant: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd += [__file__, "--worker", variant]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    left = [int(n) for n in re.findall(r"gloo threads left: (\d+)", res.stdout)]
    return {"rc": res.returncode, "terminate": "terminate called" in res.stderr, "threads_left": left}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=40, help="runs per variant")
    ap.add_argument("--stress", type=int, default=2, help="busy processes beside the runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    import torch

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.stress)]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    t0 = time.time()
    try:
        for i in range(args.runs):
            for v in VARIANTS:
                runs[v].append(one_run(v))
            print(f"\r{i + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
    finally:
        for p in busy:
            p.kill()
    print(file=sys.stderr)
    summary = {
        v: {
            "runs": len(r),
            "failed": sum(x["rc"] != 0 for x in r),
            "terminate_called": sum(x["terminate"] for x in r),
            "gloo_threads_left_per_rank": sorted({n for x in r for n in x["threads_left"]}),
        }
        for v, r in runs.items()
    }
    for v, s in summary.items():
        print(
            f"{v:>12}: {s['failed']}/{s['runs']} runs failed ({s['terminate_called']} with 'terminate called'); "
            f"gloo threads left after destroy_process_group: {s['gloo_threads_left_per_rank']}"
        )
    if args.out:
        from edgeskip.utils.atomic import write_json

        write_json(
            args.out,
            {
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "torch": torch.__version__,
                "stress": args.stress,
                "seconds": round(time.time() - t0, 1),
                "summary": summary,
            },
        )


if __name__ == "__main__":
    main()
