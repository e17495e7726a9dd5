"""The deployment's static facts: link profiles and tier specs (the package's bottom layer)."""

from collabinfer.topology.links import PROFILES, LinkProfile, get_profile, wire_bytes
from collabinfer.topology.tiers import TierSpec, default_tiers, describe_tiers

__all__ = [
    "PROFILES",
    "LinkProfile",
    "TierSpec",
    "default_tiers",
    "describe_tiers",
    "get_profile",
    "wire_bytes",
]
