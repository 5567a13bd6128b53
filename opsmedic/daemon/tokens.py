"""Bearer-token lists from the environment: the API's `TOKEN:USER` pairs and Alertmanager's plain tokens.

Layer: interfaces (`opsmedic.daemon`); standard library only. Both the configuration (`config`, which parses
`OPSMEDIC_API_TOKENS` and `OPSMEDIC_ALERT_TOKENS`) and the HTTP edge (`edge`) read these rules, so they live
below both of them instead of in one that the other would then have to import back.
"""

from __future__ import annotations

MIN_TOKEN_CHARS = 16


def parse_api_tokens(raw: str) -> dict[str, str]:
    """`token:user,token2:user2` -> {token: user}. Tokens are bearer secrets: long, and unique."""
    out: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        token, sep, user = part.rpartition(":")
        token, user = token.strip(), user.strip()
        if not sep or not token or not user:
            raise ValueError(f"entry {i + 1} must be TOKEN:USER")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"entry {i + 1} ({user}): a token needs at least {MIN_TOKEN_CHARS} characters")
        if token in out:
            raise ValueError(f"entry {i + 1} ({user}): the same token is listed twice")
        out[token] = user
    return out


def parse_alert_tokens(raw: str) -> list[str]:
    """`tok1,tok2` -> [tok1, tok2]: plain bearer tokens (Alertmanager sends one), long and distinct."""
    out: list[str] = []
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        if len(part) < MIN_TOKEN_CHARS:
            raise ValueError(f"entry {i + 1}: a token needs at least {MIN_TOKEN_CHARS} characters")
        if part in out:
            raise ValueError(f"entry {i + 1}: the same token is listed twice")
        out.append(part)
    return out
