"""Input formats: bytes -> samples, one module per format, registered in one table.

Adding a format is one module that defines a ``Format`` (``formats.base``) and one line in
``FORMATS`` below: the config (``input.format``), the decoder (``pipeline.decode``) and the
stand-in producer (``replay``, when the format has an ``encode``) all look formats up here.
"""

from __future__ import annotations

from stream_infer.formats import f32, image, json, registry
from stream_infer.formats.base import Bulk, DecodeContext, Format, Parsed

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        json.FORMAT,
        f32.FORMAT,
        image.FORMAT,
        registry.FORMAT,
    )
}


def get_format(name: str) -> Format:
    """The registered format ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown input format {name!r}: choose {format_names()}") from None


def format_names() -> str:
    """The registered names, as ``'json', 'f32', 'image' or 'registry'``."""
    names = [repr(n) for n in FORMATS]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


__all__ = ["FORMATS", "Bulk", "DecodeContext", "Format", "Parsed", "format_names", "get_format"]
