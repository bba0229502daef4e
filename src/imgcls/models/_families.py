"""Imports each family module once so that its models register. Add a family here."""

from imgcls.classic import models as _classic  # noqa: F401  (HOG, LBP, SIFT pipelines + SVM)
from imgcls.models import (
    airbench,  # noqa: F401  (airbench94, the CIFAR-10 speedrun net)
    alexnet,  # noqa: F401  (AlexNet, ZFNet)
    densenet,  # noqa: F401  (DenseNet-BC)
    dpn,  # noqa: F401  (Dual Path Networks)
    googlenet,  # noqa: F401  (GoogLeNet / Inception v1)
    inception_v2,  # noqa: F401  (BN-Inception)
    inception_v3,  # noqa: F401  (Inception v3)
    inception_v4,  # noqa: F401  (Inception-v4, Inception-ResNet-v2)
    lenet,  # noqa: F401  (LeNet-5)
    nin,  # noqa: F401  (Network in Network)
    resnet,  # noqa: F401  (ResNet, pre-activation ResNet, ResNeXt)
    vgg,  # noqa: F401  (VGG)
)
