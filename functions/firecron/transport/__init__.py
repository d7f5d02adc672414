"""The one-way HTTP invocation: building, signing, guarding and sending POSTs.

- :mod:`~firecron.transport.sender`: :func:`build_dispatch` and the :class:`Sender`
  with firecron's ack semantics and the send-slot / open-slot split: the one
  outbound HTTP path, for dispatches and webhook notifications alike.
- :mod:`~firecron.transport.guard`: the SSRF guard (:func:`resolve_target`).
- :mod:`~firecron.transport.signing`: Standard Webhooks signatures.
- :mod:`~firecron.transport.idtoken`: Google ID tokens for ``auth: oidc`` targets.
- :mod:`~firecron.transport.cloud_tasks`: ``delivery: cloud_tasks``, one Cloud Tasks task
  per send instead of a POST (imported where used: its client is heavy).
"""

from firecron.transport.guard import ResolvedTarget, redact_url, resolve_target
from firecron.transport.idtoken import GoogleIdTokens, IdTokenProvider
from firecron.transport.sender import (
    Dispatch,
    Sender,
    SendResult,
    build_dispatch,
    dispatch_body,
    resolve_url,
)
from firecron.transport.signing import sign_webhook, signature_headers, verify_webhook

__all__ = [
    "Dispatch",
    "GoogleIdTokens",
    "IdTokenProvider",
    "ResolvedTarget",
    "SendResult",
    "Sender",
    "build_dispatch",
    "dispatch_body",
    "redact_url",
    "resolve_target",
    "resolve_url",
    "sign_webhook",
    "signature_headers",
    "verify_webhook",
]
