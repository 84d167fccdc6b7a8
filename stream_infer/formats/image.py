"""``image``: value one JPEG or PNG frame; headers ``seq`` and ``ts``; converted to the model's
channels and size, as float32 pixel values 0..255 (the model normalises)."""

from __future__ import annotations

import io

import numpy as np

from stream_infer.errors import DecodeError
from stream_infer.formats.base import (
    DecodeContext,
    Encoded,
    Format,
    Parsed,
    Record,
    describe,
    header_samples,
    seq_ts_headers,
    stack_concat,
)

# A frame is decoded whole before it is resized: a small file of huge dimensions would take
# hundreds of MB. 4096 x 4096 is far beyond any frame model's input.
MAX_IMAGE_PIXELS = 4096 * 4096


def parse(ctx: DecodeContext, rec: Record) -> Parsed:
    from PIL import Image, UnidentifiedImageError

    c, hgt, wid = ctx.sample_shape
    seq, ts = header_samples(rec)
    try:
        with Image.open(io.BytesIO(rec.value or b"")) as src:
            if src.format not in ("JPEG", "PNG"):
                raise DecodeError("bad_image", f"format {src.format} is not JPEG or PNG")
            if src.width * src.height > MAX_IMAGE_PIXELS:  # checked before any pixel is decoded
                raise DecodeError(
                    "bad_image",
                    f"{src.width}x{src.height} pixels > {MAX_IMAGE_PIXELS} (decompression bomb?)",
                )
            img = src.convert("L" if c == 1 else "RGB")
            if img.size != (wid, hgt):
                img = img.resize((wid, hgt), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.float32)
    except DecodeError:
        raise
    except UnidentifiedImageError:  # its message names a buffer's address: not stable
        raise DecodeError("bad_image", "not an image Pillow can identify") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError("bad_image", str(exc)) from None
    except Exception as exc:  # Pillow's decoders raise more (SyntaxError, EOFError, ...) on bad bytes
        raise DecodeError("bad_image", describe(exc)) from None
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    return [seq], [ts], a[None], None


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode(seq: int, chunk: np.ndarray, ts_ms: int) -> Encoded:
    return encode_jpeg(chunk[0]), seq_ts_headers(seq, ts_ms)


FORMAT = Format(
    "image",
    parse=parse,
    stack=stack_concat,
    encode=encode,
    samples_per_message=1,
    doc="one JPEG or PNG frame per message",
)
