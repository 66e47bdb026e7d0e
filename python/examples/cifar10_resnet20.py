"""The seeds' CIFAR-10 comparison from a PyTorch loop: ResNet-20 on 4 workers, each training on
its shard with PyTorch's own kernels, LSGD (or any peloton algorithm) between the steps.

    python python/examples/cifar10_resnet20.py --data ../shared/data/cifar10 --algorithm lsgd \
        --time-budget 600 --checkpoint-every 500 --out runs/python-lsgd
    python python/examples/cifar10_resnet20.py --data ../shared/data/cifar10 \
        --resume runs/python-lsgd                                   # after a kill: goes on
    peloton report runs/python-lsgd runs/<a CLI run> -o report     # the same run folder format

The settings are the CLI's comparison (docs/EXPERIMENTS.md, "cifar10-resnet20 on threads"):
batch 128 per worker, Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 × 0.1 after 500 s,
random crops and flips, the whole test set every 100 steps, BatchNorm statistics recomputed on
training batches for each evaluated model. Reads the binary CIFAR-10 batches
(`data_batch_{1..5}.bin[.gz]`, `test_batch.bin[.gz]`), kept as bytes (180 MB) and normalized
batch by batch. `--model-device cuda` trains on a GPU (peloton mirrors the models and copies
them only at communication rounds).
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import peloton
import peloton.torch
from peloton.models import resnet20

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def read_batches(data: Path, names):
    """The images as bytes (N × 3 × 32 × 32 uint8) and their labels."""
    images, labels = [], []
    for name in names:
        path = data / name
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Bytes to the per-channel standardized floats the model sees."""
    return (x.float() / 255 - MEAN.to(x.device)) / STD.to(x.device)


def find(data: Path, stem: str) -> str:
    return next(n for n in (f"{stem}.bin", f"{stem}.bin.gz") if (data / n).exists())


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 32×32 crops of the 4-pixel zero-padded images, and horizontal flips."""
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, len(x)), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(len(x))])
    flip = torch.rand(len(x), generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/cifar10"))
    p.add_argument("--algorithm", default="lsgd")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--time-budget", type=float, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None)
    p.add_argument("--transport", default="threads", help="threads, sim or mpi (under mpirun)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints")
    p.add_argument("--resume", default=None, help="continue this interrupted run folder")
    p.add_argument("--model-device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--train-files",
        type=int,
        default=5,
        choices=range(1, 6),
        help="train on data_batch_1 … N only (10,000 images each), where not all five are at hand",
    )
    args = p.parse_args()
    device = torch.device(args.model_device)

    files = range(1, args.train_files + 1)
    train_x, train_y = read_batches(args.data, [find(args.data, f"data_batch_{i}") for i in files])
    test_x, test_y = read_batches(args.data, [find(args.data, "test_batch")])

    def train(worker):
        shard = slice(worker.rank, None, worker.workers)  # every workers-th image, as the CLI shards
        x, y = train_x[shard], train_y[shard]
        g = torch.Generator().manual_seed(1000 * worker.seed + worker.rank)
        with peloton.torch.seeded(worker):
            model = resnet20().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

        def evaluate(m):
            # BatchNorm statistics of the evaluated model (the workers' average, say), from
            # training batches; the worker's own statistics are put back afterwards.
            saved = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "batches" in k}
            for module in m.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # a cumulative average over the batches below
            m.train()
            for i in range(8):
                m(normalize(x[i * 256:(i + 1) * 256].to(device)))
            m.eval()
            loss, correct = 0.0, 0
            for i in range(0, len(test_x), 500):
                out = m(normalize(test_x[i:i + 500].to(device)))
                labels = test_y[i:i + 500].to(device)
                loss += F.cross_entropy(out, labels, reduction="sum").item()
                correct += (out.argmax(1) == labels).sum().item()
            for module in m.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.momentum = 0.1
            m.load_state_dict(saved, strict=False)
            return loss / len(test_x), correct / len(test_x)

        # The batch generator is the loop's data position: a checkpoint keeps it.
        peloton.torch.wrap(worker, model, opt, evaluate=evaluate, steps_per_epoch=len(x) // args.batch,
                           loop_state=(g.get_state, g.set_state))
        for _ in worker.steps():
            i = torch.randint(0, len(x), (args.batch,), generator=g)
            batch = augment(normalize(x[i]), g).to(device)
            loss = F.cross_entropy(model(batch), y[i].to(device))
            opt.zero_grad()
            loss.backward()
            worker.step(loss)

    if args.resume is not None:
        result = peloton.run(train, resume=args.resume)
    else:
        algorithm = {"name": args.algorithm}
        if args.algorithm == "lsgd":
            algorithm.update(tau=4, **{"lambda": 0.1})
        result = peloton.run(
            train, out=args.out, workers=args.workers, time_budget=args.time_budget,
            algorithm=algorithm, transport=args.transport,
            external={"name": "resnet20-cifar10"}, eval={"every": 100},
            checkpoint={"every": args.checkpoint_every},
            optimizer={"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                       "schedule": {"kind": "time-drop", "after_seconds": [args.time_budget * 5 / 6],
                                    "gamma": 0.1}})
    final = result.final_evals[0]
    print(f"{args.algorithm}: test error {100 * (1 - final['accuracy']):.1f}% at step {final['step']} "
          f"({final['seconds']:.0f} s); run folder {result.path}")


if __name__ == "__main__":
    main()
