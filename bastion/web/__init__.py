"""The auditors' and approvers' web console (`bastion web`, or `[web] listen` in serve).

Server-rendered pages on starlette, served by uvicorn; the asciinema web player for
replays, served from this package (`static/vendor`, built from `web/` by npm), never
from a CDN. The console calls the service API only: it never touches the store or the
gateway's connections. See `app` for sign-in, cookies, CSRF and authorization.
"""
