"""The web console at `/ui`: a page and a small script served by the HTTP ingress itself.

Decision: plain HTML, CSS and one script, committed as they are (no build step, nothing
fetched at run time), so a fresh clone serves it offline. The three files are public (a
shell that shows only the key prompt); everything they show comes from the API, with the key
the page asks once and keeps for the tab (sessionStorage), so nothing is shown without it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

FILES_DIR = Path(__file__).with_name("console_files")
# path -> (file, media type): the only files served, so no path ever reaches the filesystem.
CONSOLE_FILES = {
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/ui/console.css": ("console.css", "text/css; charset=utf-8"),
}
CONSOLE_PATHS = frozenset({"/ui", *CONSOLE_FILES})

router = APIRouter(include_in_schema=False)


@cache
def _content(name: str) -> bytes:
    return (FILES_DIR / name).read_bytes()


@router.get("/ui")
async def console_root() -> Response:
    # The page's relative URLs (console.js) resolve against /ui/.
    return RedirectResponse("/ui/", status_code=308)


def _file_route(path: str, name: str, media_type: str) -> None:
    async def serve_file() -> Response:
        return Response(
            _content(name), media_type=media_type, headers={"Cache-Control": "no-cache"}
        )

    router.add_api_route(path, serve_file, methods=["GET"], name=f"console {name}")


for _path, (_name, _media_type) in CONSOLE_FILES.items():
    _file_route(_path, _name, _media_type)
