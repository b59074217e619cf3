"""Export a MobileNetV2-like CNN with random weights, and random images, for static int8's calibration cost.

For docs/benchmarks.md ("Static int8 calibration cost, review s73"). Needs torch (2.13 measured)::

    python benchmarks/export_static_calibration_cnn.py [--out DIR] [--height 224 --width 224 --images 12]

Writes DIR/cnn.onnx (50 Conv, 10 residual Add, ReLU6; legacy exporter, opset 17, batch, height and width dynamic),
DIR/cal.npz (``--images`` standard normal images) and DIR/ver.npz (2 more), then time::

    graphopt optimize DIR/cnn.onnx -o out.onnx --inputs DIR/ver.npz --quantize static --calibration DIR/cal.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

# (expansion, output channels, blocks, first stride) per stage, as MobileNetV2's.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))


class _Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        self.body = nn.Sequential(
            nn.Conv2d(inputs, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _network() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()]
    channels = 32
    for expansion, outputs, blocks, stride in _STAGES:
        for index in range(blocks):
            layers.append(_Block(channels, outputs, stride if index == 0 else 1, expansion))
            channels = outputs
    layers += [nn.Conv2d(channels, 640, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(640, 1000)]
    model = nn.Sequential(*layers).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # folded by the exporter: random statistics, not the identity
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--images", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _network(),
        torch.randn(1, 3, args.height, args.width),
        args.out / "cnn.onnx",
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
        opset_version=17,
    )
    rng = np.random.default_rng(0)
    shape = (3, args.height, args.width)
    np.savez(args.out / "cal.npz", x=rng.standard_normal((args.images, *shape)).astype(np.float32))
    np.savez(args.out / "ver.npz", x=rng.standard_normal((2, *shape)).astype(np.float32))


if __name__ == "__main__":
    main()
