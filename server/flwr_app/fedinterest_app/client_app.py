"""ClientApp component: :data:`client.app.app` (the device store from the node config)."""

from client.app import app

__all__ = ["app"]
