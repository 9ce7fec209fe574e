"""Benchmarking: protocol, host facts, local/ssh/emulated runners and latency prediction."""
