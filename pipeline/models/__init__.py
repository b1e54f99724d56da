"""Model zoo."""
from pipeline.models.zoo import (MODELS, CertifiedNet, Normalize, Residual, build_model, count_hidden_units,
                                 count_parameters, model_dataset)
from pipeline.models.checkpoints import load_external, load_model

__all__ = ["MODELS", "CertifiedNet", "Normalize", "Residual", "build_model", "count_hidden_units", "count_parameters",
           "model_dataset", "load_external", "load_model"]
