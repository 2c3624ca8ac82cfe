"""lightly's SimCLR training step on the CPU, for benchmarks/compare_lightly.py.

Runs in a throw-away virtualenv with PyTorch and lightly (never a dependency
of keras_ssl; compare_lightly.py builds it). The step is written the way
lightly's own examples and CIFAR-10 benchmark write it:

* backbone: lightly's CIFAR ResNet-18 (`lightly.models.ResNetGenerator("resnet-18")`:
  3x3 stride-1 stem, no max-pool) as `nn.Sequential(*children[:-1],
  AdaptiveAvgPool2d(1))`; or, for `--encoder=small_cnn`, the same VGG-style
  CNN as keras_ssl's `small_cnn` (32-64-64-128-128 channels, BN, no conv bias);
* head: `lightly.models.modules.SimCLRProjectionHead(d, d, 128)` (d = 512 or 128);
* loss: `lightly.loss.NTXentLoss(temperature)`;
* optimizer: SGD, momentum 0.9, weight decay 5e-4 (lightly's benchmark);
* both views through the model one after the other (`z0 = model(x0); z1 = model(x1)`);
* bfloat16: `torch.autocast("cpu", torch.bfloat16)` around model and loss, as
  Lightning's `precision="bf16-mixed"` does.

One fixed batch of random views, `--warmup` untimed steps, then `--steps`
timed ones. Last line: `images_per_second=<float>` (both views counted).
"""

import argparse
import time

import torch
import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models import ResNetGenerator
from lightly.models.modules import SimCLRProjectionHead


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(channels):
    return nn.Sequential(
        conv_bn_relu(channels, 32),
        nn.MaxPool2d(2), conv_bn_relu(32, 64), conv_bn_relu(64, 64),
        nn.MaxPool2d(2), conv_bn_relu(64, 128), conv_bn_relu(128, 128),
        nn.AdaptiveAvgPool2d(1))


class SimCLR(nn.Module):
    def __init__(self, backbone, dim):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="small_cnn", choices=["small_cnn", "resnet18"])
    p.add_argument("--image_size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--channels_last", action="store_true", help="NHWC memory format (not lightly's default)")
    args = p.parse_args()

    torch.manual_seed(0)
    if args.encoder == "resnet18":
        if args.channels != 3:
            p.error("lightly's ResNet-18 takes 3 channels")
        resnet = ResNetGenerator("resnet-18")
        backbone, dim = nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1)), 512
    else:
        backbone, dim = small_cnn(args.channels), 128
    model = SimCLR(backbone, dim)
    criterion = NTXentLoss(temperature=args.temperature)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    shape = (args.batch, args.channels, args.image_size, args.image_size)
    x0, x1 = torch.rand(shape), torch.rand(shape)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            z0 = model(x0)
            z1 = model(x1)
            loss = criterion(z0, z1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss)

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    import lightly

    print(f"torch={torch.__version__} lightly={lightly.__version__} threads={torch.get_num_threads()} "
          f"encoder={args.encoder} dtype={args.dtype} step_ms={1000 * elapsed / args.steps:.1f}")
    print(f"images_per_second={2 * args.batch * args.steps / elapsed:.1f}")


if __name__ == "__main__":
    main()
