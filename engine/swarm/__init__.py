"""Swarm mode: the cluster of wharfd hosts (see docs)."""
