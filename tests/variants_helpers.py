"""Hand arithmetic in float64 numpy on the models' float32 weights, and the batch xb, for test_variants_*."""

import numpy as np
import pytest
import torch


def _np(t):
    return t.detach().double().numpy()


def _relu(a):
    return np.maximum(a, 0)


def _topk_rows(a, k):  # keep the k largest of each row
    out = np.zeros_like(a)
    idx = np.argsort(-a, axis=1)[:, :k]
    np.put_along_axis(out, idx, np.take_along_axis(a, idx, 1), 1)
    return out


@pytest.fixture
def xb():
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(5)) * 1.5  # [B, d]
