"""``python -m collabinfer.cli``: what the real-socket Table 1 row starts its tiers with."""

from collabinfer.cli import main

main()
