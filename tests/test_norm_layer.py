"""dnrt's torch norm layer agrees with the numpy reference in both modes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_models import small_generator  # noqa: E402

from dnrt import semantics as S  # noqa: E402
from dnrt.models.normswap import convert  # noqa: E402
from dnrt.ops.torch_op import dense_norm  # noqa: E402


@pytest.mark.parametrize("h,w", [(2, 2), (6, 4), (16, 10)])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_dense_norm_op_matches_reference(h: int, w: int, activation: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    mean = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    std = rng.uniform(0.2, 2, size=(2, 3, 3, 3)).astype(np.float32)
    gamma = rng.normal(size=3).astype(np.float32)
    beta = rng.normal(size=3).astype(np.float32)
    got = dense_norm(*(torch.from_numpy(a) for a in (x, mean, std, gamma, beta)), 1e-7, activation).numpy()
    want = S.dense_normalize(x, mean, std, gamma, beta, activation=activation)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dense_norm_rejects_odd_maps() -> None:
    x = torch.zeros(1, 1, 3, 4)
    stats = torch.ones(1, 1, 3, 3)
    with pytest.raises(ValueError, match="even"):
        dense_norm(x, stats, stats, torch.ones(1), torch.zeros(1), 1e-7, "none")


def test_convert_swaps_norms_fuses_relu_and_probes_strides() -> None:
    net = small_generator()
    model = convert(net)
    assert [layer.channels for layer in model.layers] == [4, 6, 4]
    assert [layer.offset for layer in model.layers] == [0, 4, 10]
    assert [layer.stride for layer in model.layers] == [1, 2, 1]
    # Only the plain ReLU right after a norm is fused; LeakyReLU is not.
    assert [layer.activation for layer in model.layers] == ["relu", "none", "none"]
    assert [layer.affine for layer in model.layers] == [True, False, False]
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 0


def test_collect_in_mode_equals_the_original_instance_norm_module() -> None:
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        original = small_generator()(x)
        model = convert(small_generator())
        image, mean, std = model.collect(x, torch.from_numpy(S.collect_flavour("in").as_array()))
    torch.testing.assert_close(image, original, rtol=1e-5, atol=1e-5)
    assert mean.shape == (2, 14) and std.shape == (2, 14)


def test_apply_with_constant_neighbourhoods_of_own_stats_equals_collect() -> None:
    """DN's apply with each tile's own (collected) statistics in all nine entries is
    the collect pass itself, up to the op's eps."""
    x = torch.randn(2, 3, 32, 32)
    flavour = S.collect_flavour("dn")
    model = convert(small_generator())
    with torch.no_grad():
        image, mean, std = model.collect(x, torch.from_numpy(flavour.as_array()))
        nbr_mean = mean[:, :, None, None].expand(-1, -1, 3, 3).contiguous()
        nbr_std = (std - S.DN_EPS)[:, :, None, None].expand(-1, -1, 3, 3).contiguous()
        applied = model.apply(x, nbr_mean, nbr_std)
    torch.testing.assert_close(applied, image, rtol=1e-4, atol=1e-4)
