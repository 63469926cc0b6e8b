"""Safe checkpoint import: wrappers, prefixes, formats, refusal of code, one-line errors."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from dnrt.errors import DnrtError  # noqa: E402
from dnrt.export.checkpoint import load_generator, load_state_dict  # noqa: E402
from dnrt.models.zoo import build_generator  # noqa: E402

SMALL = {
    "official": {"features": 8, "residuals": 2},
    "cyclegan": {"ngf": 8, "n_blocks": 2},
    "cut": {"ngf": 8, "n_blocks": 2},
}
X = torch.rand(1, 3, 64, 64) * 2 - 1


def _model(name: str, seed: int = 0, **extra) -> nn.Module:
    torch.manual_seed(seed)
    return build_generator(name, {**SMALL[name], **extra})


def _run(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(X)


def _save(tmp_path: Path, form: str, sd: dict, other: dict) -> tuple[Path, str | None, str | None]:
    """Write ``sd`` in one wrapper form; returns (path, expected info.key, expected stripped prefix)."""
    if form == "plain":
        torch.save(sd, tmp_path / "g.pth")
        return tmp_path / "g.pth", None, None
    if form == "legacy":  # the pre-1.6 non-zip torch.save format
        torch.save(sd, tmp_path / "g.pt", _use_new_zipfile_serialization=False)
        return tmp_path / "g.pt", None, None
    if form == "state_dict":
        torch.save({"state_dict": sd, "epoch": 7}, tmp_path / "g.ckpt")
        return tmp_path / "g.ckpt", "state_dict", None
    if form == "G_A+G_B":
        torch.save({"G_A": sd, "G_B": other, "D_A": {"w": torch.zeros(1)}}, tmp_path / "g.pth")
        return tmp_path / "g.pth", "G_A", None
    if form == "module":
        torch.save({"netG_A": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "g.pth")
        return tmp_path / "g.pth", "netG_A", "module."
    if form == "lightning":  # flat keys with a generator prefix, as Lightning modules save them
        flat = {f"netG_A.{k}": v for k, v in sd.items()} | {f"netD_A.{k}": v for k, v in other.items()}
        torch.save({"state_dict": flat, "epoch": 3, "global_step": 10}, tmp_path / "g.ckpt")
        return tmp_path / "g.ckpt", "state_dict/netG_A", None
    if form == "safetensors":
        save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "g.safetensors"))
        return tmp_path / "g.safetensors", None, "module."
    raise AssertionError(form)


FORMS = ["plain", "legacy", "state_dict", "G_A+G_B", "module", "lightning", "safetensors"]


@pytest.mark.parametrize("name", ["official", "cyclegan", "cut"])
@pytest.mark.parametrize("form", FORMS)
def test_round_trip_with_auto_detection(tmp_path: Path, name: str, form: str) -> None:
    original, other = _model(name, 0), _model(name, 1)
    path, key, prefix = _save(tmp_path, form, original.state_dict(), other.state_dict())
    module, detected, config, info = load_generator(path)
    assert detected == name
    assert {k: config[k] for k in SMALL[name]} == SMALL[name]
    assert not module.training
    assert torch.equal(_run(module), _run(original))
    assert info.key == key and info.stripped_prefix == prefix
    assert info.format == ("safetensors" if form == "safetensors" else "pickle")
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The config rebuilds the module from its weights alone (what the bundle does).
    rebuilt = build_generator(detected, config)
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(_run(rebuilt), _run(original))


def test_several_generators_pick_a_to_b_and_key_picks_explicitly(tmp_path: Path) -> None:
    g_a, g_b = _model("cut", 0), _model("cut", 1)
    path = tmp_path / "both.pth"
    torch.save({"netG_A": g_a.state_dict(), "netG_B": g_b.state_dict(), "opt": {"lr": 1e-4}}, path)
    module, _, _, info = load_generator(path)
    assert torch.equal(_run(module), _run(g_a))
    assert any("several generators" in n and "'netG_A'" in n for n in info.notes)
    module, _, _, info = load_generator(path, key="netG_B")
    assert torch.equal(_run(module), _run(g_b)) and info.key == "netG_B"
    # A flat key prefix works as a key too.
    flat = tmp_path / "flat.safetensors"
    save_file(
        {f"G_B.{k}": v for k, v in g_b.state_dict().items()}
        | {f"G_A.{k}": v for k, v in g_a.state_dict().items()},
        str(flat),
    )
    module, _, _, info = load_generator(flat, key="G_B")
    assert torch.equal(_run(module), _run(g_b)) and info.key == "G_B"


def test_missing_key_lists_available_keys(tmp_path: Path) -> None:
    path = tmp_path / "g.pth"
    torch.save({"G_A": _model("official").state_dict(), "G_B": _model("official", 1).state_dict()}, path)
    with pytest.raises(DnrtError, match=r"key 'netG' not found in .*g\.pth.*available keys: G_A, G_B$"):
        load_state_dict(path, key="netG")


def test_ambiguous_nested_dicts_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "g.pth"
    sd = _model("cyclegan").state_dict()
    torch.save({"first": sd, "second": sd}, path)
    with pytest.raises(DnrtError, match=r"cannot tell which entry .* first, second; pass key="):
        load_state_dict(path)
    assert load_state_dict(path, key="second")[1].key == "second"


def _write_malicious(path: Path, marker: Path, legacy: bool) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    if legacy:  # a bare protocol-2 pickle: what an attacker hands out as "model.pth"
        with path.open("wb") as f:
            pickle.dump({"epoch": 1, "x": Payload()}, f, protocol=2)
    else:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, path)


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _write_malicious(path, marker, legacy)
    assert not marker.exists()
    with pytest.raises(DnrtError) as err:
        load_generator(path)
    message = str(err.value)
    assert message.startswith(
        f"refusing to load {path}: it contains Python objects other than tensors (possible code execution); "
        "only weights are loaded"
    )
    assert "system" in message and "\n" not in message
    assert not marker.exists(), "the payload ran"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(nn.Conv2d(1, 1, 1)), str(path))
    with pytest.raises(DnrtError, match="refusing to load .*TorchScript archive"):
        load_state_dict(path)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    sd = _model("cyclegan").state_dict()
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, pattern: str) -> None:
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, pattern)

    put("empty.pth", b"", r"checkpoint .*empty\.pth is empty \(0 bytes\)$")
    torch.save(sd, tmp_path / "full.pth")
    full = (tmp_path / "full.pth").read_bytes()
    put(
        "truncated.pth",
        full[: len(full) // 2],
        r"could not read .*truncated\.pth: the file is truncated or corrupted \(.+\)$",
    )
    torch.save(sd, tmp_path / "legacy_full.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy_full.pt").read_bytes()
    put(
        "truncated_legacy.pt",
        legacy[: len(legacy) // 2],
        r"could not read .*truncated_legacy\.pt: the file is truncated or corrupted",
    )
    save_file(sd, str(tmp_path / "full.safetensors"))
    st = (tmp_path / "full.safetensors").read_bytes()
    put(
        "truncated.safetensors",
        st[:-100],
        r"could not read .*truncated\.safetensors as safetensors: the file is truncated or corrupted",
    )
    put(
        "junk.safetensors",
        b"definitely not safetensors",
        r"as safetensors: the file is truncated or corrupted",
    )
    put(
        "notes.pth",
        b"hello, these are my training notes\n",
        r"notes\.pth is not a checkpoint: neither a PyTorch file",
    )
    return out


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    for name, (path, pattern) in _bad_files(tmp_path).items():
        with pytest.raises(DnrtError, match=pattern) as err:
            load_generator(path)
        message = str(err.value)
        assert "\n" not in message and "Traceback" not in message, name
        assert len(message) < 300, name


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ({"epoch": 3, "lr": 0.1}, r"holds no tensors \(at the top level; keys: epoch, lr\)$"),
        ({}, r"holds no tensors \(an empty dict at the top level\)$"),
        ({"state_dict": {}, "epoch": 1}, r"holds no tensors \(at the top level; keys: state_dict, epoch\)$"),
        (
            [1, 2],
            r"not a generator checkpoint: expected a dict of named tensors at the top level, found list$",
        ),
        ("tensor", r"not a generator checkpoint: .* found a single tensor$"),
    ],
)
def test_checkpoints_without_weights(tmp_path: Path, content, pattern: str) -> None:
    path = tmp_path / "c.pth"
    torch.save(torch.zeros(3) if content == "tensor" else content, path)
    with pytest.raises(DnrtError, match=pattern):
        load_generator(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DnrtError, match=r"checkpoint not found: .*nope\.pth$"):
        load_generator(tmp_path / "nope.pth")
    with pytest.raises(DnrtError, match="checkpoint is not a file"):
        load_generator(tmp_path)


def test_missing_and_misshaped_keys(tmp_path: Path) -> None:
    sd = _model("official").state_dict()
    del sd["resnetblocks4.1.model.5.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(
        DnrtError,
        match=r"does not fit the official generator \{.*\}: missing 1 key\(s\): resnetblocks4\.1\.model\.5\.bias$",
    ):
        load_generator(tmp_path / "missing.pth")

    sd = _model("cyclegan").state_dict()
    sd["model.10.conv_block.5.weight"] = torch.zeros(32, 32, 5, 5)
    sd["model.99.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(DnrtError, match=r"unexpected 1 key\(s\): model\.99\.weight$"):
        load_generator(tmp_path / "extra.safetensors")
    del sd["model.99.weight"]
    save_file(sd, str(tmp_path / "shape.safetensors"))
    with pytest.raises(
        DnrtError,
        match=r"key model\.10\.conv_block\.5\.weight has shape 32x32x5x5 in the checkpoint but the generator expects 32x32x3x3$",
    ):
        load_generator(tmp_path / "shape.safetensors")

    sd = _model("cut").state_dict()
    sd["model.8.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(DnrtError, match=r"key model\.8\.weight contains NaN or infinite values"):
        load_generator(tmp_path / "nan.pth")


def test_explicit_architecture(tmp_path: Path) -> None:
    original = _model("cyclegan")
    torch.save(original.state_dict(), tmp_path / "g.pth")
    module, name, _, _ = load_generator(tmp_path / "g.pth", arch="cyclegan")
    assert name == "cyclegan" and torch.equal(_run(module), _run(original))
    with pytest.raises(
        DnrtError, match=r"does not have the cut layout .*found 20 tensors; top-level names: model \(20\)"
    ):
        load_generator(tmp_path / "g.pth", arch="cut")
    with pytest.raises(DnrtError, match="unknown generator architecture 'pix2pixhd'"):
        load_generator(tmp_path / "g.pth", arch="pix2pixhd")


def test_detection_failure_names_the_file_and_what_was_found(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(
        DnrtError,
        match=r"other\.pth: no known generator layout matches .*1 tensor; .*encoder\.weight \[4x3x3x3\]",
    ):
        load_generator(tmp_path / "other.pth")


def test_stale_instance_norm_buffers_are_dropped(tmp_path: Path) -> None:
    original = _model("cyclegan")
    sd = original.state_dict()
    # PyTorch 0.4 wrote these for InstanceNorm2d; CycleGAN's loader deletes them.
    sd["model.2.running_mean"] = torch.zeros(8)
    sd["model.2.running_var"] = torch.ones(8)
    sd["model.10.conv_block.2.num_batches_tracked"] = torch.tensor(0)
    torch.save(sd, tmp_path / "old.pth")
    module, name, config, info = load_generator(tmp_path / "old.pth")
    assert name == "cyclegan" and config["norm"] == "instance"
    assert torch.equal(_run(module), _run(original))
    assert any("ignored 3 stale instance-norm running-statistics" in n for n in info.notes)


@pytest.mark.parametrize("name", ["cyclegan", "cut"])
def test_batch_norm_generator_is_folded(tmp_path: Path, name: str) -> None:
    original = _model(name, norm="batch", affine=True)
    for m in original.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    torch.save({"G_A": original.state_dict()}, tmp_path / "bn.pth")
    module, detected, config, info = load_generator(tmp_path / "bn.pth", batchnorm="eval")
    assert detected == name and config["norm"] == "batch" and config["bn_folded"] is True
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in module.modules())
    assert torch.allclose(_run(module), _run(original), atol=1e-5)
    assert (
        "batch-norm generator: BN folded into convolutions; DN/KIN/TIN do not apply "
        "(no instance norm layers), all modes give the same output"
    ) in info.notes
    rebuilt = build_generator(detected, config)
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(_run(rebuilt), _run(module))


@pytest.mark.parametrize("name", ["cyclegan", "cut"])
def test_batch_norm_generator_is_kept_for_per_sample_statistics_by_default(tmp_path: Path, name: str) -> None:
    original = _model(name, norm="batch", affine=True, use_dropout=True)
    torch.save(original.state_dict(), tmp_path / "bn.pth")
    module, detected, config, info = load_generator(tmp_path / "bn.pth")
    assert detected == name and config["norm"] == "batch" and config["bn_folded"] is False
    assert config["use_dropout"] is True
    assert sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()) == 2 * 2 + 5
    assert any("normalizes each sample with its own statistics" in n for n in info.notes)
    assert any(n.startswith("dropout layers are off") for n in info.notes)
    rebuilt = build_generator(detected, config)
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(_run(rebuilt), _run(module))
    with pytest.raises(DnrtError, match="--batchnorm must be one of instance, eval, got 'train'"):
        load_generator(tmp_path / "bn.pth", batchnorm="train")


def test_half_precision_weights_are_noted(tmp_path: Path) -> None:
    original = _model("official")
    torch.save({k: v.half() for k, v in original.state_dict().items()}, tmp_path / "half.pth")
    module, _, _, info = load_generator(tmp_path / "half.pth")
    assert "weights stored as float16; loaded as float32" in info.notes
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert torch.allclose(_run(module), _run(original), atol=2e-2)
