"""Warden's Python SDK: ask Warden before an agent's action runs, and run it only on allow.

```python
from warden_client import Warden

async with Warden("http://127.0.0.1:8080", key) as warden:
    result = await warden.guard(action, execute=lambda permit: do_it(permit))
```

``Warden`` is the async client (``warden_client.sync.Warden`` the same for scripts);
``verify_permit`` checks a permit offline; every error is a ``WardenError``, and every one
that ``guard`` raises means the action did not run.
"""

from ._version import __version__
from .client import CLIENT_DEFAULT, DEFAULT_URL, GuardDecorator, Warden
from .errors import (
    ApiError,
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    Denied,
    WardenError,
    WardenUnavailable,
)
from .models import (
    Action,
    Approval,
    BudgetUsage,
    Confidence,
    Decision,
    DecisionApproval,
    Denial,
    Limit,
    Outcome,
    Permit,
    PermitAction,
    PermitKeys,
    PermitVerification,
    Proposal,
    ProposalPage,
    ProposalSummary,
    PublicKey,
    Reason,
    Target,
    Usage,
    Vote,
)
from .permits import PermitCheck, canonical_json, payload_sha256, permit_claims, verify_permit

__all__ = [
    "CLIENT_DEFAULT",
    "DEFAULT_URL",
    "Action",
    "ApiError",
    "Approval",
    "ApprovalExpired",
    "ApprovalRejected",
    "ApprovalTimeout",
    "BudgetUsage",
    "Confidence",
    "Decision",
    "DecisionApproval",
    "Denial",
    "Denied",
    "GuardDecorator",
    "Limit",
    "Outcome",
    "Permit",
    "PermitAction",
    "PermitCheck",
    "PermitKeys",
    "PermitVerification",
    "Proposal",
    "ProposalPage",
    "ProposalSummary",
    "PublicKey",
    "Reason",
    "Target",
    "Usage",
    "Vote",
    "Warden",
    "WardenError",
    "WardenUnavailable",
    "__version__",
    "canonical_json",
    "payload_sha256",
    "permit_claims",
    "verify_permit",
]
