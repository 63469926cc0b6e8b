"""Batch-norm generators: ``export-model --batchnorm instance|eval``.

pix2pix/CycleGAN's ``test.py`` calls ``model.eval()`` only with ``--eval``: by default a
BatchNorm2d runs in training mode on a batch of one image, i.e. with that image's own
statistics (biased variance, BN's eps) and BN's affine parameters. ``instance`` exports that;
``eval`` folds the running statistics. The reference below is a ResnetGenerator written
for this test from the layout of junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py``
(the same class BCI's PyramidPix2pix uses), independent of dnrt's zoo.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

from dnrt import semantics as S  # noqa: E402
from dnrt.bundle import Manifest, load_bundle  # noqa: E402
from dnrt.cli import export_model_command, main  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.export import export_module  # noqa: E402
from dnrt.export.onnx_export import count_dense_nodes  # noqa: E402

TILE, MARGIN = 64, 16


class _Block(nn.Module):
    def __init__(self, dim: int, dropout: bool) -> None:
        super().__init__()
        seq: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=False),
            nn.BatchNorm2d(dim),
        ]
        seq.append(nn.ReLU(True))
        if dropout:
            seq.append(nn.Dropout(0.5))
        seq += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim)]
        self.conv_block = nn.Sequential(*seq)

    def forward(self, x):
        return x + self.conv_block(x)


class ReferenceResnet(nn.Module):
    """ResnetGenerator with norm 'batch': convs without bias, BN after each but the last."""

    def __init__(self, ngf: int, n_blocks: int, dropout: bool) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=False)]
        seq += [nn.BatchNorm2d(ngf), nn.ReLU(True)]
        for c in (ngf, 2 * ngf):
            seq += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(2 * c),
                nn.ReLU(True),
            ]
        seq += [_Block(4 * ngf, dropout) for _ in range(n_blocks)]
        for c in (4 * ngf, 2 * ngf):
            seq.append(nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=False))
            seq += [nn.BatchNorm2d(c // 2), nn.ReLU(True)]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics far from identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.num_batches_tracked.fill_(1000)
    return module.eval()


def reference_output(module: nn.Module, x: np.ndarray, batchnorm: str) -> np.ndarray:
    """The original module as test.py runs it: train mode on a batch of one (dropout off), or eval."""
    ref = copy.deepcopy(module)  # train-mode BN updates running statistics; keep the original
    if batchnorm == "instance":
        ref.train()
        for m in ref.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
    else:
        ref.eval()
    with torch.no_grad():
        return np.concatenate([ref(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


LAYOUTS = {
    "cyclegan": {"ngf": 8, "n_blocks": 2, "dropout": False},
    # BCI's PyramidPix2pix: resnet_9blocks, --norm batch, dropout on.
    "bci": {"ngf": 8, "n_blocks": 9, "dropout": True},
}


def run_cli(args: list[str]):
    return CliRunner().invoke(export_model_command, args, catch_exceptions=False)


def test_bci_layout_keys() -> None:
    """Dropout shifts the second conv/norm of each block: conv_block.{1,2,6,7}, blocks model.10..18."""
    keys = ReferenceResnet(**LAYOUTS["bci"]).state_dict().keys()
    blocks = sorted({int(k.split(".")[1]) for k in keys if ".conv_block." in k})
    assert blocks == list(range(10, 19))
    inner = {k.split(".")[3] for k in keys if k.startswith("model.10.conv_block.")}
    assert inner == {"1", "2", "6", "7"}
    assert "model.10.conv_block.2.running_var" in keys and "model.19.weight" in keys


@pytest.mark.parametrize("batchnorm", ["instance", "eval"])
@pytest.mark.parametrize("layout", ["cyclegan", "bci"])
def test_batch_norm_export_matches_the_original_module(tmp_path: Path, layout: str, batchnorm: str) -> None:
    spec = LAYOUTS[layout]
    module = randomized(ReferenceResnet(**spec))
    ckpt = tmp_path / "latest_net_G.pth"
    torch.save(module.state_dict(), ckpt)  # pix2pix saves the bare state_dict
    out = tmp_path / "model.dnrt"
    result = run_cli(
        [str(ckpt), "-o", str(out), "--tile", str(TILE), "--margin", str(MARGIN), "--batchnorm", batchnorm]
    )
    assert result.exit_code == 0, result.output

    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.architecture == "cyclegan" and m.batchnorm == batchnorm
    assert m.config["norm"] == "batch" and m.config["n_blocks"] == spec["n_blocks"]
    assert m.config["use_dropout"] is spec["dropout"]
    assert m.config["bn_folded"] is (batchnorm == "eval")
    n_norms = 2 * spec["n_blocks"] + 5 if batchnorm == "instance" else 0
    assert len(m.layers) == n_norms and count_dense_nodes(bundle.dense_graph) == n_norms
    assert json.loads((out / "manifest.json").read_text())["batchnorm"] == batchnorm

    # One tile (tile + 2 margins) in IN mode, through ONNX Runtime.
    x = np.random.default_rng(1).uniform(-1, 1, size=(1, 3, TILE + 2 * MARGIN, TILE + 2 * MARGIN))
    x = x.astype(np.float32)
    sess = ort.InferenceSession(str(bundle.stats_graph), providers=["CPUExecutionProvider"])
    image = sess.run(["image"], {"tiles": x, "collect_params": S.collect_flavour("in").as_array()})[0]
    want = reference_output(module, x, batchnorm)
    assert float(np.abs(image - want).max()) <= 1e-4
    # The torch backend rebuilds the module from the bundle: the same numbers in both modes.
    from dnrt.runtime.backends import get_backend

    with get_backend("torch", bundle) as backend:
        got = backend.collect(x, S.collect_flavour("in"))[0]
    assert float(np.abs(got - want).max()) <= 1e-4
    # The two modes really differ (randomized running statistics), so the check above tells them apart.
    other = reference_output(module, x, "eval" if batchnorm == "instance" else "instance")
    assert float(np.abs(image - other).max()) > 1e-2

    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0
    assert f"batch norm    {batchnorm} (" in info.output
    summary = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert json.loads(summary.output)["batchnorm"] == batchnorm


def test_default_is_instance(tmp_path: Path) -> None:
    module = randomized(ReferenceResnet(**LAYOUTS["cyclegan"]))
    torch.save({"G_A": module.state_dict()}, tmp_path / "g.pth")
    result = run_cli([str(tmp_path / "g.pth"), "-o", str(tmp_path / "o.dnrt"), "--tile", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batchnorm"] == "instance"
    assert load_bundle(tmp_path / "o.dnrt").manifest.batchnorm == "instance"


def test_bad_batchnorm_value_is_one_line_exit_2(tmp_path: Path) -> None:
    module = randomized(ReferenceResnet(**LAYOUTS["cyclegan"]))
    torch.save(module.state_dict(), tmp_path / "g.pth")
    out = tmp_path / "o.dnrt"
    result = run_cli([str(tmp_path / "g.pth"), "-o", str(out), "--batchnorm", "train"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --batchnorm must be one of instance, eval")
    assert not out.exists()


def test_batch_norm_eps_is_used_where_in_eps_applies(tmp_path: Path) -> None:
    """A BatchNorm2d's own eps (not IN's 1e-5) in IN/TIN flavours; DN's collect has none."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, eps=0.05),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
    )
    with torch.no_grad():
        module[0].weight.mul_(0.2)  # small activations: the eps matters
        module[1].weight.uniform_(0.5, 1.5)
        module[1].bias.uniform_(-0.3, 0.3)
    reference = copy.deepcopy(module)
    result = export_module(module, tmp_path / "o.dnrt", tile=32, margin=0, log=lambda _: None)
    assert result.manifest.batchnorm == "instance" and len(result.manifest.layers) == 1
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "o.dnrt" / "stats.onnx"), providers=["CPUExecutionProvider"])
    image, _, std = sess.run(None, {"tiles": x, "collect_params": S.collect_flavour("in").as_array()})
    want = reference_output(reference, x, "instance")
    assert float(np.abs(image - want).max()) <= 1e-4
    with torch.no_grad():
        y = reference[0](torch.from_numpy(x)).double()
    var = y.var(dim=(2, 3), unbiased=False).numpy()
    np.testing.assert_allclose(std, np.sqrt(var + 0.05), rtol=1e-5)
    _, _, std_dn = sess.run(None, {"tiles": x, "collect_params": S.collect_flavour("dn", 0.0).as_array()})
    np.testing.assert_allclose(std_dn, np.sqrt(y.var(dim=(2, 3)).numpy()), rtol=1e-5)


