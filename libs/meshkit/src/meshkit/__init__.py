"""Service defaults shared by every deployable of the mesh."""
