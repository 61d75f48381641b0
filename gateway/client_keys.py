"""Client keys: who may take and touch holds.

Booking frontends call the gateway from their backends with a client key (`Authorization: Bearer <key>`).
Once any key exists, every hold route needs one, and a hold belongs to the key that created it: another
key gets 404 for it. While none exists the gateway is open, as before keys, and says so.

A key is `gwk_` and 256 random bits; only its sha256 is stored (the bits make a slow hash pointless), and
the key is shown once, when it is created. Each worker keeps every key's digest in memory, so checking a
request costs a sha256 and a dict lookup, never a database statement. It reloads them at once after a create
or a delete of its own, when another worker's create or delete NOTIFYs it (gateway.listener), when its
listener reconnects (notifications sent meanwhile are lost), and every `client_keys_refresh_s` should one be
lost anyway. Until the first load a worker answers hold routes 503: it never mistakes "not loaded yet" for
"open".
"""

import asyncio
import hashlib
import logging
import secrets
from typing import Final

from gateway import background
from gateway.config import Settings
from gateway.errors import BackendUnavailable
from gateway.models import new_id
from gateway.store import ClientKeyRow, Store

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "gwk_"


def key_digest(key: str) -> bytes:
    """What is stored of a key, and what a presented key is looked up by."""
    return hashlib.sha256(key.encode()).digest()


class ClientKeys:
    """The client keys as one worker knows them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._ids_by_digest: dict[bytes, str] | None = None  # None until first loaded
        self._stale = False  # told of a change not yet reloaded
        self._reloading: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._ids_by_digest is not None

    @property
    def required(self) -> bool:
        """Whether hold routes need a client key (any key exists). Raises BackendUnavailable before the
        worker has ever loaded the keys: an unknown set of keys must not read as "open"."""
        if self._ids_by_digest is None:
            raise BackendUnavailable(self.settings.retry_after_s)
        return bool(self._ids_by_digest)

    def identify(self, presented: str) -> str | None:
        """The id of the client key presented, or None if it is no live key."""
        if self._ids_by_digest is None:
            raise BackendUnavailable(self.settings.retry_after_s)
        return self._ids_by_digest.get(key_digest(presented))

    async def refresh(self) -> None:
        """Reload the keys; say so when the gateway goes from open to closed or back."""
        was_open = None if self._ids_by_digest is None else not self._ids_by_digest
        self._ids_by_digest = await self.store.client_key_digests()
        now_open = not self._ids_by_digest
        if now_open and was_open is not True:
            log.warning(
                "no client key exists: the hold routes are open to anyone who can reach this port "
                "(create one with POST /v1/client-keys)"
            )
        elif not now_open and was_open is True:
            log.info("client keys exist: the hold routes need one")

    def changed(self, _payload: str = "") -> None:
        """A key was created or deleted elsewhere (CLIENT_KEYS_CHANNEL), or notifications may have been lost:
        reload soon, once for any number of changes told meanwhile."""
        self._stale = True
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(
                self._reload(), name="client-keys-reload"
            )

    async def _reload(self) -> None:
        while self._stale:
            self._stale = False
            try:
                await self.refresh()
            except BackendUnavailable as exc:
                log.warning("client keys not reloaded: database unavailable (%s)", exc.__cause__)
                return  # the periodic reload catches up
            except Exception:
                log.exception("client keys not reloaded")
                return

    async def close(self) -> None:
        if self._reloading is not None:
            await background.stop(self._reloading)

    async def keep_fresh(self) -> None:
        """Reload the keys every `client_keys_refresh_s` until cancelled; an outage only delays it."""
        while True:
            await asyncio.sleep(self.settings.client_keys_refresh_s)
            try:
                await self.refresh()
            except BackendUnavailable as exc:
                log.warning("client keys not reloaded: database unavailable (%s)", exc.__cause__)
            except Exception:  # anything else must not stop the reloads for the life of the worker
                log.exception("client keys not reloaded")

    async def create(self, name: str) -> tuple[ClientKeyRow, str]:
        """A new key: its row, and the key itself (shown this once)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = await self.store.insert_client_key(new_id(9), name, key_digest(key))
        await self.refresh()
        log.info("client key %s (%s) created", row.id, name, extra={"client_key_id": row.id})
        return row, key

    async def list(self) -> list[ClientKeyRow]:
        return await self.store.list_client_keys()

    async def delete(self, key_id: str) -> bool:
        """Revoke a key: refused at once by this worker, by the others once told (NOTIFY; at the latest within
        client_keys_refresh_s)."""
        deleted = await self.store.delete_client_key(key_id)
        await self.refresh()
        if deleted:
            log.info("client key %s deleted", key_id, extra={"client_key_id": key_id})
        return deleted