def test_eval_mode_keeps_running_statistics_for_a_custom_module(tmp_path: Path) -> None:
    module = randomized(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1)))
    reference = copy.deepcopy(module)
    result = export_module(
        module, tmp_path / "o.dnrt", tile=32, margin=0, batchnorm="eval", log=lambda _: None
    )
    assert result.manifest.batchnorm == "eval" and result.manifest.layers == []
    x = np.random.default_rng(3).uniform(-1, 1, size=(1, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "o.dnrt" / "stats.onnx"), providers=["CPUExecutionProvider"])
    image = sess.run(["image"], {"tiles": x, "collect_params": S.collect_flavour("in").as_array()})[0]
    assert float(np.abs(image - reference_output(reference, x, "eval")).max()) <= 1e-4
    with pytest.raises(DnrtError, match="--batchnorm must be one of instance, eval, got 'batch'"):
        export_module(module, tmp_path / "x.dnrt", batchnorm="batch")


def _manifest_data(**changes) -> dict:
    data = {
        "architecture": "cyclegan",
        "config": {"norm": "batch", "bn_folded": True},
        "in_channels": 3,
        "out_channels": 3,
        "layers": [],
        "format_version": 1,
    }
    data.update(changes)
    return data


def test_manifest_batchnorm_field_default_and_validation() -> None:
    # Bundles from before the field: a folded batch-norm config can only have been "eval".
    assert Manifest.from_dict(_manifest_data()).batchnorm == "eval"
    assert Manifest.from_dict(_manifest_data(config={"norm": "instance"})).batchnorm is None
    assert Manifest.from_dict(_manifest_data(config={}, batchnorm="instance")).batchnorm == "instance"
    with pytest.raises(DnrtError, match="malformed: batchnorm must be null or one of instance, eval"):
        Manifest.from_dict(_manifest_data(batchnorm="train"))
    with pytest.raises(DnrtError, match="malformed: the config folds batch norm"):
        Manifest.from_dict(_manifest_data(batchnorm="instance"))


def test_torch_backend_rebuilds_a_per_sample_batch_norm_bundle(tmp_path: Path) -> None:
    from dnrt.runtime.backends import get_backend

    module = randomized(ReferenceResnet(**LAYOUTS["bci"]))
    torch.save(module.state_dict(), tmp_path / "g.pth")
    out = tmp_path / "o.dnrt"
    assert run_cli([str(tmp_path / "g.pth"), "-o", str(out), "--tile", "64", "--quiet"]).exit_code == 0
    bundle = load_bundle(out)
    x = np.random.default_rng(4).uniform(-1, 1, size=(1, 3, 96, 96)).astype(np.float32)
    results = {}
    for name in ("ort", "torch"):
        with get_backend(name, bundle) as backend:
            results[name] = backend.collect(x, S.collect_flavour("tin"))
    for got, want in zip(results["torch"], results["ort"], strict=True):
        assert float(np.abs(got - want).max()) <= 1e-4
    assert float(np.abs(results["torch"][0] - reference_output(module, x, "instance")).max()) > 1e-4
