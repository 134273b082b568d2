"""The notification service: delivery of notifications by channel (kassa notifications)."""
