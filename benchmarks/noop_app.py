"""The no-op FastAPI app of the proxy-hop benchmark: one app, served by plain uvicorn and by Serve's ingress."""

from fastapi import FastAPI

app = FastAPI(title="noop")


@app.get("/noop")
async def noop() -> dict:
    return {"ok": True, "service": "noop"}


def serve_app(num_cpus: float = 0.5):
    """The same app under `@serve.ingress`; built on demand so that uvicorn never imports Ray."""
    from ray import serve

    @serve.deployment(name="NoopIngress", num_replicas=1, ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=64)
    @serve.ingress(app)
    class NoopIngress:
        pass

    return NoopIngress.bind()
