"""Imports each family module once so that its models register. Add a family here."""
from imgcls.models import (
    densenet,  # noqa: F401  (DenseNet-BC)
    dpn,  # noqa: F401  (Dual Path Networks)
    resnet,  # noqa: F401  (ResNet, pre-activation ResNet, ResNeXt)
)
