"""The backbones a run can name, as plain data: the run config checks ``model.backbone`` against
them without importing torch, and ``study.models`` builds them."""

# ResNet name -> (torchvision ImageNet weights enum, pooled feature size).
RESNETS = {
    "resnet18": ("ResNet18_Weights", 512),
    "resnet34": ("ResNet34_Weights", 512),
    "resnet50": ("ResNet50_Weights", 2048),
    "resnet101": ("ResNet101_Weights", 2048),
    "resnet152": ("ResNet152_Weights", 2048),
}
BACKBONES = (*RESNETS, "mobilenet_v2")
