"""Route tables that the in-process pipeline tests (test_pipeline_inprocess.py) share with
the real-server tests of the same features (test_proxy_e2e.py, test_policies_*.py), so that
both drive the same routes and a change to one is a change to both.

Each is a ``str.format`` template (literal braces doubled) holding ``[[routes]]`` (and, for
AUTH_IDENTITIES, the consumers and JWT providers those routes name). A test module puts its
own ``[gateway]`` and ``[upstreams.*]`` tables (the routes here go to upstreams named "main"
and "other") before them and formats the whole text once; AUTH_IDENTITIES takes
``**AUTH_VALUES`` from tests/support/pipeline_cases.py.
"""

from __future__ import annotations

#: Longest literal prefix with and without strip_prefix, a host-specific route, a template
#: beside a literal with other methods, and preserve_host. Upstreams: "main" and "other".
MATCHING_ROUTES = """
[[routes]]
name = "api"
path = "/api"
upstream = "main"

[[routes]]
name = "api-users"
path = "/api/users"
upstream = "other"
strip_prefix = true

[[routes]]
name = "api-on-host"
path = "/api"
host = "api.example.com"
upstream = "other"
strip_prefix = true

[[routes]]
name = "item"
path = "/items/{{id}}"
methods = ["GET"]
upstream = "main"

[[routes]]
name = "item-literal"
path = "/items/special"
methods = ["GET", "DELETE"]
upstream = "other"

[[routes]]
name = "preserved"
path = "/keephost"
upstream = "main"
preserve_host = true
"""

#: Two consumers by API key hash (alice in group "admins"; bob's hash with its "sha256:"
#: prefix) and two JWT providers: "hs" (HS256 secret from the config, claims to headers)
#: and "files" (keys from jwks.json beside the config, which the test module writes).
AUTH_IDENTITIES = """
[consumers.alice]
api_key_sha256 = ["{alice}"]
groups = ["admins"]

[consumers.bob]
api_key_sha256 = ["sha256:{bob}"]

[jwt_providers.hs]
issuer = "{issuer}"
audiences = ["quartgate"]
leeway = 30
keys = [{{ kid = "h1", algorithm = "HS256", secret = "{secret}" }}]
claims_to_headers = {{ sub = "x-jwt-sub", email = "x-jwt-email" }}

[jwt_providers.files]
issuer = "{issuer}"
jwks_file = "jwks.json"
"""

#: An API key from a header or the query (hidden from the upstream), a key allowed for
#: "admins" only, an HS256 JWT and a JWKS-file JWT allowed for subject "svc-a" only.
#: Upstream: "main"; consumers and providers: AUTH_IDENTITIES.
AUTH_ROUTES = """
[[routes]]
name = "keyed"
path = "/keyed"
upstream = "main"
[routes.auth]
api_key = true
key_query = "apikey"
hide_credentials = true
[routes.headers]
request_set = {{ x-who = "{{consumer}}" }}

[[routes]]
name = "admin"
path = "/admin"
upstream = "main"
[routes.auth]
api_key = true
allow = ["admins"]

[[routes]]
name = "jwt"
path = "/jwt"
upstream = "main"
[routes.auth]
jwt = "hs"

[[routes]]
name = "jwks"
path = "/jwks"
upstream = "main"
[routes.auth]
jwt = "files"
allow = ["svc-a"]
"""

#: CORS with listed and wildcard-subdomain origins and credentials (/app), and any origin
#: (/open). Upstream: "main".
CORS_ROUTES = """
[[routes]]
name = "app"
path = "/app"
methods = ["GET", "POST"]
upstream = "main"
[routes.cors]
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type", "authorization"]
expose_headers = ["x-upstream"]
allow_credentials = true
max_age = 120

[[routes]]
name = "open"
path = "/open"
upstream = "main"
[routes.cors]
allow_origins = ["*"]
"""

#: Request and response header rules with placeholders (client IP, request id, a path
#: parameter, the route) and an escaped literal brace. Upstream: "main".
HEADER_RULES_ROUTE = """
[[routes]]
name = "rules"
path = "/rules/{{id}}"
upstream = "main"
[routes.headers]
request_set = {{ x-client = "{{client_ip}}", x-rid = "{{request_id}}", x-item = "item-{{id}}" }}
request_add = {{ x-added = "a {{{{literal}}}}" }}
request_remove = ["x-secret"]
response_set = {{ x-served-by = "quartgate {{route}}" }}
response_remove = ["x-upstream"]
response_add = {{ x-item = "{{id}}" }}
"""

#: Token buckets in the gateway's memory: 3 a minute per client (/mem), 1 a minute per
#: X-Tenant header value (/tenant). Upstream: "main".
MEMORY_RATE_LIMIT_ROUTES = """
[[routes]]
name = "mem"
path = "/mem"
upstream = "main"
[routes.rate_limit]
limit = 3
period = 60

[[routes]]
name = "tenant"
path = "/tenant"
upstream = "main"
[routes.rate_limit]
limit = 1
period = 60
key = "header:x-tenant"
"""
