"""`python -m connectodistill ...` (used by `accelerate launch -m connectodistill train ...`)."""

from .cli import main

main()
