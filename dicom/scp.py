"""The DICOM listener (SCP) wiring: one Application Entity, its policies and its handlers.

Handlers are passed in by the caller (the node), so this module stays free of the node's
services; the C-ECHO handler lives here because it needs nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

LOGGER = logging.getLogger(__name__)

Handler = tuple[Any, Callable[..., Any]] | tuple[Any, Callable[..., Any], list[Any]]


@dataclass(frozen=True)
class ScpPolicy:
    """Association policy of the listener.

    Parameters
    ----------
    ae_title
        Our AE title (the called AE title peers must use when ``require_called_ae``).
    allowed_calling_aes
        Calling AE titles that may associate; empty allows any.
    """

    ae_title: str
    allowed_calling_aes: Sequence[str] = ()
    require_called_ae: bool = True
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 262144
    storage_contexts: Sequence[tuple[str, Sequence[str]]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise ValueError(f"ae_title must have 1-16 characters, got {self.ae_title!r}")
        if self.max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, got {self.max_associations!r}")


def handle_echo(event: Any) -> int:
    """C-ECHO: always Success while the listener runs."""
    return 0x0000


def build_ae(policy: ScpPolicy) -> AE:
    """An :class:`pynetdicom.AE` configured by ``policy`` (Verification plus storage contexts)."""
    ae = AE(ae_title=policy.ae_title)
    ae.maximum_associations = policy.max_associations
    ae.acse_timeout = policy.acse_timeout
    ae.dimse_timeout = policy.dimse_timeout
    ae.network_timeout = policy.network_timeout
    ae.maximum_pdu_size = policy.max_pdu
    ae.require_called_aet = policy.require_called_ae
    ae.require_calling_aet = list(policy.allowed_calling_aes)
    ae.add_supported_context(Verification)
    for sop_class, syntaxes in policy.storage_contexts:
        ae.add_supported_context(sop_class, list(syntaxes))
    return ae


def storage_contexts() -> list[tuple[str, list[str]]]:
    """Presentation contexts for every accepted storage SOP class and transfer syntax."""
    from dicom.sop import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES

    syntaxes = [str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES]
    return [(str(sop_class), syntaxes) for sop_class in sorted(ACCEPTED_SOP_CLASSES)]


def start_scp(policy: ScpPolicy, host: str, port: int,
              handlers: Sequence[Handler] = ()) -> ThreadedAssociationServer:
    """Start listening in background threads; stop with ``server.shutdown()``."""
    ae = build_ae(policy)
    all_handlers = [(evt.EVT_C_ECHO, handle_echo), *handlers]
    server = ae.start_server((host, port), block=False, evt_handlers=all_handlers)
    LOGGER.info("DICOM listener %s on %s:%d", policy.ae_title, host, port)
    return server
