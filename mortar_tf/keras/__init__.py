"""Keras integration: the single Keras import (compat) and kernel discovery."""
