"""The HTTP face: the Starlette app and its raw ASGI hot routes, handlers, wire schemas, errors, API keys, OpenAPI."""
