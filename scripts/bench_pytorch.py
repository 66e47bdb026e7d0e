#!/usr/bin/env python3
"""PyTorch's side of `peloton bench --models ... --device torch`: the same networks (layer
shapes and parameter counts as crates/peloton-burn/src/models), the same synthetic input
shapes, one SGD-momentum training step each, median of --repeats timed steps after warm-up.

    python3 scripts/bench_pytorch.py --models lenet,cnn7,resnet20 --repeats 9

Prints one row per model: parameters, forward + backward ms (what peloton's "burn ms" and
"peloton ms" columns time) and the full step with torch.optim.SGD (momentum 0.9) ms.

With --formats it also times PyTorch's own fast settings, as a user would write them:
`torch.autocast(device, dtype=torch.bfloat16)` (fp16 too on a GPU) and
`model.to(memory_format=torch.channels_last)`, every combination against the default fp32
NCHW step in the same run (what `peloton bench --models ... --device torch` prints for
peloton's learner).
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    """lenet.rs: conv 5x5 -> 6 (28x28 inputs padded by 2), pool, conv 5x5 -> 16, pool,
    400 -> 120 -> 84 -> classes, ReLU."""

    def __init__(self, channels=1, size=28, classes=10):
        super().__init__()
        pad = (32 - size) // 2
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Cnn7(nn.Module):
    """cnn7.rs (EASGD's 7-layer convnet on 28x28 crops): conv 5x5 -> 64, pool, conv 5x5 -> 128,
    pool, conv 3x3 -> 64, 256 -> 256, dropout 1/2, 256 -> classes."""

    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 5)
        self.conv2 = nn.Conv2d(64, 128, 5)
        self.conv3 = nn.Conv2d(128, 64, 3)
        self.fc1 = nn.Linear(256, 256)
        self.fc2 = nn.Linear(256, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = self.fc1(x.flatten(1))
        return self.fc2(F.dropout(x, 0.5, self.training))


class BasicBlock(nn.Module):
    """resnet.rs: two 3x3 convolutions without bias, each followed by BatchNorm; option-A
    shortcut (subsample by 2, pad with zero channels) where the shape changes."""

    def __init__(self, inp, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = (planes - inp) // 2 if (stride != 1 or inp != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is not None:
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + x)


class ResNet(nn.Module):
    def __init__(self, n=3, channels=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, inp = [], 16
        for stage, planes in enumerate([16, 32, 64]):
            for b in range(n):
                blocks.append(BasicBlock(inp, planes, 2 if stage > 0 and b == 0 else 1))
                inp = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(x.mean((2, 3)))


MODELS = {
    # name: (constructor, input channels, input size) — as peloton-burn's bench.rs
    "lenet": (lambda: LeNet(1, 28), 1, 28),
    "cnn7": (lambda: Cnn7(3), 3, 28),
    "resnet20": (lambda: ResNet(3), 3, 32),
    "resnet32": (lambda: ResNet(5), 3, 32),
    "resnet56": (lambda: ResNet(9), 3, 32),
}


def bench(name, batch, repeats, warmup, device="cpu", dtype=None, channels_last=False):
    make, c, s = MODELS[name]
    torch.manual_seed(0)
    model = make().train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    x = torch.randn(batch, c, s, s, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.item()
        loss.backward()
        if device != "cpu":
            torch.cuda.synchronize()

    def step():
        fwd_bwd()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    fb, full = [], []
    # Interleaved, as peloton's bench interleaves its two sides.
    for _ in range(repeats):
        t = time.perf_counter()
        fwd_bwd()
        fb.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        step()
        full.append((time.perf_counter() - t) * 1e3)
    params = sum(p.numel() for p in model.parameters())
    return params, statistics.median(fb), statistics.median(full)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,cnn7,resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (as peloton's torch-cuda)")
    ap.add_argument(
        "--formats",
        action="store_true",
        help="also every precision (fp32, bf16, fp16 on cuda) and memory format (nchw, channels-last)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'model':<10} {'params':>10} {'fwd+bwd ms':>11} {'step ms':>9}")
    for name in args.models.split(","):
        params, fb, full = bench(name, args.batch, args.repeats, args.warmup, args.device)
        print(f"{name:<10} {params:>10} {fb:>11.2f} {full:>9.2f}")
    if not args.formats:
        return
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    if args.device != "cpu":
        dtypes["fp16"] = torch.float16
    print("precision and memory format (step with SGD; ratio = step / fp32 nchw step, same run):")
    print(f"{'model':<10} {'precision':>9} {'memory format':>14} {'step ms':>9} {'ratio':>7}")
    for name in args.models.split(","):
        base = bench(name, args.batch, args.repeats, args.warmup, args.device)[2]
        for label, dtype in dtypes.items():
            for cl in (False, True):
                full = bench(name, args.batch, args.repeats, args.warmup, args.device, dtype, cl)[2]
                fmt = "channels-last" if cl else "nchw"
                print(f"{name:<10} {label:>9} {fmt:>14} {full:>9.2f} {full / base:>6.2f}x")


if __name__ == "__main__":
    main()
