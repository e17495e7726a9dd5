"""Datasets: Fashion-MNIST with fixed splits, and a synthetic set for tests."""

from collabinfer.data.fashion_mnist import CLASSES, Dataset, load_split, locate
from collabinfer.data.synthetic import synthetic_dataset

__all__ = ["CLASSES", "Dataset", "load_split", "locate", "synthetic_dataset"]
