"""cvae-opt: hyperparameter-optimization studies for conditional VAEs on non-unique inverse problems."""

__version__ = "0.1.0"
