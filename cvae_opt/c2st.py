"""The classifier two-sample test with the simulation-based-inference benchmark's settings (sbibm's
`c2st`, Lueckmann et al. 2021), so figures compare with its published tables.

Both samples are z-scored with the reference samples' mean and standard deviation (sbibm's `c2st(X, Y)`
z-scores with X, which its runs pass the reference as); a scikit-learn MLP (ReLU, two
hidden layers of 10 x dim units, Adam, up to 10,000 iterations, random_state 1) learns to tell them
apart, and the accuracy is the mean over 5 shuffled folds (KFold, random_state 1). 0.5: the classifier
cannot tell model samples from reference samples; 1.0: it always can.
"""

from __future__ import annotations

import numpy as np
import torch


FOLDS = 5


def c2st(model: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, seed: int = 1, folds: int = FOLDS) -> float:
    """Cross-validated accuracy of a classifier telling `model` (N, D) from `reference` (N', D) samples."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    a = np.asarray(torch.as_tensor(model).detach().cpu().double())
    b = np.asarray(torch.as_tensor(reference).detach().cpu().double())
    mean, std = b.mean(0), b.std(0, ddof=1)
    std = np.where(std > 0, std, 1.0)
    a, b = (a - mean) / std, (b - mean) / std
    dim = a.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=10_000,
                        solver="adam", random_state=seed)
    # sbibm's order, c2st(X=reference, Y=model): the reference first and labelled 0, so the shuffled folds
    # are the ones it would draw for the same samples
    data = np.concatenate([b, a]).astype(np.float32)
    target = np.concatenate([np.zeros(len(b)), np.ones(len(a))])
    scores = cross_val_score(clf, data, target, cv=KFold(n_splits=folds, shuffle=True, random_state=seed), scoring="accuracy")
    return float(np.mean(scores))
