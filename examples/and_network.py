"""Seed 3: a 3-2-1 sigmoid network learns the 'AND' truth table with BCE and full-batch SGD.

The five training rows are 1 only for [1, 0, 1]: the network learns x0 AND x2. The unseen rows
[0, 1, 1], [1, 1, 1], [0, 1, 0] must come out 0, 1, 0.
"""

import numpy as np

from fastloss import nn
from fastloss.optim import SGD

X = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float64)
Y = np.array([[1], [0], [0], [0], [0]], dtype=np.float64)
UNSEEN = np.array([[0, 1, 1], [1, 1, 1], [0, 1, 0]], dtype=np.float64)
EXPECTED = [0, 1, 0]
LEARNING_RATE = 1.6


def train(seed=0, epochs=2000):
    rng = np.random.default_rng(seed)
    network = nn.Sequential(nn.Dense(3, 2, dtype=np.float64, rng=rng), nn.Sigmoid(),
                            nn.Dense(2, 1, dtype=np.float64, rng=rng), nn.Sigmoid())
    history = nn.fit(network, X, Y, loss=nn.BCELoss(),
                     optimizer=SGD(network.parameters(), lr=LEARNING_RATE),
                     epochs=epochs, batch_size=len(X), shuffle=False, progress=False)
    return network, history["loss"]


def classify(network, rows):
    return [int(p > 0.5) for p in nn.predict(network, rows)[:, 0]]


if __name__ == "__main__":
    network, losses = train()
    print(f"BCE {losses[0]:.4f} -> {losses[-1]:.6f}")
    print(f"training rows -> {classify(network, X)}  (targets {Y[:, 0].astype(int).tolist()})")
    print(f"unseen rows   -> {classify(network, UNSEEN)}  (expected {EXPECTED})")
