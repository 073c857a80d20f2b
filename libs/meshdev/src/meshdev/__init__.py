"""Test kit of the mesh: real PostgreSQL databases, free ports and production-command processes."""
