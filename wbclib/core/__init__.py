"""Shared by every stage: the one config of a run, files written safely, the fault hook of the tests."""
