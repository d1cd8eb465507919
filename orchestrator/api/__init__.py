"""The orchestrator as a service: a REST API, a web console, metrics and health, on FastAPI and uvicorn.

- `server.py`: `orchestrator serve` (checks, listening, TLS, announcing, stopping);
- `app.py`: the ASGI app; `routes/`: one router per resource; `models.py`: the API's own documents;
- `context.py`: what a process holds (gateway, access policy, metrics, live feed, engines);
- `gateway.py`: the one orchestrator of the process, safe for request threads;
- `auth.py`: tokens, roles, console sessions; `problems.py`: RFC 9457 errors;
- `engine_host.py`: `--engine`, the engine in a thread; `metrics.py`: /metrics and the engine observer;
- `changes.py`: the live feed behind `/api/v1/events`; `console/`: the web console;
- `openapi.py`: the checked-in OpenAPI document (docs/openapi.json).

Heavy imports stay in these modules: importing the package itself is cheap.
"""
