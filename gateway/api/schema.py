"""The /schema page: Swagger UI, its JS and CSS served by the gateway itself from a pinned copy in
gateway/schema_page/, so the page works without internet and loads nothing from a CDN."""

import json
from pathlib import Path

from litestar import Response, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath

from gateway import __version__

SCHEMA_PATH = "/schema"
SWAGGER_UI_DIR = Path(__file__).resolve().parent.parent / "schema_page"
# The copied package's own record of its version; in the URL, so a cached asset never outlives an upgrade.
SWAGGER_UI_VERSION: str = json.loads((SWAGGER_UI_DIR / "package.json").read_bytes())["version"]
ASSETS_PATH = f"{SCHEMA_PATH}/assets/swagger-ui-{SWAGGER_UI_VERSION}"
# Media types without a charset: Litestar appends `; charset=utf-8` to every text/* type itself.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
}
ASSET_MAX_AGE_S = 31_536_000  # one year: the URL changes with the version


def openapi_config() -> OpenAPIConfig:
    """GET /schema renders Swagger UI (also at /schema/swagger); Litestar adds /schema/openapi.json."""
    swagger = SwaggerRenderPlugin(
        path=["/", "/swagger"],
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon='<link rel="icon" href="data:,">',  # an empty icon: Litestar's default is an image on a CDN
    )
    return OpenAPIConfig(
        title="Reservation gateway", version=__version__, path=SCHEMA_PATH, render_plugins=[swagger]
    )


@get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False)
async def schema_page_asset(name: FromPath[str]) -> Response[bytes]:
    if name not in ASSET_TYPES:
        return Response(b"", status_code=404)
    headers = {
        "Cache-Control": f"public, max-age={ASSET_MAX_AGE_S}, immutable",
        "X-Content-Type-Options": "nosniff",
    }
    return Response((SWAGGER_UI_DIR / name).read_bytes(), media_type=ASSET_TYPES[name], headers=headers)
