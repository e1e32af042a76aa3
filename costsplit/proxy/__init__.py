"""The recording proxy: any client in any language is recorded by changing its base URL.

``costsplit proxy`` forwards ``/compatible-mode/v1/...`` and ``/api/v1/...`` to a configured
route (``costsplit.proxy.routes``), records each call through the same core as the recording
client, and relays streams as they arrive. See ``server`` for serving and ``forward`` for one
call's life.
"""

from costsplit.proxy.routes import BUILTIN_ROUTES, RouteTable
from costsplit.proxy.server import RunningProxy, run_in_thread, serve

__all__ = ["BUILTIN_ROUTES", "RouteTable", "RunningProxy", "run_in_thread", "serve"]
