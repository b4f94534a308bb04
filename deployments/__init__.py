"""The service side of atelier, in rooms that follow its layers (each imports only the rooms below it):

- `models/`   the four model roles as plain Python classes (no Ray, no FastAPI, no storage)
- `kit/`      the offline model kit: random-weight stand-ins of the production checkpoints
- `config.py` the typed config of the Serve application (`python -m deployments.config FILE` checks one)
- `service/`  the product service: every product operation once, over a model gateway and storage
- `http/`     the HTTP edge: routers (`/api`, `/v1`, ingest), auth, the one error map, body limits
- `serving/`  the Ray Serve shells: one deployment per model, and the ingress that hosts the HTTP app
- `app.py`    the application builder serve configs point at; `assemble.py` the wiring it and the tests share
- `local.py`, `keys.py`  the quickstart and the key command
"""
