"""GET /schema: Swagger UI whose JS and CSS the gateway serves itself, so the page works without internet.
Regression: the page loaded them (and a favicon) from public CDNs and was blank offline."""

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from playwright.async_api import Browser, Request

from tests.support import Gateway

# The /ops page test's Chromium: fx_browser and fx_chromium are fixtures, found by pytest under their names.
from tests.test_ops_page import WAIT_MS, fx_browser, fx_chromium, ops_page  # noqa: F401


class _Links(HTMLParser):
    """Every URL the page's markup would load: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value is not None]


def page_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_schema_page_references_only_the_gateway(gateway: Gateway, path: str) -> None:
    response = await gateway.client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    urls = page_urls(response.text)
    assets = [url for url in urls if not url.startswith("data:")]  # the favicon is an empty data: URI
    assert len(assets) == 3, urls  # Swagger UI's bundle, its standalone preset and its stylesheet
    for url in assets:
        # Same origin: a path of this gateway, neither a scheme nor a protocol-relative //host.
        assert urlsplit(url)[:2] == ("", ""), url
        assert url.startswith("/schema/assets/"), url


async def test_every_schema_asset_answers_with_its_type_and_a_long_cache(gateway: Gateway) -> None:
    html = (await gateway.client.get("/schema")).text
    assets = [url for url in page_urls(html) if not url.startswith("data:")]

    answers = {url: await gateway.client.get(url) for url in assets}

    kinds = {url.rsplit(".", 1)[1]: response.headers["content-type"] for url, response in answers.items()}
    assert kinds == {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
    for url, response in answers.items():
        assert response.status_code == 200, url
        assert len(response.content) > 10_000, url  # the real file, not an error page
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


async def test_unknown_schema_assets_are_404(gateway: Gateway) -> None:
    html = (await gateway.client.get("/schema")).text
    asset = next(url for url in page_urls(html) if url.endswith(".js"))
    folder = asset.rsplit("/", 1)[0]

    for url in (
        f"{folder}/index.html",
        f"{folder}/..",
        "/schema/assets/swagger-ui-0.0.0/swagger-ui.css",
        "/schema/assets/package.json",
    ):
        assert (await gateway.client.get(url)).status_code == 404, url


async def test_schema_page_renders_offline_from_the_gateway_alone(gateway: Gateway, browser: Browser) -> None:
    """Every request the page makes goes to the gateway, and Swagger UI draws the API from it."""
    requested: list[str] = []

    def on_request(request: Request) -> None:
        requested.append(request.url)

    async with ops_page(browser, "about:blank") as (page, _, problems):
        page.on("request", on_request)
        await page.goto(f"{gateway.url}/schema")
        await (
            page.locator(".swagger-ui .info .title")
            .filter(has_text="Reservation gateway")
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator(".opblock-summary-path", has_text="/v1/holds").first.wait_for(timeout=WAIT_MS)
        assert problems == []
    origin = urljoin(gateway.url, "/")
    assert requested, "the page made no request"
    assert [url for url in requested if not url.startswith((origin, "data:"))] == []
