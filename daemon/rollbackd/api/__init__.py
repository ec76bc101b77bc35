"""The HTTP API (design §3): webhooks, deploys, state, approvals, health, metrics, status page.

- :mod:`.app`: the routes, over a running daemon's parts;
- :mod:`.auth`: bearer tokens, hashed, and the roles each route needs;
- :mod:`.errors`: the one table from domain errors to HTTP statuses, and the JSON error answer;
- :mod:`.limits`: the request-body limit.
"""

from __future__ import annotations

from rollbackd.api.app import create_app, render_status

__all__ = ["create_app", "render_status"]
