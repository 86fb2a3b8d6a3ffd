"""Swarm mode: the cluster of wharfd hosts (architecture §9)."""
