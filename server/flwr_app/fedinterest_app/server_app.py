"""ServerApp component: :data:`server.app.app` (run config keys: see ``pyproject.toml``)."""

from server.app import app

__all__ = ["app"]
