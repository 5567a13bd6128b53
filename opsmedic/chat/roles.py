"""Who may use the chat: viewers ask questions, operators may also request actions.

Layer: interfaces. Users are identified by the channel — a Slack user id, the user behind an HTTP token,
or `--as USER` / the login name in the terminal. Roles come from the environment, read by
`core.settings` (the daemon's deployment sets them; secrets and access lists stay out of files that are
shared):

- `OPSMEDIC_CHAT_OPERATORS`: comma-separated user ids who may request actions (they may ask, too);
- `OPSMEDIC_CHAT_VIEWERS`: comma-separated user ids who may ask questions. Unset: anyone identified may
  ask (reading the audit log is what `opsmedic audit show` already allows on this machine).

`*` in a list means everyone. Being an operator lets a user *request* an action; the governor still decides
it, approvals included, and a requester never counts as the approver of their own request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from core.settings import Settings

Role = Literal["none", "viewer", "operator"]
OPERATORS_VAR = "OPSMEDIC_CHAT_OPERATORS"
VIEWERS_VAR = "OPSMEDIC_CHAT_VIEWERS"


def _ids(raw: str | None) -> frozenset[str]:
    return frozenset(p.strip() for p in (raw or "").replace(";", ",").split(",") if p.strip())


@dataclass(frozen=True)
class Roles:
    operators: frozenset[str] = frozenset()
    viewers: frozenset[str] | None = None  # None: anyone identified may ask

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Roles:
        """From a mapping of variables (`OPERATORS_VAR`, `VIEWERS_VAR`); None: the process's settings."""
        if env is None:
            from core.settings import load_settings

            return cls.from_settings(load_settings())
        return cls._of(env.get(OPERATORS_VAR), env.get(VIEWERS_VAR))

    @classmethod
    def from_settings(cls, settings: Settings) -> Roles:
        return cls._of(settings.chat_operators, settings.chat_viewers)

    @classmethod
    def _of(cls, operators: str | None, viewers: str | None) -> Roles:
        return cls(operators=_ids(operators),
                   viewers=_ids(viewers) if viewers is not None and viewers.strip() else None)

    def role_of(self, user: str | None) -> Role:
        if not user:
            return "none"
        if user in self.operators or "*" in self.operators:
            return "operator"
        if self.viewers is None or user in self.viewers or "*" in self.viewers:
            return "viewer"
        return "none"

    def can_ask(self, user: str | None) -> bool:
        return self.role_of(user) != "none"

    def can_act(self, user: str | None) -> bool:
        return self.role_of(user) == "operator"
