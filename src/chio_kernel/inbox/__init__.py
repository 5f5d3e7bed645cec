"""The approvals inbox: a web page where a person signs in with an approver credential and answers
pending approvals, and views receipts, budgets and webhook deliveries (docs/inbox.md).

The sidecar mounts it at ``/ui``; ``chio-durable ui`` serves the same app on the kernel's store.
"""

from chio_kernel.inbox._app import CSP, InboxSettings, create_inbox_app
from chio_kernel.inbox._server import serve_inbox

__all__ = ["CSP", "InboxSettings", "create_inbox_app", "serve_inbox"]
