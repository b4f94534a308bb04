"""The HTTP edge: one FastAPI app per process (`app.create_app`) composed of routers over a ProductService.

`api` is the product API, `openai` the OpenAI-compatible surface, `ingest` the bulk-upload routes;
`auth` knows who is calling and signs image URLs; `app` holds the one error map, request ids, body
limits and per-route stats. Routers only parse, call the service and shape answers.
"""
