"""The classic builder: Dockerfile parsing, word expansion and the build steps."""
