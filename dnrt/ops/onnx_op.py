"""The ``dnrt::DenseNorm`` ONNX op: its schema and its function body of standard ops.

The function body is what lets ONNX Runtime (CPU or CUDA) run a bundle with no
custom kernel; TensorRT binds the same node to the CUDA plugin instead. The body
follows ``dnrt.semantics.dense_normalize`` in its separable form:

    mu   = Wy @ Mean                 @ Wx^T
    rinv = Wy @ (Gamma / (Std + eps)) @ Wx^T     (gamma folded in at 3x3 size)
    Y    = max((X - mu) * rinv + Beta, lo)        lo = 0 for relu, -inf otherwise

where ``Wy [H, 3]`` and ``Wx [W, 3]`` are the reference-geometry weights built
from the input's shape, so one body serves every layer and tile size.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, defs, helper

from dnrt.ops import DEFAULT_OPSET, DOMAIN, MIN_OPSET, OP_TYPE, OP_VERSION
from dnrt.semantics import DN_EPS

__all__ = [
    "DEFAULT_OPSET",
    "DOMAIN",
    "MIN_OPSET",
    "OP_TYPE",
    "OP_VERSION",
    "attach_function",
    "function_proto",
    "register_schema",
]


def register_schema() -> None:
    """Register the op with onnx so the exporter and the checker know it (idempotent)."""
    try:
        defs.get_schema(OP_TYPE, OP_VERSION, DOMAIN)
        return
    except defs.SchemaError:
        pass
    param = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    schema = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        doc="Dense normalization: per-pixel moments interpolated from a 3x3 neighbourhood of tile "
        "statistics (dnrt, 'Every Pixel Has its Moments').",
        inputs=[
            param("X", "T", "activations [N, C, H, W]; H and W even"),
            param("Mean", "tensor(float)", "neighbourhood means [N, C, 3, 3]"),
            param("Std", "tensor(float)", "neighbourhood stds [N, C, 3, 3]"),
            param("Gamma", "tensor(float)", "scale [C]"),
            param("Beta", "tensor(float)", "shift [C]"),
        ],
        outputs=[param("Y", "T", "normalized activations, like X")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "activation type")],
        attributes=[
            attr("eps", helper.make_attribute("eps", DN_EPS), "added to std before the reciprocal"),
            attr("activation", helper.make_attribute("activation", "none"), "'none' or 'relu' (fused)"),
        ],
    )
    defs.register_schema(schema)


def _const(name: str, value: float | list[int], dtype: int = TensorProto.FLOAT) -> onnx.NodeProto:
    if isinstance(value, list):
        tensor = helper.make_tensor(name, dtype, [len(value)], value)
    else:
        tensor = helper.make_tensor(name, dtype, [], [value])
    return helper.make_node("Constant", [], [name], value=tensor)


def _axis_weights(nodes: list[onnx.NodeProto], start: int, tag: str) -> str:
    """Append nodes computing the ``[n, 3]`` axis weights for dim ``start`` of X; return its name."""
    p = f"{tag}_"
    nodes += [
        helper.make_node("Shape", ["X"], [p + "n_i"], start=start, end=start + 1),
        helper.make_node("Cast", [p + "n_i"], [p + "n_1"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", [p + "n_1"], [p + "n"]),
        helper.make_node("Add", [p + "n", "half"], [p + "limit"]),
        # Pixel centres i + 0.5 for i in [0, n): exact in float32 for any realistic n.
        helper.make_node("Range", ["half", p + "limit", "one"], [p + "pos"]),
        helper.make_node("Mul", [p + "n", "half"], [p + "centre"]),
        helper.make_node("Sub", [p + "pos", p + "centre"], [p + "off"]),
        helper.make_node("Div", [p + "off", p + "n"], [p + "d"]),
        helper.make_node("Neg", [p + "d"], [p + "nd"]),
        helper.make_node("Relu", [p + "nd"], [p + "before"]),
        helper.make_node("Relu", [p + "d"], [p + "after"]),
        helper.make_node("Sub", ["one", p + "before"], [p + "t"]),
        helper.make_node("Sub", [p + "t", p + "after"], [p + "own"]),
        helper.make_node("Unsqueeze", [p + "before", "axis1"], [p + "c0"]),
        helper.make_node("Unsqueeze", [p + "own", "axis1"], [p + "c1"]),
        helper.make_node("Unsqueeze", [p + "after", "axis1"], [p + "c2"]),
        helper.make_node("Concat", [p + "c0", p + "c1", p + "c2"], [p + "w"], axis=1),
    ]
    return p + "w"


def function_proto(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """The DenseNorm function body, made only of standard ONNX ops."""
    eps_ref = helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT)
    eps_ref.ref_attr_name = "eps"
    act_ref = helper.make_attribute_ref("value_string", onnx.AttributeProto.STRING)
    act_ref.ref_attr_name = "activation"
    eps_node = helper.make_node("Constant", [], ["eps_v"])
    eps_node.attribute.append(eps_ref)
    act_node = helper.make_node("Constant", [], ["act_v"])
    act_node.attribute.append(act_ref)

    nodes: list[onnx.NodeProto] = [
        _const("half", 0.5),
        _const("one", 1.0),
        _const("zero", 0.0),
        _const("neg_inf", float("-inf")),
        _const("axis1", [1], TensorProto.INT64),
        _const("chw", [1, -1, 1, 1], TensorProto.INT64),
        _const("cxx", [-1, 1, 1], TensorProto.INT64),
        helper.make_node(
            "Constant", [], ["relu_s"], value=helper.make_tensor("relu_s", TensorProto.STRING, [], [b"relu"])
        ),
        eps_node,
        act_node,
    ]
    wy = _axis_weights(nodes, 2, "y")
    wx = _axis_weights(nodes, 3, "x")
    nodes += [
        helper.make_node("Transpose", [wx], ["wxt"], perm=[1, 0]),
        # Means: [H,3] @ [N,C,3,3] @ [3,W] -> [N,C,H,W].
        helper.make_node("MatMul", [wy, "Mean"], ["mu_h"]),
        helper.make_node("MatMul", ["mu_h", "wxt"], ["mu"]),
        # Reciprocal std, interpolated as a reciprocal (docs/semantics.md 4.3), gamma folded in.
        helper.make_node("Add", ["Std", "eps_v"], ["std_e"]),
        helper.make_node("Reciprocal", ["std_e"], ["rstd"]),
        helper.make_node("Reshape", ["Gamma", "cxx"], ["gamma_c"]),
        helper.make_node("Mul", ["rstd", "gamma_c"], ["grstd"]),
        helper.make_node("MatMul", [wy, "grstd"], ["r_h"]),
        helper.make_node("MatMul", ["r_h", "wxt"], ["rinv"]),
        helper.make_node("Cast", ["X"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xf", "mu"], ["xc"]),
        helper.make_node("Mul", ["xc", "rinv"], ["xn"]),
        helper.make_node("Reshape", ["Beta", "chw"], ["beta4"]),
        helper.make_node("Add", ["xn", "beta4"], ["ya"]),
        # The fused activation as a lower bound: 0 for relu, -inf (a no-op) for none.
        helper.make_node("Equal", ["act_v", "relu_s"], ["is_relu"]),
        helper.make_node("Where", ["is_relu", "zero", "neg_inf"], ["lo"]),
        helper.make_node("Max", ["ya", "lo"], ["yf"]),
        helper.make_node("CastLike", ["yf", "X"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=["X", "Mean", "Std", "Gamma", "Beta"],
        outputs=["Y"],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["eps", "activation"],
        doc_string="Reference-geometry dense normalization; see dnrt.semantics.dense_normalize.",
    )


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model`` the DenseNorm function body and the opset imports it needs."""
    domains = {o.domain: o for o in model.opset_import}
    opset = domains[""].version if "" in domains else DEFAULT_OPSET
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        model.functions.append(function_proto(opset))
    if DOMAIN not in domains:
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model
