"""Thin HTTP handlers: decode, call one use case, encode."""
