"""Candidate operations of the DARTS CNN space, composed as in the DARTS paper and code."""

from __future__ import annotations

import torch
from torch import nn

from nas.spaces.ops import ReLUConvBN


class DartsZero(nn.Module):
    """``none``: zeros of the output shape (subsampled at stride 2)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """RobustDARTS S4's ``noise``: standard Gaussian noise of the input's shape (subsampled at
    stride 2), independent of the input."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x)


class FactorizedReduce(nn.Module):
    """ReLU, two stride-2 1x1 convolutions on offset grids, concatenated, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated conv, pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked ReLU-depthwise-pointwise-BN blocks; the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class Conv7x1x1x7(nn.Sequential):
    """ReLU, a 1x7 then a 7x1 convolution (the stride split between them), BN: an op of the NASNet
    and AmoebaNet cells."""

    def __init__(self, c: int, stride: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )


def make_darts_op(name: str, channels: int, stride: int, affine: bool = True, search: bool = False) -> nn.Module:
    """One DARTS-space op.  In the search network (``search=True``) pools are followed by a
    non-affine BN, as in the DARTS search code."""
    c = channels
    if name == "none":
        return DartsZero(stride)
    if name == "noise":
        return Noise(stride)
    if name == "avg_pool_3x3":
        op: nn.Module = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    elif name == "max_pool_3x3":
        op = nn.MaxPool2d(3, stride=stride, padding=1)
    elif name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    elif name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    elif name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    elif name == "sep_conv_7x7":
        return SepConv(c, c, 7, stride, 3, affine)
    elif name == "conv_7x1_1x7":
        return Conv7x1x1x7(c, stride, affine)
    elif name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    elif name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    else:
        raise ValueError(f"unknown DARTS op {name!r}")
    if search:
        return nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
    return op


__all__ = ["ReLUConvBN", "FactorizedReduce", "SepConv", "DilConv", "Conv7x1x1x7", "DartsZero", "Noise", "make_darts_op"]
