"""Victim training: how a model trained on protected data fares on clean test data."""
