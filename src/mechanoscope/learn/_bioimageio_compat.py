"""A scoped work-around for bioimageio.spec <= 0.5.12 under pydantic >= 2.14.

bioimageio.spec's wrap serializers call ``handler(value, info)`` (``info`` being the
``SerializationInfo``). The pydantic-core of pydantic 2.14 (installed here: 2.14.4 with
bioimageio.spec 0.5.12.0) reads that second argument as an ``index_key`` and rejects it,
so *every* format-0.5 model description fails to validate with "'index_key' is expected
to be an integer or a string, got 'SerializationInfo(...)'", whatever its content.

:func:`spec_compat` swaps the bodies of the two affected functions for the same code
calling ``handler(value)`` (what pydantic documents) while it is active, and only when
a probe shows that this pydantic rejects ``handler(value, info)`` and the functions have
the expected shape; everything is restored on exit. Remove it once bioimageio.spec
calls ``handler(value)`` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["handler_takes_info", "spec_compat"]


def handler_takes_info() -> bool:
    """Whether this pydantic accepts ``handler(value, info)`` inside a wrap serializer."""
    from typing import Annotated

    from pydantic import (
        BaseModel,
        SerializationInfo,
        SerializerFunctionWrapHandler,
        WrapSerializer,
    )

    def ser(v: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return handler(v, info)

    class _Probe(BaseModel):
        a: Annotated[int, WrapSerializer(ser)] = 1

    try:
        _Probe().model_dump(mode="json")
    except Exception:  # pydantic_core.PydanticSerializationError wrapping the TypeError
        return False
    return True


# Replacement bodies. They run with the globals of the module they are put into
# (io_packaging, model.v0_4), so the names below resolve there.
def _package_file_descr_serializer(value, handler, info):  # pragma: no cover - body swapped in
    ret = handler(value)
    ret["source"] = _package(value.source, info, sha256=value.sha256)
    return ret


def _package_weights(value, handler, info):  # pragma: no cover - body swapped in
    ctxt = packaging_context_var.get()
    if ctxt is not None and ctxt.weights_priority_order is not None:
        for wf in ctxt.weights_priority_order:
            w = getattr(value, wf, None)
            if w is not None:
                break
        else:
            raise ValueError(
                "None of the weight formats in `weights_priority_order`"
                + f" ({ctxt.weights_priority_order}) is present in the given model."
            )
        assert isinstance(w, Node), type(w)
        new_w = w.model_construct(**{k: v for k, v in w if k != "parent"})
        value = value.model_construct(None, **{wf: new_w})
    return handler(value)


@contextlib.contextmanager
def spec_compat() -> Iterator[None]:
    """While active, bioimageio.spec's serializers call ``handler(value)`` (see module docstring)."""
    if handler_takes_info():
        yield
        return
    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec.model import v0_4

    swaps = []
    for fn, new in ((getattr(io_packaging, "package_file_descr_serializer", None), _package_file_descr_serializer),
                    (getattr(v0_4, "package_weights", None), _package_weights)):
        if fn is None or fn.__code__.co_argcount != 3 or fn.__code__.co_freevars:
            continue  # another version: leave it alone
        if not set(new.__code__.co_names) - {"getattr", "isinstance", "ValueError"} <= set(fn.__code__.co_names):
            continue
        swaps.append((fn, fn.__code__))
        fn.__code__ = new.__code__
    try:
        yield
    finally:
        for fn, code in swaps:
            fn.__code__ = code
