"""The two gRPC programs Kassa ships beside the HTTP server: the receipt service and the notification service."""
