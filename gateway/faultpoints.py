"""Test-only fault points: named steps of the request path where a fault test makes the process stop or die
at an exact moment (a gateway killed between its Redis acquire and its Postgres commit, say).

Off unless GATEWAY_TEST_FAULT_POINTS is set, as `point=action[,point=action]`, read once at import. Actions:
`kill` (SIGKILL this process) and `sleep:<seconds>`. Points: after_redis_acquire, after_commit.

A call site guards the await with the constant, so that with the points off the request path pays one
attribute read and no coroutine:

    if faultpoints.ACTIVE:
        await faultpoints.reached("after_redis_acquire")

`reached()` on its own stays correct (it does nothing for a point with no action), only slower.
"""

import asyncio
import os
import signal
from typing import Final

ENV: Final = "GATEWAY_TEST_FAULT_POINTS"
POINTS: Final = frozenset({"after_redis_acquire", "after_commit"})


def _parse(spec: str) -> dict[str, str]:
    actions: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, action = part.partition("=")
        if point not in POINTS or not (action == "kill" or action.startswith("sleep:")):
            raise ValueError(f"{ENV}: cannot parse {part!r}; points: {', '.join(sorted(POINTS))}")
        actions[point] = action
    return actions


_actions: Final = _parse(os.environ.get(ENV, ""))
# True when any point has an action: read once at import, like the actions, so it never changes in a process.
ACTIVE: Final[bool] = bool(_actions)


async def reached(point: str) -> None:
    """Run the action configured for `point`, if any. Call sites check ACTIVE first (module docstring)."""
    action = _actions.get(point)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(float(action.removeprefix("sleep:")))
