"""``[routes.auth]``: API keys and JWTs; 401 with ``WWW-Authenticate``, 403 when not allowed.

- API key: from a header (``key_header``, default ``x-api-key``) or a query parameter
  (``key_query``, off by default); its SHA-256 is looked up among ``[consumers.*]``.
- JWT: ``Authorization: Bearer <token>`` checked against one ``[jwt_providers.*]``: the
  algorithm is bound to the key (no ``alg`` confusion), signature, ``exp``/``nbf`` with the
  provider's leeway, ``iss`` and ``aud``. Claims go upstream as headers as configured.
- Either method succeeding authenticates; the consumer is ``ctx.consumer`` (the consumer's
  name, or the JWT's ``consumer_claim``) and is sent upstream as ``X-Consumer-Username``
  (Kong's header). Incoming copies of every header this policy sets are removed first.
- ``allow``: consumer names or groups allowed on the route; a valid credential of anyone
  else gets 403.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import jwt

from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.policies.header_rules import safe_value
from gateway.policies.shared import Consumer, JwtProvider, SharedSettings

CONSUMER_HEADER: Final = b"x-consumer-username"
REALM: Final = 'realm="quartgate"'


@dataclass(frozen=True, slots=True)
class AuthSettings:
    api_key: bool = False
    jwt: str = ""
    key_header: str = "x-api-key"
    key_query: str = ""
    allow: tuple[str, ...] = ()
    #: Remove the credential (header / query parameter / Authorization) before forwarding.
    hide_credentials: bool = False


class AuthPolicy:
    def __init__(self, settings: AuthSettings, shared: SharedSettings) -> None:
        self.by_hash: dict[str, Consumer] = {}
        if settings.api_key:
            for consumer in shared.consumers.values():
                for digest in consumer.key_hashes:
                    self.by_hash[digest] = consumer
        self.consumers = shared.consumers
        self.key_header = settings.key_header.encode("ascii") if settings.api_key else None
        self.key_query = settings.key_query if settings.api_key else ""
        self.provider: JwtProvider | None = shared.jwt_providers.get(settings.jwt)
        self.allow = frozenset(settings.allow)
        self.hide = settings.hide_credentials
        strip = {CONSUMER_HEADER}
        if self.provider is not None:
            strip |= {h.encode("ascii") for _, h in self.provider.claims_to_headers}
            self.decoder = jwt.PyJWT()
            self.by_kid = {k.kid: k for k in self.provider.keys if k.kid}
        #: Headers removed from every request on the route: clients cannot forge them.
        self.strip = frozenset(strip)
        challenges = []
        if self.provider is not None:
            challenges.append(f"Bearer {REALM}")
        if settings.api_key:
            challenges.append(f"Key {REALM}")
        self.challenges = tuple(c.encode("ascii") for c in challenges)

    async def on_request(self, ctx: RequestContext) -> None:
        scope = ctx.scope
        api_key: bytes | None = None
        bearer: bytes | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name in self.strip:
                continue
            if name == self.key_header:
                api_key = value.strip()
                if self.hide:
                    continue
            elif name == b"authorization" and self.provider is not None:
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    bearer = token.strip()
                    if self.hide:
                        continue
            kept.append((name, value))
        if api_key is None and self.key_query and scope["query_string"]:
            api_key = self._key_from_query(ctx)
        added: list[tuple[bytes, bytes]] = []
        consumer: str | None = None
        groups: frozenset[str] = frozenset()
        error = ""
        if api_key:
            found = self.by_hash.get(hashlib.sha256(api_key).hexdigest())
            if found is not None:
                consumer, groups = found.name, found.groups
            else:
                error = "invalid API key"
        if consumer is None and bearer and self.provider is not None:
            claims, reason = self._verify(bearer)
            if claims is None:
                error = reason
            else:
                subject = claims.get(self.provider.consumer_claim)
                consumer = str(subject) if subject is not None else ""
                known = self.consumers.get(consumer)
                groups = known.groups if known is not None else frozenset()
                for claim, header in self.provider.claims_to_headers:
                    if claim in claims:
                        added.append((header.encode("ascii"), _claim_value(claims[claim])))
        if consumer is None:
            raise self._unauthorized(error or "credentials required", bool(bearer))
        if self.allow and consumer not in self.allow and not (groups & self.allow):
            raise GatewayError(403, "forbidden", f"consumer {consumer!r} may not use this route")
        ctx.consumer = consumer
        kept.append((CONSUMER_HEADER, safe_value(consumer.encode("utf-8"))))
        kept += added
        scope["headers"] = kept

    def _key_from_query(self, ctx: RequestContext) -> bytes | None:
        query = ctx.scope["query_string"].decode("latin-1")
        pairs = parse_qsl(query, keep_blank_values=True)
        found = None
        for name, value in pairs:
            if name == self.key_query:
                found = value.encode("latin-1")
        if found is not None and self.hide:
            rest = [(n, v) for n, v in pairs if n != self.key_query]
            ctx.scope["query_string"] = urlencode(rest).encode("ascii")
        return found

    def _verify(self, token: bytes) -> tuple[dict[str, Any] | None, str]:
        provider = self.provider
        assert provider is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return None, "malformed token"
        algorithm = header.get("alg")
        kid = header.get("kid")
        if kid is not None and kid in self.by_kid:
            candidates = [self.by_kid[kid]]
        else:
            candidates = [k for k in provider.keys if k.algorithm == algorithm]
        candidates = [k for k in candidates if k.algorithm == algorithm]
        if not candidates:
            return None, "no key for this token's kid/alg"
        reason = "invalid token"
        for key in candidates:
            try:
                claims = self.decoder.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=list(provider.audiences) or None,
                    issuer=provider.issuer,
                    leeway=provider.leeway,
                    options={
                        "require": list(provider.required_claims),
                        "verify_aud": bool(provider.audiences),
                    },
                )
            except jwt.ExpiredSignatureError:
                return None, "token expired"
            except jwt.ImmatureSignatureError:
                return None, "token not yet valid"
            except jwt.InvalidAudienceError:
                return None, "wrong audience"
            except jwt.InvalidIssuerError:
                return None, "wrong issuer"
            except jwt.MissingRequiredClaimError as error:
                return None, str(error)
            except jwt.InvalidTokenError:
                continue  # bad signature with this key: try the next one
            return claims, ""
        return None, reason

    def _unauthorized(self, detail: str, bearer: bool) -> GatewayError:
        headers = []
        for challenge in self.challenges:
            if bearer and challenge.startswith(b"Bearer"):
                challenge += b', error="invalid_token"'
            headers.append((b"www-authenticate", challenge))
        return GatewayError(401, "unauthorized", detail, headers)

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        return None


def _claim_value(value: Any) -> bytes:
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return safe_value(text.encode("utf-8"))[:1024]
