"""Imports each family module once so that its models register. Add a family here."""
from imgcls.models import (
    densenet,  # noqa: F401  (DenseNet-BC)
    dpn,  # noqa: F401  (Dual Path Networks)
    inception_v3,  # noqa: F401  (Inception v3)
    inception_v4,  # noqa: F401  (Inception-v4, Inception-ResNet-v2)
    resnet,  # noqa: F401  (ResNet, pre-activation ResNet, ResNeXt)
)
