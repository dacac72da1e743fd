"""Seed 2: h(x) = theta0 + theta1 * x fitted by batch gradient descent on 1/2 * MSE; it
converges to the least-squares solution (numpy.linalg.lstsq).

fastloss's MSELoss is mean((h - y)^2), whose gradient is twice that of 1/2 * MSE: gradient
descent on 1/2 * MSE with rate alpha is gradient descent on MSE with rate alpha / 2.
"""

import numpy as np

from fastloss import nn
from fastloss.optim import SGD

ALPHA = 0.5          # the learning rate on 1/2 * MSE
EPOCHS = 5000


def data(seed=0, n=50):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 2.0, (n, 1))
    y = 1.5 + 0.8 * x + rng.normal(0.0, 0.3, (n, 1))
    return x, y


def gradient_descent(x, y):
    """(theta0, theta1) after EPOCHS full-batch steps, and the loss history."""
    line = nn.Dense(1, 1, dtype=np.float64, rng=0)
    history = nn.fit(line, x, y, loss=nn.MSELoss(), optimizer=SGD(line.parameters(),
                                                                      lr=ALPHA / 2),
                     epochs=EPOCHS, batch_size=len(x), shuffle=False, progress=False)
    return (line.bias.data[0], line.weight.data[0, 0]), history["loss"]


def least_squares(x, y):
    design = np.hstack([np.ones_like(x), x])
    theta, *_ = np.linalg.lstsq(design, y[:, 0], rcond=None)
    return tuple(theta)


if __name__ == "__main__":
    x, y = data()
    (theta0, theta1), losses = gradient_descent(x, y)
    exact0, exact1 = least_squares(x, y)
    print(f"gradient descent: theta0 {theta0:.8f}  theta1 {theta1:.8f}  "
          f"(MSE {losses[0]:.4f} -> {losses[-1]:.6f})")
    print(f"least squares:    theta0 {exact0:.8f}  theta1 {exact1:.8f}")
