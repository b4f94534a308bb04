"""The Ray Serve shells: `roles` (one deployment per model role) and `ingress` (the HTTP app on each replica).

Nothing here decides product behaviour: the shells load models and expose their calls, and the
ingress assembles the ProductService and the HTTP app (`deployments.assemble`).
"""
