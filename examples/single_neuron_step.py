"""Seed 1: one sigmoid neuron, one gradient-descent step on the squared error, by hand and
with fastloss.nn.

x = [0.1, 0.3], target y = 0.2, weights w = [-0.8, 0.5], no bias, learning rate 0.5,
loss E = (out - y)^2 (MSELoss on one element).
"""

import math

import numpy as np

from fastloss import nn
from fastloss.optim import SGD
from fastloss.training import TrainStep

X = np.array([[0.1, 0.3]])
Y = np.array([[0.2]])
INITIAL_WEIGHTS = np.array([[-0.8, 0.5]])
LEARNING_RATE = 0.5


def by_hand():
    """output, error and weight change from the chain rule, in plain Python floats."""
    z = X[0, 0] * INITIAL_WEIGHTS[0, 0] + X[0, 1] * INITIAL_WEIGHTS[0, 1]   # 0.07
    output = 1.0 / (1.0 + math.exp(-z))                                       # 0.517493
    error = output - Y[0, 0]                                                  # 0.317493
    # dE/dw_j = 2 * error * output * (1 - output) * x_j
    delta = 2.0 * error * output * (1.0 - output)                            # 0.158552
    change = [-LEARNING_RATE * delta * X[0, j] for j in range(2)]           # [-0.00793, -0.02378]
    return output, error, change


def with_fastloss():
    neuron = nn.Sequential(nn.Dense(2, 1, bias=False, dtype=np.float64), nn.Sigmoid())
    neuron[0].weight.data[...] = INITIAL_WEIGHTS
    output = nn.predict(neuron, X)[0, 0]
    step = TrainStep(neuron, nn.MSELoss(), SGD(neuron.parameters(), lr=LEARNING_RATE))
    step(X, Y)
    change = neuron[0].weight.data[0] - INITIAL_WEIGHTS[0]
    return output, output - Y[0, 0], list(change)


if __name__ == "__main__":
    for name, (output, error, change) in (("by hand", by_hand()),
                                          ("fastloss", with_fastloss())):
        print(f"{name:9s} output {output:.6f}  error {error:.6f}  "
              f"weight change [{change[0]:.6f}, {change[1]:.6f}]")
