"""PyTorch reference for benchmarks/simclr_throughput.py --nopipeline (same CPU, same model).

Not part of keras_ssl and not installed by it: run it in a separate environment
(`pip install torch numpy`). It times the same SimCLR training step as the
Keras benchmark: the same encoder (small_cnn or ResNet-18 with the CIFAR stem,
same widths, BN, no bias in convs), the 2-layer projection head with BN, NT-Xent
over 2N views, SGD with momentum (the optimizer is a negligible share of the
step), one fixed batch of views, `--warmup` untimed steps then `--steps` timed.
The way lightly / solo-learn train, in eager PyTorch; bf16 via
`torch.autocast("cpu", torch.bfloat16)`, the loss in float32.

    python benchmarks/torch_reference/simclr_step.py --encoder=small_cnn --image_size=28 --channels=1 --batch=256

Last line: images_per_second=<float> (both views counted).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(channels):
    return nn.Sequential(
        conv_bn_relu(channels, 32),
        nn.MaxPool2d(2), conv_bn_relu(32, 64), conv_bn_relu(64, 64),
        nn.MaxPool2d(2), conv_bn_relu(64, 128), conv_bn_relu(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = conv_bn_relu(cin, cout, stride)
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.short(x) + self.c2(self.c1(x)))


def resnet18_cifar(channels):
    layers, cin = [conv_bn_relu(channels, 64)], 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for b in range(2):
            layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def nt_xent(z_a, z_b, temperature=0.5):
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    n = z_a.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(-1e9)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="small_cnn", choices=["small_cnn", "resnet18"])
    p.add_argument("--image_size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--channels_last", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    encoder = small_cnn(args.channels) if args.encoder == "small_cnn" else resnet18_cifar(args.channels)
    dim = 128 if args.encoder == "small_cnn" else 512
    head = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, 128, bias=False), nn.BatchNorm1d(128, affine=False))
    model = nn.Sequential(encoder, head)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    views = torch.rand(2 * args.batch, args.channels, args.image_size, args.image_size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = views.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            z = model(views)
        loss = nt_xent(z[: args.batch], z[args.batch:])
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} encoder={args.encoder} "
          f"dtype={args.dtype} channels_last={args.channels_last} step_ms={1000 * elapsed / args.steps:.1f}")
    print(f"images_per_second={2 * args.batch * args.steps / elapsed:.1f}")


if __name__ == "__main__":
    main()
