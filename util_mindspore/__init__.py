"""Helpers for RETFound on MindSpore, one concern per module (as upstream's util/)."""
