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
