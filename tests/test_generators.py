"""More trained generators (issue 14): RegGAN, pix2pix U-Nets, SRC/SCC checkpoints.

Each family's checkpoint is built by an independent PyTorch module written here from the
published code's structure (key names and layer order, random weights), saved as its
authors save it, exported with ``export-model``, and compared in IN mode on one tile
with the original module (ONNX Runtime and the torch backend, max abs diff <= 1e-4).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

from dnrt import semantics as S  # noqa: E402
from dnrt.bundle import load_bundle  # noqa: E402
from dnrt.cli import export_model_command  # noqa: E402

TOL = 1e-4


# --------------------------------------------------------------------------- reference modules


class RegGanBlock(nn.Module):
    """Reg-GAN's ResidualBlock: x + conv_block(x), reflect-padded 3x3 convs, plain IN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class RegGanGenerator(nn.Module):
    """Reg-GAN's Generator: model_head (7x7, two stride-2 convs), model_body, model_tail."""

    def __init__(self, input_nc: int = 1, output_nc: int = 1, features: int = 64, blocks: int = 9) -> None:
        super().__init__()
        f = features
        head = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, f, 7), nn.InstanceNorm2d(f), nn.ReLU(True)]
        c = f
        for _ in range(2):
            head += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
            c *= 2
        tail: list[nn.Module] = []
        for _ in range(2):
            tail += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        tail += [nn.ReflectionPad2d(3), nn.Conv2d(f, output_nc, 7), nn.Tanh()]
        self.model_head = nn.Sequential(*head)
        self.model_body = nn.Sequential(*[RegGanBlock(4 * f) for _ in range(blocks)])
        self.model_tail = nn.Sequential(*tail)

    def forward(self, x):
        return self.model_tail(self.model_body(self.model_head(x)))


# --------------------------------------------------------------------------- helpers


def export(ckpt: Path, out: Path, *args: str):
    return CliRunner().invoke(
        export_model_command, [str(ckpt), "-o", str(out), *args], catch_exceptions=False
    )


def reference_in_mode(module: nn.Module, x: np.ndarray, batchnorm: str = "instance") -> np.ndarray:
    """The original module on one image: BN in training mode on a batch of one (dropout off), or eval."""
    ref = copy.deepcopy(module)
    if batchnorm == "instance":
        ref.train()
        for m in ref.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
    else:
        ref.eval()
    with torch.no_grad():
        return ref(torch.from_numpy(x)).numpy()


def check_one_tile(bundle_path: Path, module: nn.Module, size: int, batchnorm: str = "instance") -> None:
    """ONNX Runtime's stats graph and the torch backend, IN mode, vs the original module."""
    from dnrt.runtime.backends import get_backend

    bundle = load_bundle(bundle_path)
    cin = bundle.manifest.in_channels
    x = np.random.default_rng(3).uniform(-1, 1, size=(1, cin, size, size)).astype(np.float32)
    want = reference_in_mode(module, x, batchnorm)
    flavour = S.collect_flavour("in")
    sess = ort.InferenceSession(str(bundle.stats_graph), providers=["CPUExecutionProvider"])
    image = sess.run(["image"], {"tiles": x, "collect_params": flavour.as_array()})[0]
    assert image.shape == want.shape
    assert float(np.abs(image - want).max()) <= TOL
    with get_backend("torch", bundle) as backend:
        got = backend.collect(x, flavour)[0]
    assert float(np.abs(got - want).max()) <= TOL
    # The comparison can fail: the weights are not trivial.
    assert float(np.abs(want).std()) > 1e-3


# --------------------------------------------------------------------------- RegGAN


def test_reggan_is_detected_and_matches_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = RegGanGenerator(features=4, blocks=2).eval()
    ckpt = tmp_path / "netG_A2B.pth"
    torch.save(module.state_dict(), ckpt)  # Reg-GAN saves the bare state_dict
    out = tmp_path / "reggan.dnrt"
    result = export(ckpt, out, "--tile", "32", "--margin", "8", "--quiet")
    assert result.exit_code == 0, result.output
    m = load_bundle(out).manifest
    assert m.architecture == "reggan"
    assert m.config == {"input_nc": 1, "output_nc": 1, "features": 4, "n_blocks": 2}
    assert (m.in_channels, m.out_channels) == (1, 1)
    assert len(m.layers) == 2 * 2 + 5 and m.strides == [1, 2, 4, 4, 4, 4, 4, 2, 1]
    assert m.batchnorm is None
    check_one_tile(out, module, 48)


def test_a_checkpoint_mixing_layouts_is_one_line(tmp_path: Path) -> None:
    from dnrt.export.zoo import build_generator

    torch.manual_seed(0)
    mixed = dict(RegGanGenerator(features=4, blocks=1).state_dict())
    mixed.update(build_generator("cyclegan", {"ngf": 4, "n_blocks": 1}).state_dict())
    torch.save(mixed, tmp_path / "mixed.pth")
    result = export(tmp_path / "mixed.pth", tmp_path / "o.dnrt")
    assert result.exit_code != 0
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "mixes generator layouts (cyclegan, reggan)" in line
    assert not (tmp_path / "o.dnrt").exists()
