"""Event webhooks: the relay's 'webhooks' sink (sink.py) and the sender (sender.py)."""
