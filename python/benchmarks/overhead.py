"""What peloton costs a PyTorch loop: a CIFAR ResNet-20 training loop on N workers, measured
side by side in one run —

* plain threads: N Python threads each running the bare loop (model, SGD momentum, random
  CIFAR-shaped batches), no peloton;
* peloton threads: the same loop wrapped with peloton.torch under `independent` (the hooks
  alone: no communication) and under `lsgd` (Leader SGD's pulls included);
* plain processes: N processes each running the bare loop (the aggregate a thread-based
  runtime has to match).

Every worker uses `--torch-threads` intra-op threads. Prints the median step time per worker,
the aggregate samples/s and the peak RSS of each; the ratios are what BENCHMARKS.md reports.
`--device cuda` runs every model on the GPU (peloton mirrors them: copies at communication
rounds only); `--mirror` makes peloton mirror CPU models too (what the copies cost).

    python python/benchmarks/overhead.py --workers 4 --steps 40 --batch 32 --rounds 3
    python python/benchmarks/overhead.py --device cuda --workers 4 --batch 128 --steps 60
"""

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from peloton.models import resnet20


def batches(seed, batch, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8 * batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (8 * batch,), generator=g).to(device)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(8)]


def plain_loop(rank, steps, batch, times, device="cpu"):
    torch.manual_seed(rank)
    model = resnet20().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = batches(rank, batch, device)
    stamps = []
    for step in range(steps):
        stamps.append(time.perf_counter())
        x, y = data[step % len(data)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # as peloton's worker.step reads the loss (a GPU waits here)
    stamps.append(time.perf_counter())
    times[rank] = stamps


def process_main(rank, steps, batch, threads, queue, device="cpu"):
    torch.set_num_threads(threads)
    times = {}
    plain_loop(rank, steps, batch, times, device)
    queue.put((rank, times[rank], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def summarize(name, all_stamps, workers, batch, warmup, rss):
    steps = [b - a for stamps in all_stamps for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    start = max(s[warmup] for s in all_stamps)
    end = min(s[-1] for s in all_stamps)
    counted = sum(sum(1 for t in s[warmup + 1:] if start < t <= end) for s in all_stamps)
    return {"name": name, "median_step_ms": 1000 * statistics.median(steps),
            "samples_per_s": counted * batch / (end - start), "peak_rss_mb": rss / 2**20}


def run_plain_threads(args):
    times = {}
    threads = [threading.Thread(target=plain_loop, args=(r, args.steps, args.batch, times, args.device))
               for r in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [times[r] for r in range(args.workers)]


def run_peloton(args, algorithm):
    import peloton
    import peloton.torch

    times = {}

    def train(worker):
        with peloton.torch.seeded(worker):
            model = resnet20().to(args.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        peloton.torch.wrap(worker, model, opt, mirror=args.mirror or None)
        data = batches(worker.rank, args.batch, args.device)
        stamps = []
        for step in worker.steps():
            stamps.append(time.perf_counter())
            x, y = data[step % len(data)]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            worker.step(loss)
        stamps.append(time.perf_counter())
        times[worker.rank] = stamps

    peloton.run(train, quiet=True, out=tempfile.mkdtemp(prefix="peloton-bench-"),
                workers=args.workers, steps=args.steps, algorithm=algorithm,
                optimizer={"lr": 0.05}, consensus=False, log_every=args.steps,
                torch_threads=args.torch_threads)
    return [times[r] for r in range(args.workers)]


def run_processes(args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=process_main,
                         args=(r, args.steps, args.batch, args.torch_threads, queue, args.device))
             for r in range(args.workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    results.sort()
    return [stamps for _, stamps, _ in results], sum(rss for _, _, rss in results)


def hook_cost(args):
    """The hooks' own cost per step, where the model costs nearly nothing: one worker training
    a 4 → 1 linear model, bare and through peloton (independent SGD). Returns µs per step."""
    import peloton
    import peloton.torch

    steps = 3000
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def bare():
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / steps

    spent = {}

    def train(worker):
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        peloton.torch.wrap(worker, model, opt)
        start = None
        for step in worker.steps():
            if step == 100:
                start = time.perf_counter()
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            worker.step(loss)
        spent["per_step"] = (time.perf_counter() - start) / (steps - 100)

    bare()  # warm-up
    plain = min(bare() for _ in range(3))
    through = []
    for _ in range(3):
        peloton.run(train, quiet=True, out=tempfile.mkdtemp(prefix="peloton-bench-"), workers=1,
                    steps=steps, algorithm="independent", consensus=False, log_every=steps,
                    optimizer={"lr": 0.01}, torch_threads=args.torch_threads)
        through.append(spent["per_step"])
    return 1e6 * plain, 1e6 * min(through)


def rss_now():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["plain", "independent", "lsgd", "all-reduce", "processes"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--mirror", action="store_true",
                        help="mirror CPU models too (copies at communication rounds)")
    parser.add_argument("--modes", default="plain,independent,lsgd,processes",
                        help="which modes to compare, plain first and processes last")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"# {args.workers} workers × {args.torch_threads} torch thread(s), ResNet-20 on "
          f"{args.device}{' (mirrored)' if args.mirror else ''}, batch "
          f"{args.batch}, {args.steps} steps ({args.warmup} warm-up); torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
          + ("" if args.only else f"; medians of {args.rounds} rounds"), flush=True)
    rows = []
    # Each mode runs in its own process, so that every peak RSS is its own.
    if args.only is None:
        import json
        import subprocess
        # The modes take turns, `rounds` times: a shared machine's drift hits them alike, and
        # each number is the median over the rounds.
        modes = args.modes.split(",")
        if modes[0] != "plain" or modes[-1] != "processes":
            parser.error("--modes starts with plain and ends with processes")
        runs = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                out = subprocess.run([sys.executable, __file__, "--only", mode] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k not in ("only", "rounds", "mirror", "modes")]
                    + (["--mirror"] if args.mirror else []),
                    check=True, capture_output=True, text=True).stdout
                runs[mode].append(json.loads(out.strip().splitlines()[-1]))
        for mode in modes:
            rows.append({key: (statistics.median(r[key] for r in runs[mode]) if key != "name"
                               else runs[mode][0]["name"]) for key in runs[mode][0]})
        base = rows[0]
        procs = rows[-1]
        print(f"{'mode':<22}{'median step':>14}{'vs plain':>10}{'samples/s':>12}{'vs processes':>14}{'peak RSS':>12}")
        for r in rows:
            print(f"{r['name']:<22}{r['median_step_ms']:>11.1f} ms{r['median_step_ms'] / base['median_step_ms']:>10.3f}"
                  f"{r['samples_per_s']:>12.1f}{r['samples_per_s'] / procs['samples_per_s']:>14.3f}"
                  f"{r['peak_rss_mb']:>9.0f} MB")
        if args.device != "cpu":
            print(f"# load after: {os.getloadavg()[0]:.2f}")
            return
        bare, through = hook_cost(args)
        resnet = base["median_step_ms"] * 1000
        print(f"hooks' own cost (a 4→1 linear model, 1 worker): {bare:.0f} µs bare, {through:.0f} µs "
              f"through peloton: {through - bare:.0f} µs per step = {100 * (through - bare) / resnet:.2f}% "
              f"of a ResNet-20 step here")
        print(f"# load after: {os.getloadavg()[0]:.2f}")
        return
    import json
    if args.only == "plain":
        row = summarize("plain threads", run_plain_threads(args), args.workers, args.batch, args.warmup, rss_now())
    elif args.only == "processes":
        stamps, rss = run_processes(args)
        row = summarize("plain processes", stamps, args.workers, args.batch, args.warmup, rss)
    else:
        row = summarize(f"peloton {args.only}", run_peloton(args, args.only), args.workers,
                        args.batch, args.warmup, rss_now())
    print(json.dumps(row))


if __name__ == "__main__":
    main()
