"""paystream's HTTP edge: webhooks, queries and the command facade on faust's web server.

Install it on a worker's app with ``install_web(app, WebContext(...))`` (or ``web_context(...)``,
which builds the webhook-verifying gateway clients from the settings).
"""

from paystream.web.context import AuditHook, WebContext, build_webhook_gateways, log_audit, web_context
from paystream.web.edge import install_web

__all__ = ["AuditHook", "WebContext", "build_webhook_gateways", "install_web", "log_audit", "web_context"]
