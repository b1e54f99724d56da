"""Training: the shared loop and the method registry (each method is one module registering itself)."""
from pipeline.train.registry import METHODS, Method, get_method, implemented_methods, register_method
from pipeline.train import diffai, madry, mixtrain, mixtrain_plus, natural, sinha, wong  # noqa: F401  (each registers its method)
from pipeline.train.trainer import augment_crop_flip, eps_at, train, training_indices

__all__ = ["METHODS", "Method", "get_method", "implemented_methods", "register_method", "train", "eps_at",
           "augment_crop_flip", "training_indices"]
