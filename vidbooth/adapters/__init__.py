"""Adapters: small trainable modules injected beside frozen layers, saved apart from the base model."""
