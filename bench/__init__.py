"""Latency, throughput, memory and accuracy measurement (arrives with the `compress bench` issue)."""
