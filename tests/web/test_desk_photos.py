"""Member photos at the desk (in process, real SQLite store, real Pillow): an upload is
re-encoded upright as a small JPEG with no metadata left (EXIF, GPS, comments), served only to a
staff session of the member's sites with ``no-store``, marked on the check-in feed, refused
clearly when it is not an image, too large or a pixel bomb, audited, and erased with the
member. Roles, no session, a member's session and CSRF on both routes: test_desk.py's
table-driven test over ``desk.RULES``."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image
from starlette.testclient import TestClient

from gated.billing_sync.front_desk import feed_items
from gated.billing_sync.photos import MAX_SIDE
from gated.billing_sync.service import Billing
from gated.web.desk_core import Desk
from gated.web.security import csrf_token
from tests.billing.helpers import Clock
from tests.web.test_desk import _session, app_web, billing  # noqa: F401 (the module's store)

GPS_IFD = 0x8825
ORIENTATION = 0x0112
PORTRAIT_W = round(MAX_SIDE * 800 / 1200)


def camera_jpeg(width: int = 1200, height: int = 800) -> bytes:
    """A phone-like JPEG: landscape pixels, EXIF saying 'rotate 90°', a GPS position, a comment."""
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, width // 2, height))  # left half blue
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown rotated 90° clockwise
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(GPS_IFD)[2] = (52.0, 31.0, 12.0)  # latitude
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=b"taken at home")
    return out.getvalue()


def _post(c: TestClient, member: str, data: bytes, csrf: str, kind: str = "image/jpeg") -> Any:
    return c.post(
        f"/desk/members/{member}/photo",
        content=data,
        headers={"content-type": kind, "x-csrf-token": csrf},
    )


def test_a_photo_is_reencoded_without_metadata_and_shown_only_to_staff(
    app: Any,
    billing: tuple[Billing, Clock],  # noqa: F811
) -> None:
    b, _ = billing
    original = camera_jpeg()
    assert b"PhoneMaker" in original and b"taken at home" in original
    with TestClient(app) as c:
        token = _session(b, "front_desk")
        c.cookies.set("gated-staff", token)
        csrf = csrf_token(Desk(app_web(app)).csrf_key, token)
        assert 'id="member-photo"' not in c.get("/desk/members/ann").text
        assert c.get("/desk/members/ann/photo").status_code == 404
        r = _post(c, "ann", original, csrf)
        assert r.status_code == 200, r.text
        # Turned upright by its orientation (portrait now), scaled to MAX_SIDE.
        assert (r.json()["width"], r.json()["height"]) == (PORTRAIT_W, MAX_SIDE)
        got = c.get("/desk/members/ann/photo")
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.headers["cache-control"] == "no-store"
        stored = got.content
        for leak in (b"Exif", b"PhoneMaker", b"taken at home"):
            assert leak not in stored, leak
        with Image.open(io.BytesIO(stored)) as shown:
            assert shown.format == "JPEG" and not shown.getexif() and "comment" not in shown.info
            assert shown.size == (PORTRAIT_W, MAX_SIDE)
            # The blue half (the image's left) is at the top once turned clockwise.
            top, bottom = (
                shown.getpixel((shown.width // 2, 5)),
                shown.getpixel((shown.width // 2, shown.height - 5)),
            )
            assert top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2], (top, bottom)
        page = c.get("/desk/members/ann").text
        assert 'id="member-photo"' in page and 'src="/desk/members/ann/photo"' in page
        assert "camera=(self)" in c.get("/desk/members/ann").headers["permissions-policy"]
        # Another site's member: neither stored nor served.
        assert _post(c, "upt", original, csrf).status_code == 404
        assert c.get("/desk/members/upt/photo").status_code == 404

        # Bad input: one clear line each, nothing stored.
        png = io.BytesIO()
        Image.new("RGB", (50, 40)).save(png, "PNG")
        assert _post(c, "upt", png.getvalue(), csrf).status_code == 404
        bomb = io.BytesIO()
        Image.new("1", (10_000, 5_000)).save(bomb, "PNG")  # 50 MP in a few KiB
        for data, kind, status, said in (
            (b"not an image at all", "image/jpeg", 400, "not a JPEG, PNG or WebP"),
            (original[: len(original) // 3], "image/jpeg", 400, "not a JPEG, PNG or WebP"),
            (b"GIF89a" + b"\0" * 100, "image/gif", 415, "JPEG, PNG or WebP"),
            (bomb.getvalue(), "image/png", 400, "too many pixels"),
            (b"\xff" * (5 * 1024 * 1024 + 1), "image/jpeg", 413, "too large"),
            (b"", "image/jpeg", 400, "no photo"),
        ):
            r = _post(c, "ann", data, csrf, kind)
            assert r.status_code == status and said in r.text, (kind, len(data), r.text)
        assert c.get("/desk/members/ann/photo").content == stored
        # A PNG replaces the photo.
        assert _post(c, "ann", png.getvalue(), csrf, "image/png").json()["width"] == 50

    # The feed marks the member who has a photo; the audit log has the action, not the image.
    items = feed_items(
        b.ctx,
        [
            {"event_id": "e1", "member_id": "ann", "kind": "entry"},
            {"event_id": "e2", "member_id": "upt", "kind": "entry"},
        ],
    )
    assert [i["photo"] for i in items] == [True, False]
    rows = [e for e in b.audit_entries(member_id="ann") if e["action"] == "member_photo"]
    assert len(rows) == 2 and rows[-1]["actor"] == "front_desk"
    assert rows[-1]["detail"]["width"] == PORTRAIT_W
    # Erased with the member.
    b.erase("ann")
    assert b.member_photo("ann") is None
