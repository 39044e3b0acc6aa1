"""int8 decoding: row-wise quantized linear maps and cells."""
import pytest
import torch
from torch import nn

from nmt.quantize import Int8Cell, Int8Linear


def test_int8_linear_is_close_and_each_row_depends_on_itself_only():
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    q = Int8Linear.of(linear)
    x = torch.randn(9, 64) * torch.logspace(-2, 2, 9)[:, None]  # rows of very different ranges
    y = q(x)
    exact = linear(x).detach()
    assert torch.allclose(y, exact, rtol=0.05, atol=0.05 * exact.abs().amax(1, keepdim=True).mean())
    for i in range(9):  # bitwise: a row's result does not see the other rows
        assert torch.equal(q(x[i:i + 1]), y[i:i + 1])
    assert q(torch.randn(2, 3, 64)).shape == (2, 3, 40)


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_int8_cells_follow_torchs_equations(cell_type):
    torch.manual_seed(1)
    cell = cell_type(24, 32)
    x, h, c = torch.randn(5, 24), torch.randn(5, 32).tanh(), torch.randn(5, 32)
    int8 = Int8Cell(cell)
    with torch.no_grad():
        if cell_type is nn.LSTMCell:
            (h1, c1), (h2, c2) = cell(x, (h, c)), int8(x, (h, c))
            assert torch.allclose(c1, c2, atol=0.03)
        else:
            h1, h2 = cell(x, h), int8(x, h)
    assert torch.allclose(h1, h2, atol=0.03)
    assert not torch.equal(h1, h2)  # it really is the quantized path
