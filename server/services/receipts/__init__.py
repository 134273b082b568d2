"""The receipt service: receipt code blocks and receipt records (kassa receipts)."""
