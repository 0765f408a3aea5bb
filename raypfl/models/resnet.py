"""ResNet-18 from torchvision with the CIFAR stem (3×3 conv, stride 1, no max-pool)."""

from __future__ import annotations

from torch import nn

from raypfl.models.policy import keep_dense


def resnet18(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    # imported here: torchvision.models costs seconds of start-up in every process that only needs the other models
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    for module in model.modules():
        if getattr(module, "downsample", None) is not None:
            keep_dense(module.downsample[0])  # the 1×1 shortcut convs are not pruned (spec C.2.5)
    return model
