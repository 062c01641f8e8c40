"""A fixed dictionary for analysis tests: z = relu(x W), x_hat = z W^T (W [d, k] given), activity log|z|."""

import torch

from actdict.train.protocol import Dictionary, Forward


class ReluLinear(Dictionary):
    variant = "test_relu_linear"

    def __init__(self, d, k, W):
        super().__init__(d, k)
        self.register_buffer("W", torch.as_tensor(W))  # [d, k]

    def forward(self, x, sample=True):
        z = torch.relu(x @ self.W)  # [B, k]
        return Forward(z @ self.W.T, z, z.abs().log(), {})

    def decode(self, codes):
        return codes @ self.W.T
