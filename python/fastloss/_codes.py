"""The codes the dispatch passes to the kernels, as ``csrc/include/fastloss/codes.h`` defines
them for the C++ module and the CUDA kernels (tests/test_codes.py checks that the three agree).
"""

# LossOp
SQUARED_ERROR = 0
BINARY_CROSS_ENTROPY = 1
BINARY_CROSS_ENTROPY_WITH_LOGITS = 2
LOSS_OPS = (SQUARED_ERROR, BINARY_CROSS_ENTROPY, BINARY_CROSS_ENTROPY_WITH_LOGITS)

# PassOutputs: what one pass over the elements produces
SUM = 0                   # the (weighted) sum of the per-element losses
SUM_AND_GRAD = 1          # that sum, and the gradient
ELEMENTWISE = 2           # the per-element losses
ELEMENTWISE_AND_GRAD = 3  # both arrays
GRAD = 4                  # the gradient only
PASS_OUTPUTS = (SUM, SUM_AND_GRAD, ELEMENTWISE, ELEMENTWISE_AND_GRAD, GRAD)

# RowOp: a pass over the rows of an array along its class axis
SOFTMAX = 0
LOG_SOFTMAX = 1
SOFTMAX_BACKWARD = 2
LOG_SOFTMAX_BACKWARD = 3
ROW_OPS = (SOFTMAX, LOG_SOFTMAX, SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD)

# TargetKind: what cross_entropy's target holds
CLASS_INDEX_64 = 0
CLASS_INDEX_32 = 1
PROBABILITIES = 2
TARGET_KINDS = (CLASS_INDEX_64, CLASS_INDEX_32, PROBABILITIES)

# Activation
TANH = 0
TANH_BACKWARD = 1
RELU = 2
RELU_BACKWARD = 3
ACTIVATIONS = (TANH, TANH_BACKWARD, RELU, RELU_BACKWARD)
