"""The HTTP routes, one `APIRouter` per resource (`create_app` includes them):

    models      /v1/models, /v1/models/{name}, the model's parity plots
    calculate   POST /v1/models/{name}/calculate
    jobs        /v1/jobs: relaxations and MD on the server (`aceserver.jobs`), frame streams, cancel
    learn       /v1/models/{name}/data: labelled data for a learning model (`aceserver.learning`), its status
    probes      /healthz, /livez, /readyz
    metrics     /metrics (Prometheus), /metrics.json (the web page's feed)
    web         the web page at /; the API reference (/openapi.json, /docs, /redoc)

The /v1 routers carry their prefix themselves (so the route templates that the metrics count by
are the full paths); the bearer-token dependency and the shared error responses are added where
they are included, because those depend on the server's settings (with a token it guards /v1,
`metrics.feed` and `web.reference`; the probes, /metrics and the page stay open).
"""
