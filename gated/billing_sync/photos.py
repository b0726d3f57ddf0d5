"""Member photos for the front desk. Whatever a browser sends (a camera frame or an uploaded
file) is decoded by Pillow within a pixel budget, turned upright by its EXIF orientation, and
re-encoded as a JPEG of at most ``MAX_SIDE`` pixels a side with no metadata at all (no EXIF, no
GPS, no comments); only that JPEG is stored. Photos stay at head office: they are served only to
staff sessions (``gated.web.desk_photos``), never published to gates, and deleted on erasure."""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import Connection, delete, insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.http_limits import PHOTO_BYTES

log = logging.getLogger("gated.billing.photos")

MAX_SIDE = 640
# A decoded image above this many pixels is refused before it is decoded (a small file can
# declare a huge canvas); 40 MP is more than any phone or webcam takes.
MAX_PIXELS = 40_000_000
FORMATS = ("JPEG", "PNG", "WEBP")
QUALITY = 85


class PhotoRefused(BillingError):
    """A photo that is not one: too large, not an image, or a format not taken."""


def reencode(data: bytes) -> tuple[bytes, int, int]:
    """``data`` as a metadata-free JPEG at most ``MAX_SIDE`` a side: (jpeg, width, height)."""
    if len(data) > PHOTO_BYTES:
        raise PhotoRefused(f"a photo is at most {PHOTO_BYTES >> 20} MiB")
    if not data:
        raise PhotoRefused("no photo was sent")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise PhotoRefused("that image has too many pixels")
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = upright.convert("RGB")
    except PhotoRefused:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        ValueError,
        SyntaxError,  # Pillow's parsers raise it for some malformed headers
    ) as exc:
        raise PhotoRefused("that is not a JPEG, PNG or WebP image") from exc
    rgb.thumbnail((MAX_SIDE, MAX_SIDE))
    # Only the pixels go into a new image: a converted copy keeps the original's ``info``
    # (comment, ICC profile), which the JPEG encoder would write out again.
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb)
    out = io.BytesIO()
    clean.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue(), clean.width, clean.height


def set_photo(ctx: Context, member_id: str, data: bytes, taken_by: str) -> tuple[int, int]:
    """Store a member's photo (re-encoded), replacing any; returns its width and height."""
    jpeg, width, height = reencode(data)
    p = s.member_photos
    with ctx.engine.begin() as conn:
        member = conn.execute(select(s.members.c.erased).where(s.members.c.id == member_id)).first()
        if member is None or member.erased:
            raise NotFound(f"no member {member_id!r}")
        values = {
            "jpeg": jpeg,
            "width": width,
            "height": height,
            "taken_at": ctx.clock(),
            "taken_by": taken_by[:64],
        }
        done = conn.execute(update(p).where(p.c.member_id == member_id).values(**values)).rowcount
        if done == 0:
            conn.execute(insert(p).values(member_id=member_id, **values))
    log.info("event=member_photo_set member=%s bytes=%d", member_id, len(jpeg))
    return width, height


def photo(ctx: Context, member_id: str) -> bytes | None:
    """A member's stored JPEG, or None."""
    p = s.member_photos
    with ctx.reader.connect() as conn:
        found = conn.execute(select(p.c.jpeg).where(p.c.member_id == member_id)).scalar()
    return bytes(found) if found is not None else None


def delete_photo(conn: Connection, member_id: str) -> None:
    """Erasure (inside the erasing transaction): the photo goes."""
    conn.execute(delete(s.member_photos).where(s.member_photos.c.member_id == member_id))
