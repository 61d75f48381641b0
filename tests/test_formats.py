"""One owner per format: the id grammar, the hold statuses and the slot states are defined once (models.py);
the routes, the CLI and the /ops page's script use that definition, and keep no copy of their own."""

import argparse
import ast
import json
import re
from pathlib import Path

from gateway import ops_args
from gateway.holds import new_hold_id
from gateway.models import is_identifier, new_id
from tests.support import Gateway

GATEWAY_DIR = Path(__file__).resolve().parent.parent / "gateway"
PAGE_DIR = GATEWAY_DIR / "ops_page"
HOLD_STATUSES = ["held", "confirmed", "cancelled", "expired"]
SLOT_STATES = ["free", "held", "confirmed", "blocked"]
FORMATS_BLOCK = re.compile(r'<script type="application/json" id="gateway-formats">(.*?)</script>', re.DOTALL)


async def served_formats(gateway: Gateway) -> dict[str, object]:
    page = await gateway.client.get("/ops")
    assert page.status_code == 200, page.text
    blocks = FORMATS_BLOCK.findall(page.text)
    assert len(blocks) == 1, page.text
    formats: dict[str, object] = json.loads(blocks[0])
    return formats


async def test_the_ops_page_is_served_the_formats_as_a_json_block(gateway: Gateway) -> None:
    assert await served_formats(gateway) == {
        "identifier_pattern": "^[A-Za-z0-9._:~-]{1,128}$",
        "identifier_description": "1 to 128 characters from [A-Za-z0-9._:~-]",
        "hold_statuses": HOLD_STATUSES,
        "live_hold_status": "held",
        "slot_states": SLOT_STATES,
        "no_inventory_problem": "/problems/inventory-not-found",
        "rejection_counters": {
            "taken": "rejected_taken",
            "sold_out": "rejected_sold_out",
            "holder_limit": "rejected_holder_limit",
            "blocked": "rejected_blocked",
        },
    }


def status_words_in_script(script: str) -> list[str]:
    """Status or state names the script spells as data: a string literal or an object key. An element id
    (`$("confirmed")`, the Confirmed card) is markup's name, not a status. "expired" is left out: the page
    uses it as the countdown's word for a TTL run out (a label and a class), never as a status to ask for."""
    names = "|".join({*HOLD_STATUSES, *SLOT_STATES} - {"expired"})
    literals = re.findall(rf"(?<!\$\()([\"'`])({names})\1", script)
    keys = re.findall(rf"\b({names})\s*:", script)
    return [word for _, word in literals] + keys


def test_the_pages_script_reads_the_formats_and_keeps_no_copy() -> None:
    script = (PAGE_DIR / "ops.js").read_text()

    assert 'JSON.parse($("gateway-formats").textContent)' in script
    assert "A-Za-z0-9" not in script
    assert "128" not in script
    assert status_words_in_script(script) == []


def test_the_status_word_check_finds_the_old_copies() -> None:
    """The check above can fail: it finds the copies the script had before."""
    old = 'query({ status: "held", event_id: event });\nconst counts = { free: 0, held: 0, confirmed: 0 };'
    assert status_words_in_script(old) == ["held", "free", "held", "confirmed"]
    assert status_words_in_script('$("confirmed").textContent = 1;') == []


def test_the_pages_legend_is_built_from_the_served_slot_states() -> None:
    """The legend has no state of its own: a state the gateway adds shows up without a page change."""
    page = (PAGE_DIR / "ops.html").read_text()
    script = (PAGE_DIR / "ops.js").read_text()

    assert re.findall(r'id="count-([a-z]+)"', page) == []
    assert "for (const state of FORMATS.slot_states)" in script
    assert "count.id = `count-${state}`" in script


def test_the_pages_id_pattern_agrees_with_the_gateways() -> None:
    """JavaScript's `^…$` (no m flag) reads like Python's `\\A…\\Z`, which Python's `re` can check."""
    pattern = re.compile(r"\A[A-Za-z0-9._:~-]{1,128}\Z")
    samples = ["show-1", "a.b:c~d_e-f", "x" * 128, "x" * 129, "", "show 1", "šhow", "A/1", "a\x00"]
    assert [bool(pattern.match(s)) for s in samples] == [is_identifier(s) for s in samples]
    assert [is_identifier(s) for s in samples] == [True, True, True, False, False, False, False, False, False]
    assert not is_identifier("show-1\n")  # where Python's `$` would have let it through


def test_the_cli_offers_the_gateways_statuses() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    ops_args.add_commands(commands)
    holds = commands.choices["holds"]
    status = next(action for action in holds._actions if action.dest == "status")

    assert list(status.choices or []) == [*HOLD_STATUSES, "all"]


def test_no_module_but_models_lists_the_statuses_or_spells_the_id_grammar() -> None:
    names = {*HOLD_STATUSES, *SLOT_STATES}
    found = []
    for path in GATEWAY_DIR.rglob("*.py"):
        if path.name == "models.py":
            continue
        source = path.read_text()
        if "A-Za-z0-9._:~-" in source:
            found.append(f"{path.name}: the id grammar")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                words = [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
                if len(words) >= 2 and set(words) <= names:
                    found.append(f"{path.name}:{node.lineno}: {words}")
    assert found == []


def test_made_ids_never_start_with_a_dash() -> None:
    """An id the gateway makes is a command-line argument too (`gateway webhooks --redeliver ID`), and one
    starting with '-' reads as an option there. Of 5,000 plain draws about 78 would."""
    made = [new_id(9) for _ in range(5_000)]
    assert not [made_id for made_id in made if made_id.startswith("-")]
    assert {len(made_id) for made_id in made} == {12}
    assert len(new_hold_id()) == 22
