"""cuda-python's runtime API (``cudart``) for the TensorRT backend: the import and error checking.

cuda-python returns ``(error, *values)`` from every call instead of raising; :func:`check`
turns a non-zero error into a :class:`DnrtError` naming it.
"""

from __future__ import annotations

from typing import Any

from dnrt.errors import DnrtError


def cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise DnrtError("the TensorRT backend needs cuda-python: pip install 'dnrt[gpu]'") from None
    return runtime


def check(result: tuple[Any, ...]) -> Any:
    """Raise on a CUDA error; return the call's value (or values, or ``None``)."""
    err, *values = result
    if int(err) != 0:
        _, name = cudart().cudaGetErrorName(err)
        raise DnrtError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
