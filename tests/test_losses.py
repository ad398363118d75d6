import pytest
import torch
from torch import nn

from hf_cskd import class_wise_kd_loss


def official_kd(logits, targets, temperature):
    """KDLoss of github.com/alinlab/cs-kd, verbatim in meaning."""
    log_p = torch.log_softmax(logits / temperature, dim=1)
    q = torch.softmax(targets / temperature, dim=1)
    return nn.KLDivLoss(reduction="sum")(log_p, q) * temperature**2 / logits.shape[0]


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_matches_official_formula(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 5
    targets = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 5
    ours = class_wise_kd_loss(logits.float(), targets.float(), temperature)
    ref = official_kd(logits, targets, temperature)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))
    total = class_wise_kd_loss(logits.float(), targets.float(), temperature, reduction="sum")
    assert torch.allclose(total, ours * 16)


def test_zero_for_identical_predictions_and_positive_otherwise():
    logits = torch.randn(4, 5)
    assert class_wise_kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert class_wise_kd_loss(logits, logits.flip(0)).item() > 0


def test_half_inputs_and_autocast_compute_in_float32():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 7, generator=gen)
    targets = torch.randn(8, 7, generator=gen)
    ref = official_kd(logits.bfloat16().double(), targets.bfloat16().double(), 4.0)
    out = class_wise_kd_loss(logits.bfloat16(), targets.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = class_wise_kd_loss(logits @ torch.eye(7), targets)
    assert out.dtype == torch.float32


def test_target_gets_no_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.randn(4, 3, requires_grad=True)
    class_wise_kd_loss(logits, targets).backward()
    assert targets.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        class_wise_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match="same shape"):
        class_wise_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
