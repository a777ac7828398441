"""Trainers for models that need their own training schedule."""
