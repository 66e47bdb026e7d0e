#!/usr/bin/env python3
"""Where burn's LibTorch device loses time against PyTorch (BENCHMARKS.md, "LibTorch device").

burn-tch 0.22.1 implements only the forward kernels; the backward of convolutions and of
training-mode BatchNorm comes from burn-backend's generic formulas, which run as several
LibTorch calls. This script times, per layer shape of ResNet-20, CNN7 and LeNet at batch 128,
those same LibTorch calls against PyTorch's native backward kernels:

- conv weight gradient: burn convolves the batch-transposed input with the batch-transposed
  output gradient as the kernel (conv2d_weight_grad_no_groups); PyTorch calls
  aten::convolution_backward (oneDNN's backward-weights kernel);
- conv input gradient: burn calls conv_transpose2d; PyTorch aten::convolution_backward;
- BatchNorm (train) forward + backward: burn's batch_norm_train / batch_norm_train_backward
  (swap_dims + reshape copies, five reductions); PyTorch's native batch norm.

    python3 scripts/burn_tch_breakdown.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

N = 128


def t(f, rep=9):
    f()
    f()
    v = []
    for _ in range(rep):
        s = time.perf_counter()
        f()
        v.append((time.perf_counter() - s) * 1e3)
    return statistics.median(v)


def convs(name, layers):
    tot = dict.fromkeys(["forward", "weight native", "weight burn", "input native", "input burn"], 0.0)
    for cin, cout, k, s, p, h, count, need_x in layers:
        x, w = torch.randn(N, cin, h, h), torch.randn(cout, cin, k, k)
        y = F.conv2d(x, w, None, s, p)
        g = torch.randn_like(y)
        ho = y.shape[2]

        def native(mask):
            return torch.ops.aten.convolution_backward(
                g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
            )

        row = {
            "forward": t(lambda: F.conv2d(x, w, None, s, p)),
            "weight native": t(lambda: native([False, True, False])),
            "weight burn": t(
                lambda: F.conv2d(x.transpose(0, 1), g.transpose(0, 1), None, 1, p, s)
                .transpose(0, 1)[:, :, :k, :k]
                .contiguous()
            ),
            "input native": 0.0,
            "input burn": 0.0,
        }
        if need_x:  # the first layer's input needs no gradient
            out_pad = h - ((ho - 1) * s - 2 * p + k)
            row["input native"] = t(lambda: native([True, False, False]))
            row["input burn"] = t(lambda: F.conv_transpose2d(g, w, None, s, p, out_pad))
        for key in tot:
            tot[key] += count * row[key]
        print(f"  {name} conv {cin}->{cout} k{k} s{s} {h}x{h} x{count}: "
              + ", ".join(f"{k_} {v:.2f}" for k_, v in row.items()) + " ms")
    print(f"{name} convolutions, ms: " + ", ".join(f"{k_} {v:.1f}" for k_, v in tot.items()))


def batch_norms(name, shapes):
    nat = burn = 0.0
    for c, h, count in shapes:
        x = torch.randn(N, c, h, h, requires_grad=True)
        gamma, beta = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
        g = torch.randn(N, c, h, h)

        def native():
            y = F.batch_norm(x, None, None, gamma, beta, True, 0.1, 1e-5)
            torch.autograd.grad(y, [x, gamma, beta], g)

        def composite():
            with torch.no_grad():
                flat = lambda t_: t_.transpose(0, 1).reshape(c, -1)
                pc = (1, c, 1, 1)
                mean = flat(x).mean(1).reshape(pc)
                centered = x - mean
                var = flat(centered * centered).mean(1)
                inv = (var + 1e-5).sqrt().reciprocal().reshape(pc)
                _ = (x - mean) * inv * gamma.reshape(pc) + beta.reshape(pc)
                normalized = (x - mean) * inv
                og, ng = flat(g), flat(g * normalized)
                _ = og.sum(1), ng.sum(1)
                mg, mng = og.mean(1).reshape(pc), ng.mean(1).reshape(pc)
                _ = gamma.reshape(pc) * inv * ((g - mg) - normalized * mng)

        a, b = t(native), t(composite)
        nat += count * a
        burn += count * b
        print(f"  {name} batchnorm {c}x{h}x{h} x{count}: native {a:.2f}, burn {b:.2f} ms")
    print(f"{name} batchnorm (train, forward + backward), ms: native {nat:.1f}, burn {burn:.1f}")


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {N}")
    convs("resnet20", [(3, 16, 3, 1, 1, 32, 1, False), (16, 16, 3, 1, 1, 32, 6, True),
                       (16, 32, 3, 2, 1, 32, 1, True), (32, 32, 3, 1, 1, 16, 5, True),
                       (32, 64, 3, 2, 1, 16, 1, True), (64, 64, 3, 1, 1, 8, 5, True)])
    batch_norms("resnet20", [(16, 32, 7), (32, 16, 6), (64, 8, 6)])
    convs("cnn7", [(3, 64, 5, 1, 0, 28, 1, False), (64, 128, 5, 1, 0, 12, 1, True),
                   (128, 64, 3, 1, 0, 4, 1, True)])
    convs("lenet", [(1, 6, 5, 1, 2, 28, 1, False), (6, 16, 5, 1, 0, 14, 1, True)])


if __name__ == "__main__":
    main()
