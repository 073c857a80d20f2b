"""Fixtures for tests that start deployables with their production command."""
