"""Dataset.digest covers the test images too: a replaced test split is noticed by
--resume and eval."""
import torch

from fastvae.data import Dataset


def test_the_digest_covers_the_test_images_too():
    train, test = torch.zeros(4, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    other = test.clone()
    other[0, 0, 0, 0] = 1.0
    assert Dataset("d", train, test).digest != Dataset("d", train, other).digest
    assert Dataset("d", train, test).digest == Dataset("d", train.clone(), test.clone()).digest
