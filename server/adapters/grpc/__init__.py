"""The gRPC receipt and notification services, and the clients the HTTP workers use."""
