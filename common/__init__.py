"""Primitives every package may import (atomic files, storage errors, image references, environment
variable names, progress, names shared by the run folder's writers and readers). This package
imports nothing of ours: it is the bottom layer."""
