"""Where the SQL migrations and Lua scripts are: in the package in a wheel, else at the repository top."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPOSITORY_DIRS = {
    "migrations": _PACKAGE_DIR.parent / "db" / "migrations",
    "lua": _PACKAGE_DIR.parent / "lua",
}


def resource_dir(name: str) -> Path:
    """The folder of one kind of resource: `migrations` or `lua`."""
    bundled = _PACKAGE_DIR / "_resources" / name
    if bundled.is_dir():
        return bundled
    return _REPOSITORY_DIRS[name]
