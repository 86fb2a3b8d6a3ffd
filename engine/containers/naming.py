"""Container names: validation and generated names for containers created without one."""

from __future__ import annotations

import re
import secrets

from engine.errors import InvalidParameter

_VALID = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

# Our own word lists (Docker's generator pairs an adjective with a surname too).
_ADJECTIVES = (
    "agile", "amber", "ample", "brave", "bright", "calm", "candid", "clever", "cosmic",
    "crisp", "daring", "deft", "eager", "early", "fancy", "fluent", "gentle", "gifted",
    "glad", "golden", "happy", "hardy", "honest", "humble", "jolly", "keen", "kind",
    "lively", "lucid", "lucky", "merry", "mellow", "modest", "nimble", "noble", "patient",
    "placid", "polite", "proud", "quick", "quiet", "rapid", "ready", "robust", "serene",
    "sharp", "shiny", "silent", "sleepy", "smart", "snappy", "solid", "spry", "steady",
    "sturdy", "sunny", "swift", "tender", "tidy", "vivid", "warm", "wise", "witty", "zesty",
)
_SURNAMES = (
    "agnesi", "archimedes", "babbage", "bohr", "boole", "cantor", "carson", "curie",
    "darwin", "dijkstra", "euclid", "euler", "faraday", "fermat", "feynman", "franklin",
    "galileo", "gauss", "goodall", "hamilton", "hopper", "hypatia", "kepler", "knuth",
    "lamarr", "leakey", "liskov", "lovelace", "maxwell", "meitner", "mendel", "newton",
    "noether", "pascal", "pasteur", "planck", "ramanujan", "ritchie", "shannon", "tesla",
    "thompson", "turing", "volta", "wozniak", "wright", "yalow", "zuse",
)


def validate_name(name: str) -> str:
    """Return the name without its leading '/', or raise dockerd's 400."""
    if not _VALID.match(name):
        raise InvalidParameter(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return name.lstrip("/")


def generate_name(taken: set[str] | dict[str, str]) -> str:
    for attempt in range(100):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}"
        if attempt > 10:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(6)}"
