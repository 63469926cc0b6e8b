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


class SkipBlock(nn.Module):
    """pix2pix's UnetSkipConnectionBlock: down (LeakyReLU in place, 4x4 s2 conv, norm), the inner
    block, up (ReLU in place, 4x4 s2 transposed conv, norm), dropout; ``cat([x, model(x)])``."""

    def __init__(self, outer, inner, input_nc=None, sub=None, outermost=False, innermost=False, norm="batch"):
        super().__init__()
        self.outermost = outermost
        use_bias = norm == "instance"

        def make_norm(c):
            return nn.InstanceNorm2d(c) if norm == "instance" else nn.BatchNorm2d(c)

        downconv = nn.Conv2d(input_nc or outer, inner, 4, stride=2, padding=1, bias=use_bias)
        if outermost:
            layers = [downconv, sub, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True), up, make_norm(outer)]
        else:
            up = nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), downconv, make_norm(inner), sub, nn.ReLU(True), up]
            layers += [make_norm(outer), nn.Dropout(0.5)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # x is LeakyReLU'd in place by model[0]


class UnetGenerator(nn.Module):
    """pix2pix's UnetGenerator: innermost block, num_downs - 5 blocks of 8ngf, then 4, 2, 1 ngf."""

    def __init__(self, input_nc=3, output_nc=3, num_downs=8, ngf=64, norm="batch"):
        super().__init__()
        block = SkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = SkipBlock(ngf * 8, ngf * 8, sub=block, norm=norm)
        for mult in (4, 2, 1):
            block = SkipBlock(ngf * mult, ngf * mult * 2, sub=block, norm=norm)
        self.model = SkipBlock(output_nc, ngf, input_nc=input_nc, sub=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class CutDownsample(nn.Module):
    """CUT's anti-aliasing ``Downsample``: reflect pad, depthwise binomial blur ([1,2,1]^2 / 16), stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        row = torch.tensor([1.0, 2.0, 1.0])
        filt = row[:, None] * row[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(1)
        self.channels = channels

    def forward(self, x):
        return nn.functional.conv2d(self.pad(x), self.filt, stride=2, groups=self.channels)


class CutUpsample(nn.Module):
    """CUT's ``Upsample``: replicate pad 1, transposed blur ([1,3,3,1]^2 / 64 x 4), stride 2, cropped."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        row = torch.tensor([1.0, 3.0, 3.0, 1.0])
        filt = row[:, None] * row[None, :]
        self.register_buffer("filt", (filt / filt.sum() * 4)[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReplicationPad2d(1)
        self.channels = channels

    def forward(self, x):
        y = nn.functional.conv_transpose2d(self.pad(x), self.filt, stride=2, padding=2, groups=self.channels)
        return y[:, :, 1:, 1:][:, :, :-1, :-1]


class ResnetGenerator(nn.Module):
    """CycleGAN's ResnetGenerator with instance norm (SCC), or CUT's anti-aliased one (SRC, a CUT fork)."""

    def __init__(self, ngf: int, n_blocks: int, antialias: bool) -> None:
        super().__init__()
        seq: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for c in (ngf, 2 * ngf):
            if antialias:
                seq += [nn.Conv2d(c, 2 * c, 3, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
                seq.append(CutDownsample(2 * c))
            else:
                seq += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        seq += [RegGanBlock(4 * ngf) for _ in range(n_blocks)]  # the same residual block
        for c in (4 * ngf, 2 * ngf):
            if antialias:
                seq += [CutUpsample(c), nn.Conv2d(c, c // 2, 3, padding=1)]
            else:
                seq.append(nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1))
            seq += [nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def randomized_batch_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """BN affine parameters and running statistics far from identity, so the two modes differ."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 3.0)
    return module.eval()


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
    from dnrt.models.zoo import build_generator

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


# --------------------------------------------------------------------------- pix2pix U-Net


def test_unet_key_layout() -> None:
    keys = UnetGenerator(num_downs=8, ngf=2).state_dict().keys()
    assert "model.model.0.weight" in keys and "model.model.0.bias" not in keys  # batch norm: no conv bias
    assert "model.model.3.bias" in keys  # the outermost up conv always has one
    assert "model.model.1.model.2.running_var" in keys  # the second level's down norm
    innermost = "model.model" + ".1.model" + ".3.model" * 6
    assert f"{innermost}.1.weight" in keys and f"{innermost}.4.running_mean" in keys
    assert f"{innermost}.2.weight" not in keys  # no down norm in the innermost block


@pytest.mark.parametrize("batchnorm", ["instance", "eval"])
def test_unet_256_batch_norm_matches_the_original(tmp_path: Path, batchnorm: str) -> None:
    torch.manual_seed(1)
    module = randomized_batch_norms(UnetGenerator(num_downs=8, ngf=2, norm="batch"))
    torch.save(module.state_dict(), tmp_path / "latest_net_G.pth")
    out = tmp_path / "unet.dnrt"
    result = export(tmp_path / "latest_net_G.pth", out, "--batchnorm", batchnorm, "--quiet")
    assert result.exit_code == 0, result.output
    m = load_bundle(out).manifest
    assert m.architecture == "unet" and m.batchnorm == batchnorm
    assert m.config["num_downs"] == 8 and m.config["norm"] == "batch" and m.config["ngf"] == 2
    assert m.network_multiple == 256 and m.input_multiple == 256
    # Default geometry: tile 512 kept (a multiple of 256), margin raised from 16 to 128.
    assert (m.tile, m.margin) == (512, 128)
    # Six middle blocks with a down and an up norm, the innermost with an up norm; none once folded.
    assert len(m.layers) == (13 if batchnorm == "instance" else 0)
    if batchnorm == "instance":
        assert max(m.strides) == 128
    check_one_tile(out, module, 256, batchnorm)
    other = reference_in_mode(module, np.zeros((1, 3, 256, 256), np.float32) + 0.3, "eval")
    mine = reference_in_mode(module, np.zeros((1, 3, 256, 256), np.float32) + 0.3, "instance")
    assert float(np.abs(other - mine).max()) > 1e-2  # the two modes are told apart


def test_unet_128_instance_norm_matches_the_original(tmp_path: Path) -> None:
    torch.manual_seed(2)
    module = UnetGenerator(input_nc=1, output_nc=3, num_downs=7, ngf=2, norm="instance").eval()
    torch.save({"netG": module.state_dict()}, tmp_path / "g.pth")
    out = tmp_path / "unet.dnrt"
    # One 128 px network input: tile 128 (a multiple of 2^7, for TIN's and DN's thumbnail), no margin.
    result = export(tmp_path / "g.pth", out, "--tile", "128", "--margin", "0", "--quiet")
    assert result.exit_code == 0, result.output
    m = load_bundle(out).manifest
    assert (m.architecture, m.config["num_downs"], m.config["norm"]) == ("unet", 7, "instance")
    assert (m.in_channels, m.out_channels, m.network_multiple) == (1, 3, 128)
    check_one_tile(out, module, 128)


def test_unet_geometry_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    from dnrt.errors import DnrtError
    from dnrt.runtime.api import Translator

    torch.manual_seed(0)
    module = UnetGenerator(num_downs=5, ngf=2, norm="instance").eval()
    torch.save(module.state_dict(), tmp_path / "g.pth")
    bad = export(tmp_path / "g.pth", tmp_path / "bad.dnrt", "--tile", "64", "--margin", "10", "--quiet")
    assert bad.exit_code != 0 and not (tmp_path / "bad.dnrt").exists()
    line = bad.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "tile 64 + 2 x margin 10 = 84 px" in line
    assert "tile + 2*margin must be a multiple of 32 (e.g. --margin 16 with --tile 64)" in line
    # T + 2M divides but T does not: the thumbnail of TIN and DN's default rule could not run.
    thumb = export(tmp_path / "g.pth", tmp_path / "bad.dnrt", "--tile", "48", "--margin", "8", "--quiet")
    assert thumb.exit_code == 2 and not (tmp_path / "bad.dnrt").exists()
    assert thumb.output.strip() == (
        "error: --tile 48 is not a multiple of 32: TIN and DN (dnrt's default) run this model on a "
        "48 x 48 thumbnail, which it cannot take; use e.g. --tile 64"
    )
    out = tmp_path / "u.dnrt"
    assert export(tmp_path / "g.pth", out, "--tile", "64", "--margin", "16", "--quiet").exit_code == 0
    with pytest.raises(
        DnrtError, match=r"halves its input 5 times, so tile \+ 2\*margin must be a multiple of 32"
    ):
        Translator(out, backend="ort", margin=4)
    from dnrt.runtime.cli import translate_command

    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png"), "-o", str(tmp_path / "o.tif"), "-m", str(out), "--margin", "4"]
    cli = CliRunner().invoke(translate_command, args)
    assert cli.exit_code != 0 and not (tmp_path / "o.tif").exists()
    assert cli.output.strip().startswith("error: tile 64 + 2 x margin 4 = 72 px does not suit this model")
    assert "\n" not in cli.output.strip()


# --------------------------------------------------------------------------- SRC and SCC


def test_src_and_scc_key_names_are_the_cut_and_cyclegan_layouts() -> None:
    """SRC (jcy132/Hneg_SRC) trains CUT's resnet_9blocks unchanged (only the loss differs); SCC
    keeps CycleGAN's. Their public key names are exactly the layouts dnrt already reads."""
    src = ResnetGenerator(64, 9, antialias=True).state_dict()
    assert {"model.7.filt", "model.11.filt", "model.21.filt", "model.25.filt"} <= set(src)
    assert "model.12.conv_block.1.weight" in src and "model.30.weight" in src
    scc = ResnetGenerator(64, 9, antialias=False).state_dict()
    assert "model.10.conv_block.5.weight" in scc and "model.26.weight" in scc
    assert not any(k.endswith(".filt") for k in scc)


@pytest.mark.parametrize(("family", "arch", "antialias"), [("src", "cut", True), ("scc", "cyclegan", False)])
def test_src_and_scc_checkpoints_export_and_match(
    tmp_path: Path, family: str, arch: str, antialias: bool
) -> None:
    torch.manual_seed(4)
    module = ResnetGenerator(4, 2, antialias=antialias).eval()
    ckpt = tmp_path / "latest_net_G.pth"
    torch.save(module.state_dict(), ckpt)
    out = tmp_path / f"{family}.dnrt"
    result = export(ckpt, out, "--tile", "32", "--margin", "8", "--quiet")
    assert result.exit_code == 0, result.output
    m = load_bundle(out).manifest
    assert m.architecture == arch and m.config["ngf"] == 4 and m.config["n_blocks"] == 2
    check_one_tile(out, module, 48)


# --------------------------------------------------------------------------- streaming == two-pass


def _family_checkpoint(family: str) -> tuple[nn.Module, int, int]:
    """(original module, tile, margin) of a tiny generator of each family."""
    torch.manual_seed(5)
    if family == "reggan":
        return RegGanGenerator(features=2, blocks=1).eval(), 32, 8
    if family == "unet":
        return UnetGenerator(num_downs=5, ngf=2, norm="instance").eval(), 32, 16
    if family == "unet-bn":
        return randomized_batch_norms(UnetGenerator(num_downs=5, ngf=2, norm="batch")), 32, 16
    if family == "bci":  # pyramid pix2pix: batch norm (exported per sample, the default), dropout
        from test_batchnorm import ReferenceResnet, randomized

        return randomized(ReferenceResnet(ngf=2, n_blocks=9, dropout=True)), 32, 8
    return ResnetGenerator(2, 1, antialias=family == "src").eval(), 32, 8


@pytest.mark.parametrize("family", ["reggan", "unet", "unet-bn", "bci", "src", "scc"])
def test_multi_tile_dn_streams_bit_identically_to_two_pass(tmp_path: Path, family: str) -> None:
    from dnrt.runtime.api import Translator

    module, tile, margin = _family_checkpoint(family)
    torch.save(module.state_dict(), tmp_path / "g.pth")
    out = tmp_path / "g.dnrt"
    result = export(tmp_path / "g.pth", out, "--tile", str(tile), "--margin", str(margin), "--quiet")
    assert result.exit_code == 0, result.output
    channels = load_bundle(out).manifest.in_channels
    image = np.random.default_rng(6).integers(0, 256, (100, 140, channels), dtype=np.uint8)
    results = {}
    for schedule in ("streaming", "two-pass"):
        with Translator(out, backend="ort", mode="dn", schedule=schedule) as translator:
            results[schedule] = translator.translate(image)
            assert translator.last_report is not None and translator.last_report.tiles == 4 * 5
    np.testing.assert_array_equal(results["streaming"], results["two-pass"])
    assert results["streaming"].std() > 0.5
