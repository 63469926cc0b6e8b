"""Test doubles for the runtime: a toy generator as a numpy backend, and the same toy as an ONNX bundle.

The toy "network" has two normalization layers at different strides (so the
packed statistics, offsets and map sizes are exercised) and is built from the
reference functions of ``dnrt.semantics``:

    x [N, 3, S, S]
    -> 1x1 conv (3 -> 4)  -> norm n0 (stride 1, affine, relu)
    -> 2x2 average pool   -> 1x1 conv (4 -> 3) -> norm n1 (stride 2)
    -> nearest upsample x2 -> 1x1 conv (3 -> 3) + 0.5 * x -> tanh

``FakeBackend`` runs it tile by tile (so its numbers do not depend on the batch);
``batch_sensitive=True`` adds a perturbation that does, to prove schedules keep
batches identical. ``write_toy_bundle`` exports the same network as stats.onnx
and dense.onnx with standard ONNX ops, for the ONNX Runtime backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnrt.bundle import Bundle, LayerSpec, Manifest
from dnrt.runtime.backends.base import Backend
from dnrt.semantics import DN_EPS, CollectFlavour, dense_normalize, normalize_own

TILE = 16
MARGIN = 4


def toy_manifest(tile: int = TILE, margin: int = MARGIN) -> Manifest:
    return Manifest(
        architecture="toy",
        config={},
        in_channels=3,
        out_channels=3,
        layers=[
            LayerSpec(name="n0", channels=4, stride=1, offset=0, affine=True, activation="relu"),
            LayerSpec(name="n1", channels=3, stride=2, offset=4, affine=False, activation="none"),
        ],
        tile=tile,
        margin=margin,
    )


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "w1": rng.normal(0, 1, (4, 3)).astype(f),
        "b1": rng.normal(0, 0.3, 4).astype(f),
        "gamma0": rng.uniform(0.5, 1.5, 4).astype(f),
        "beta0": rng.normal(0, 0.2, 4).astype(f),
        "w2": rng.normal(0, 0.7, (3, 4)).astype(f),
        "b2": rng.normal(0, 0.3, 3).astype(f),
        "w3": rng.normal(0, 0.7, (3, 3)).astype(f),
        "b3": rng.normal(0, 0.1, 3).astype(f),
    }


def _conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("oc,chw->ohw", w.astype(np.float64), x) + b.astype(np.float64)[:, None, None]


def _pool(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _up(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


class FakeBackend(Backend):
    """The toy network in numpy (float64 inside, float32 at the interface), one tile at a time."""

    name = "fake"

    def __init__(self, bundle: Bundle, seed: int = 0, batch_sensitive: bool = False) -> None:
        super().__init__(bundle)
        self.w = toy_weights(seed)
        self.batch_sensitive = batch_sensitive
        self.calls: list[tuple[str, int]] = []
        #: The ``image`` flag of every collect call (the scheduler asks for images only when it writes them).
        self.image_requests: list[bool] = []

    def _net(self, x: np.ndarray, norm0, norm1) -> np.ndarray:
        w = self.w
        h = norm0(_conv1x1(x, w["w1"], w["b1"]))
        h = norm1(_conv1x1(_pool(h), w["w2"], w["b2"]))
        y = _conv1x1(_up(h), w["w3"], w["b3"]) + 0.5 * x
        return np.tanh(y)

    def _perturb(self, n: int) -> float:
        return 1e-4 * (n - 1) if self.batch_sensitive else 0.0

    def activate_impl(self) -> None:
        pass  # nothing to load: the weights are numpy arrays made in __init__

    def deactivate_impl(self) -> None:
        pass

    def collect_impl(self, tiles, flavour: CollectFlavour, *, image: bool = True):
        self.calls.append(("collect", len(tiles)))
        self.image_requests.append(image)
        images, means, stds = [], [], []
        for x in tiles.astype(np.float64):
            stats: list[tuple[np.ndarray, np.ndarray]] = []

            def norm0(h, stats=stats):
                y, m, s = normalize_own(h, flavour, self.w["gamma0"], self.w["beta0"])
                stats.append((m, s))
                return np.maximum(y, 0.0)

            def norm1(h, stats=stats):
                y, m, s = normalize_own(h, flavour)
                stats.append((m, s))
                return y

            images.append(self._net(x, norm0, norm1))
            means.append(np.concatenate([m for m, _ in stats]))
            stds.append(np.concatenate([s for _, s in stats]))
        eps = self._perturb(len(tiles))
        f = np.float32
        return (
            np.stack(images).astype(f) + f(eps),
            np.stack(means).astype(f) + f(eps),
            np.stack(stds).astype(f),
        )

    def infer_impl(self, tiles, nbr_mean, nbr_std):
        self.calls.append(("infer", len(tiles)))
        assert nbr_mean.dtype == np.float32 and nbr_std.dtype == np.float32
        assert nbr_mean.shape == (len(tiles), self.manifest.total_channels, 3, 3)
        out = []
        for x, m, s in zip(tiles.astype(np.float64), nbr_mean, nbr_std, strict=True):

            def norm0(h, m=m, s=s):
                return dense_normalize(h, m[:4], s[:4], self.w["gamma0"], self.w["beta0"], DN_EPS, "relu")

            def norm1(h, m=m, s=s):
                return dense_normalize(h, m[4:], s[4:], eps=DN_EPS)

            out.append(self._net(x, norm0, norm1))
        return np.stack(out).astype(np.float32) + np.float32(self._perturb(len(tiles)))


def fake_bundle(
    path: Path | str = "/nonexistent-toy-bundle", tile: int = TILE, margin: int = MARGIN
) -> Bundle:
    return Bundle(path=Path(path), manifest=toy_manifest(tile, margin))


# --------------------------------------------------------------------------- ONNX toy bundle


def write_toy_bundle(path: Path, seed: int = 0, tile: int = TILE, margin: int = MARGIN) -> Path:
    """Write the toy network as a real bundle (manifest + stats.onnx + dense.onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    w = toy_weights(seed)
    opset = [helper.make_opsetid("", 18)]
    f32 = TensorProto.FLOAT

    def inits() -> list:
        ts = [
            numpy_helper.from_array(w["w1"][:, :, None, None], "w1"),
            numpy_helper.from_array(w["b1"], "b1"),
            numpy_helper.from_array(w["w2"][:, :, None, None], "w2"),
            numpy_helper.from_array(w["b2"], "b2"),
            numpy_helper.from_array(w["w3"][:, :, None, None], "w3"),
            numpy_helper.from_array(w["b3"], "b3"),
            numpy_helper.from_array(w["gamma0"][None, :, None, None], "gamma0"),
            numpy_helper.from_array(w["beta0"][None, :, None, None], "beta0"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "up_scales"),
        ]
        return ts

    def trunk(nodes: list, norm0, norm1) -> None:
        nodes.append(helper.make_node("Conv", ["tiles", "w1", "b1"], ["c1"]))
        h0 = norm0(nodes, "c1")
        nodes.append(helper.make_node("AveragePool", [h0], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
        nodes.append(helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]))
        h1 = norm1(nodes, "c2")
        nodes.append(helper.make_node("Resize", [h1, "", "up_scales"], ["u1"], mode="nearest"))
        nodes.append(helper.make_node("Conv", ["u1", "w3", "b3"], ["c3"]))
        nodes.append(helper.make_node("Mul", ["tiles", "half"], ["skip"]))
        nodes.append(helper.make_node("Add", ["c3", "skip"], ["pre"]))
        nodes.append(helper.make_node("Tanh", ["pre"], ["image"]))

    def affine0(nodes: list, x: str, tag: str) -> str:
        nodes.append(helper.make_node("Mul", [x, "gamma0"], [tag + "_g"]))
        nodes.append(helper.make_node("Add", [tag + "_g", "beta0"], [tag + "_b"]))
        nodes.append(helper.make_node("Relu", [tag + "_b"], [tag + "_r"]))
        return tag + "_r"

    # ---- stats graph: normalize with own statistics in the flavour given by collect_params
    def own(nodes: list, x: str, tag: str, stats: list) -> str:
        p = tag + "_"
        nodes += [
            helper.make_node("ReduceMean", [x, "hw_axes"], [p + "mean"], keepdims=1),
            helper.make_node("Sub", [x, p + "mean"], [p + "cen"]),
            helper.make_node("Mul", [p + "cen", p + "cen"], [p + "sq"]),
            helper.make_node("ReduceSum", [p + "sq", "hw_axes"], [p + "ss"], keepdims=1),
            helper.make_node("Shape", [x], [p + "hw_i"], start=2, end=4),
            helper.make_node("ReduceProd", [p + "hw_i"], [p + "n_i"], keepdims=0),
            helper.make_node("Cast", [p + "n_i"], [p + "n"], to=f32),
            helper.make_node("Sub", [p + "n", "ddof"], [p + "dof"]),
            helper.make_node("Div", [p + "ss", p + "dof"], [p + "var"]),
            helper.make_node("Add", [p + "var", "eps"], [p + "vare"]),
            helper.make_node("Sqrt", [p + "vare"], [p + "sd"]),
            helper.make_node("Max", [p + "sd", "floor"], [p + "std"]),
            helper.make_node("Div", [p + "cen", p + "std"], [p + "y"]),
            helper.make_node("Flatten", [p + "mean"], [p + "mean2"], axis=1),
            helper.make_node("Flatten", [p + "std"], [p + "std2"], axis=1),
        ]
        stats.append((p + "mean2", p + "std2"))
        return p + "y"

    nodes: list = [
        helper.make_node("Gather", ["collect_params", "i0"], ["ddof"], axis=0),
        helper.make_node("Gather", ["collect_params", "i1"], ["eps"], axis=0),
        helper.make_node("Gather", ["collect_params", "i2"], ["floor"], axis=0),
    ]
    stats: list = []
    trunk(nodes, lambda n, x: affine0(n, own(n, x, "n0", stats), "a0"), lambda n, x: own(n, x, "n1", stats))
    nodes.append(helper.make_node("Concat", [stats[0][0], stats[1][0]], ["tile_mean"], axis=1))
    nodes.append(helper.make_node("Concat", [stats[0][1], stats[1][1]], ["tile_std"], axis=1))
    index_inits = [numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)]
    stats_graph = helper.make_graph(
        nodes,
        "toy_stats",
        [
            helper.make_tensor_value_info("tiles", f32, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("collect_params", f32, [3]),
        ],
        [
            helper.make_tensor_value_info("image", f32, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("tile_mean", f32, ["N", 7]),
            helper.make_tensor_value_info("tile_std", f32, ["N", 7]),
        ],
        inits() + index_inits,
    )
    onnx.save(helper.make_model(stats_graph, opset_imports=opset, ir_version=9), path / "stats.onnx")

    # ---- dense graph: per-pixel moments interpolated from the 3x3 neighbourhood (separable form)
    def axis_w(nodes: list, x: str, dim: int, tag: str) -> str:
        p = tag
        nodes += [
            helper.make_node("Shape", [x], [p + "n_i"], start=dim, end=dim + 1),
            helper.make_node("Cast", [p + "n_i"], [p + "n1"], to=f32),
            helper.make_node("Squeeze", [p + "n1"], [p + "n"]),
            helper.make_node("Add", [p + "n", "half"], [p + "lim"]),
            helper.make_node("Range", ["half", p + "lim", "one"], [p + "pos"]),
            helper.make_node("Mul", [p + "n", "half"], [p + "c"]),
            helper.make_node("Sub", [p + "pos", p + "c"], [p + "off"]),
            helper.make_node("Div", [p + "off", p + "n"], [p + "d"]),
            helper.make_node("Neg", [p + "d"], [p + "nd"]),
            helper.make_node("Relu", [p + "nd"], [p + "before"]),
            helper.make_node("Relu", [p + "d"], [p + "after"]),
            helper.make_node("Sub", ["one", p + "before"], [p + "t"]),
            helper.make_node("Sub", [p + "t", p + "after"], [p + "mid"]),
            helper.make_node("Unsqueeze", [p + "before", "ax1"], [p + "b2"]),
            helper.make_node("Unsqueeze", [p + "mid", "ax1"], [p + "m2"]),
            helper.make_node("Unsqueeze", [p + "after", "ax1"], [p + "a2"]),
            helper.make_node("Concat", [p + "b2", p + "m2", p + "a2"], [p + "w"], axis=1),
        ]
        return p + "w"

    def dense(nodes: list, x: str, tag: str, lo: int, hi: int) -> str:
        p = tag + "_"
        nodes += [
            helper.make_node("Slice", ["nbr_mean", f"s{lo}", f"s{hi}", "ax1"], [p + "m"]),
            helper.make_node("Slice", ["nbr_std", f"s{lo}", f"s{hi}", "ax1"], [p + "s"]),
            helper.make_node("Add", [p + "s", "dn_eps"], [p + "se"]),
            helper.make_node("Reciprocal", [p + "se"], [p + "r"]),
        ]
        wy = axis_w(nodes, x, 2, p + "y")
        wx = axis_w(nodes, x, 3, p + "x")
        nodes += [
            helper.make_node("Einsum", [wy, p + "m", wx], [p + "mu"], equation="ia,ncab,jb->ncij"),
            helper.make_node("Einsum", [wy, p + "r", wx], [p + "ri"], equation="ia,ncab,jb->ncij"),
            helper.make_node("Sub", [x, p + "mu"], [p + "cen"]),
            helper.make_node("Mul", [p + "cen", p + "ri"], [p + "y"]),
        ]
        return p + "y"

    nodes = []
    trunk(nodes, lambda n, x: affine0(n, dense(n, x, "n0", 0, 4), "a0"), lambda n, x: dense(n, x, "n1", 4, 7))
    slice_inits = [numpy_helper.from_array(np.array([v], np.int64), f"s{v}") for v in (0, 4, 7)]
    dense_graph = helper.make_graph(
        nodes,
        "toy_dense",
        [
            helper.make_tensor_value_info("tiles", f32, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("nbr_mean", f32, ["N", 7, 3, 3]),
            helper.make_tensor_value_info("nbr_std", f32, ["N", 7, 3, 3]),
        ],
        [helper.make_tensor_value_info("image", f32, ["N", 3, "H", "W"])],
        inits()
        + slice_inits
        + [
            numpy_helper.from_array(np.array([1], np.int64), "ax1"),
            numpy_helper.from_array(np.array(DN_EPS, np.float32), "dn_eps"),
        ],
    )
    onnx.save(helper.make_model(dense_graph, opset_imports=opset, ir_version=9), path / "dense.onnx")
    (path / "manifest.json").write_text(toy_manifest(tile, margin).to_json())
    return path
