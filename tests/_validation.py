"""What the validation test modules share: small valid inputs to break one at a time."""
import torch


def inputs(b=3, d=4, l=2, dtype=torch.float32):
    return (torch.rand(b, d, dtype=dtype), torch.randn(b, d, dtype=dtype),
            torch.randn(b, l, dtype=dtype), torch.randn(b, l, dtype=dtype))
